"""Renters: their names, keys and credit; what a renter's account shows (balance, history, leases)
and its settings. Module functions run on the store directly (the CLI); Accounts, through the store
thread (the running broker)."""
import re
import secrets

from shellrent.keys import material

from . import ledger
from .errors import BrokerError

NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


def check_name(kind: str, name: str) -> str:
    """Renter and host names: lowercase letters, digits, - and _, up to 32."""
    if not NAME_RE.fullmatch(name):
        raise BrokerError(f"bad {kind} name {name!r}: use lowercase letters, digits, - and _ (max 32)")
    return name


def one_key(key_text: str):
    """The one public key in an authorized_keys line; BrokerError when it is not one."""
    try:
        return material.parse_authorized_keys(key_text)[0]
    except material.KeyError_ as exc:
        raise BrokerError(f"public key: {exc}") from None


def add_renter(store, name: str, key_text: str) -> str:
    """Register a renter with one public key; returns the key's fingerprint."""
    check_name("renter", name)
    key = one_key(key_text)
    fpr = material.fingerprint(key)
    store.add_renter(name, fpr, material.public_line(key))
    return fpr


def credit(store, renter: str, amount: int) -> int:
    """Operator adds credit to a renter (takes it back, when negative); returns the new balance."""
    store.require_renter(renter)
    entries = ledger.deposit(renter, amount) if amount > 0 else [(ledger.renter(renter), amount), (ledger.WORLD, -amount)]
    store.post(ledger.deposit_key(secrets.token_hex(8)), "deposit" if amount > 0 else "debit", entries, renter=renter)
    return store.balance(ledger.renter(renter))


class Accounts:
    """A renter's account as the ctl commands and the banner read and change it."""

    def __init__(self, db, store):
        self._db, self._store = db, store

    async def renter_for_key(self, key) -> str | None:
        return await self._db(self._store.renter_by_key, material.fingerprint(key))

    async def balance(self, renter: str) -> dict:
        bal = await self._db(self._store.balance, ledger.renter(renter))
        held = await self._db(self._store.balance, ledger.hold_account(renter))
        return {"renter": renter, "balance": bal, "held": held}

    async def history(self, renter: str) -> list[dict]:
        return await self._db(self._store.journal, renter)

    async def leases(self, renter: str) -> list[dict]:
        return await self._db(self._store.leases, renter)

    async def lease(self, lease_id: str) -> dict:
        return await self._db(self._store.lease, lease_id)

    async def settings(self, renter: str) -> dict:
        return await self._db(self._store.renter_config, renter)

    async def set_tmux(self, renter: str, on: bool) -> None:
        await self._db(self._store.set_renter_tmux, renter, on)

    async def keys(self, renter: str) -> list[dict]:
        return await self._db(self._store.renter_keys, renter)

    async def add_key(self, renter: str, key) -> None:
        await self._db(self._store.add_key, renter, material.fingerprint(key), material.public_line(key))

    async def remove_key(self, renter: str, fingerprint: str):
        return await self._db(self._store.remove_key, renter, fingerprint)

    async def sign_up(self, name: str, key, code_hash: str | None = None) -> None:
        """A renter made by its own signup, with a signup code when one is needed."""
        check_name("renter", name)
        fpr, line = material.fingerprint(key), material.public_line(key)
        if code_hash:
            await self._db(self._store.signup_with_code, code_hash, name, fpr, line)
        else:
            await self._db(self._store.add_renter, name, fpr, line)

    async def redeem(self, renter: str, code_hash: str, now: float) -> tuple[int, int]:
        """A voucher's credit, added once: (amount, new balance)."""
        amount = await self._db(self._store.redeem_voucher, code_hash, renter, now)
        return amount, await self._db(self._store.balance, ledger.renter(renter))

    async def add_credit(self, renter: str, amount: int) -> int:
        return await self._db(credit, self._store, renter, amount)
