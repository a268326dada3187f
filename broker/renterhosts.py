"""Renters' own hosts (BROKER_RENTER_HOSTS=on): a renter invites a GPU machine of its own, sees its
hosts (online, GPUs, leases running, earnings) and moves their earnings to its own credit."""
import time

from shellrent.keys import material, tokens

from . import ledger
from .accounts import check_name
from .errors import BrokerError

MOST = 20  # hosts one renter may have


class RenterHosts:
    def __init__(self, config, db, store, links, earnings=None):
        self._config, self._db, self._store, self._links = config, db, store, links
        self._earnings = earnings  # async (host): tell a connected host its earnings now (hosts.send_earnings)
        self._fingerprint: str | None = None

    def _allowed(self) -> None:
        if self._config.renter_hosts != "on":
            raise BrokerError("this broker does not take renters' hosts (its operator can allow them: "
                              "BROKER_RENTER_HOSTS=on)")

    async def invite(self, renter: str, host: str) -> str:
        """A single-use join token for a host of the renter's own (valid 24 h; only its hash is kept)."""
        self._allowed()
        check_name("host", host)
        if self._fingerprint is None:
            self._fingerprint = material.fingerprint(material.load_or_create(self._config.client_key_path))
        secret = tokens.new_secret()
        await self._db(self._store.invite_own_host, host, tokens.hash_secret(secret),
                       time.time() + self._config.token_ttl, renter, MOST)
        return tokens.make(secret, self._fingerprint)

    async def hosts(self, renter: str) -> list[dict]:
        self._allowed()
        return await self._db(self._rows, renter, set(self._links().links) if self._links() else set())

    def _rows(self, renter: str, here: set[str]) -> list[dict]:
        store, out = self._store, []
        online = here | store.online_hosts()
        for h in store.owned_hosts(renter):
            inv = h.get("inventory") or {}
            earned = store.balance(ledger.provider(h["name"]))
            out.append({"host": h["name"], "joined": bool(h["joined"]), "online": h["name"] in online,
                        "banned": bool(h["banned"]), "gpus": len(inv.get("shared") or []),
                        "leases": len(store.leases_on(h["name"])), "earned_micro": earned,
                        "refused": h.get("inventory_error")})
        return out

    async def pay_out(self, renter: str, host: str) -> tuple[int, int]:
        """A host's earnings moved to its renter's credit: (amount, new balance)."""
        self._allowed()
        amount = await self._db(self._store.pay_out, host, renter)
        if self._earnings:
            await self._earnings(host)  # `hostd status` shows what is left: nothing
        return amount, await self._db(self._store.balance, ledger.renter(renter))
