"""`ssh signup@broker NAME [CODE]`: a person makes their own renter account with the key they log in
with, as the operator's policy allows (BROKER_SIGNUP: closed, code or open), a few per address and hour."""
import logging
import shlex
import time
from collections import defaultdict, deque

from shellrent.keys import material

from . import codes
from .config import Where
from .errors import BrokerError, KeyTaken

audit = logging.getLogger("shellrent.audit")
POLICIES = ("closed", "code", "open")
SIGNUP_PREFIX = "SU"


def check_policy(policy: str) -> str:
    if policy not in POLICIES:
        raise BrokerError(f"BROKER_SIGNUP={policy!r}: expected closed, code or open")
    return policy


def closed_message(contact: str) -> str:
    return (f"this broker does not take signups: ask {contact or 'its operator'} for an account "
            f"(send your public key, e.g. ~/.ssh/id_ed25519.pub)")


class SignupLimiter:
    """Signups per source address in the last hour."""

    def __init__(self):
        self._seen: dict[str, deque] = defaultdict(deque)

    def allowed(self, ip: str, per_hour: int, now: float) -> bool:
        seen = self._seen[ip]
        while seen and seen[0] < now - 3600:
            seen.popleft()
        if len(self._seen) > 10000:  # bounded memory under a scan
            self._seen.pop(next(iter(self._seen)))
        return len(seen) < per_hour

    def count(self, ip: str, now: float) -> None:
        self._seen[ip].append(now)


class Signup:
    """One signup login: its `run` is what a ctl session runs (exit status, text)."""

    def __init__(self, broker, key, known: str | None, ip: str, where: Where, limiter: SignupLimiter,
                 on_fail=lambda: None):
        self.b, self.key, self.known, self.ip, self.where = broker, key, known, ip, where
        self.limiter, self.on_fail = limiter, on_fail

    async def run(self, line: str, stdin: bytes = b"", ask=None, progress=None) -> tuple[int, str]:
        try:
            return 0, await self._run(line)
        except BrokerError as exc:
            return 2, f"signup: {exc}\n"

    async def _run(self, line: str) -> str:
        cfg = self.b.config
        policy = check_policy(cfg.signup)
        usage = f"usage: {self.where.ssh('signup')} NAME" + (" CODE" if policy == "code" else "")
        if self.known:
            raise BrokerError(f"this key already belongs to renter {self.known}: {self.where.ssh('ctl')} help")
        if policy == "closed":  # refused at the login already (sshserver): a second line of defence
            raise BrokerError(closed_message(cfg.contact))
        try:
            words = shlex.split(line)
        except ValueError:
            words = []
        if words in ([], ["help"], ["-h"], ["--help"]):
            raise BrokerError(usage)
        if len(words) != (2 if policy == "code" else 1):
            raise BrokerError(f"{'a signup code is needed' if policy == 'code' and len(words) == 1 else 'bad arguments'}"
                              f"; {usage}")
        name, now = words[0], time.time()
        if not self.limiter.allowed(self.ip, cfg.signups_per_hour, now):
            raise BrokerError("too many signups from your address; try again in an hour")
        self.limiter.count(self.ip, now)  # before the store is asked: attempts at once count each
        fpr = material.fingerprint(self.key)
        try:
            await self.b.accounts.sign_up(name, self.key, codes.digest(SIGNUP_PREFIX, words[1])
                                          if policy == "code" else None)
        except KeyTaken:
            audit.info("signup-fail name=%r ip=%s key=%s why=key taken", name[:40], self.ip, fpr)
            raise BrokerError("this key cannot be used for a new account") from None
        except BrokerError as exc:
            audit.info("signup-fail name=%r ip=%s key=%s why=%s", name[:40], self.ip, fpr, exc)
            self.on_fail()
            raise
        audit.info("signup renter=%s ip=%s key=%s policy=%s", name, self.ip, fpr, policy)
        return (f"welcome, {name}: your account is ready and has no credit yet.\n"
                f"  add credit:  {self.where.ssh('ctl')} redeem VOUCHER\n"
                f"  see offers:  {self.where.ssh('ctl')} offers\n"
                f"  rent a GPU:  {self.where.ssh('rent')}\n")
