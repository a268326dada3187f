"""The renter-facing SSH server: an asyncssh adapter over the broker's use cases (broker.service).

Public-key auth only. Logins: rent (the renter's only active lease), rent+LEASE, ctl, and signup
(any key the broker does not know yet, to make an account: broker.signup).
"""
import logging
import time
from collections import defaultdict, deque

import asyncssh

from shellrent.common import protocol
from shellrent.keys import material

from . import banner, logins, metrics, service
from .commands import Commands
from .config import Where
from .errors import BrokerError
from .picker import CtlSession, pick_and_rent
from .relay import RenterSession, open_tcp
from .signup import Signup, SignupLimiter, closed_message
from .startups import Startups

log = logging.getLogger("shellrent.ssh")
audit = logging.getLogger("shellrent.audit")


class AuthLimiter:
    """Counts failed logins per source address and blocks an address that fails too often."""

    def __init__(self, limit: int, window: float, block_for: float):
        self.limit, self.window, self.block_for = limit, window, block_for
        self._fails: dict[str, deque] = defaultdict(deque)
        self._blocked: dict[str, float] = {}

    def blocked(self, ip: str, now: float) -> bool:
        until = self._blocked.get(ip)
        if until and until > now:
            return True
        self._blocked.pop(ip, None)
        return False

    def failed(self, ip: str, now: float) -> None:
        fails = self._fails[ip]
        fails.append(now)
        while fails and fails[0] < now - self.window:
            fails.popleft()
        if len(fails) >= self.limit:
            self._blocked[ip] = now + self.block_for
            fails.clear()
            log.warning("blocking %s for %.0fs after %d failed logins", ip, self.block_for, self.limit)
        if len(self._fails) > 10000:  # bounded memory under a scan
            self._fails.pop(next(iter(self._fails)))


class RenterServer(asyncssh.SSHServer):
    """One renter connection: who they are, which lease they asked for, what they may open."""

    def __init__(self, broker: service.Broker, limiter: AuthLimiter, sessions: dict, startups: Startups,
                 signups: SignupLimiter, connections: dict | None = None):
        self._broker = broker
        self._connections = connections if connections is not None else defaultdict(int)
        self._counted: str | None = None  # the renter this connection counts against
        self._limiter = limiter
        self._signups = signups
        self._signup_key = None
        self._told_closed = False
        self._signup_open = False  # a signup connection gets one session
        self._sessions = sessions
        self._startups = startups
        self._fails = 0
        self._record: dict | None = None  # the lease as the last route to it read it
        self._checked: tuple | None = None  # (user, key fingerprint, renter): OpenSSH asks twice per key
        self._conn = None
        self._ip = "?"
        self.renter: str | None = None
        self.kind = "rent"
        self.lease: str | None = None

    def connection_made(self, conn):
        self._conn = conn
        self._ip = (conn.get_extra_info("peername") or ("?",))[0]
        self._startups.admit(conn)

    def auth_completed(self):
        self._startups.done(self._conn)
        if self.renter:
            if self._full(self.renter):  # others logged in while this one authenticated
                self._conn.disconnect(asyncssh.DISC_TOO_MANY_CONNECTIONS, self._full(self.renter))
                return
            self._counted = self.renter
            self._connections[self.renter] += 1

    def _full(self, renter: str) -> str | None:
        """Why renter may not log in once more (too many connections of its own open here), or None."""
        most = self._broker.config.connections_per_renter
        if self._connections.get(renter, 0) < most:
            return None
        return (f"shellrent: you have {most} connections open to this broker, the most it allows "
                f"(BROKER_CONNECTIONS_PER_RENTER); close some, or share one (ssh -o ControlMaster=auto)")

    def connection_lost(self, exc):
        self._startups.done(self._conn)
        if self._counted:
            self._connections[self._counted] -= 1
            if not self._connections[self._counted]:
                del self._connections[self._counted]
            self._counted = None
        if self.renter:
            audit.info("disconnect renter=%s ip=%s lease=%s reason=%s", self.renter, self._ip,
                       self.lease or "-", exc or "closed")

    def begin_auth(self, username):
        if self._limiter.blocked(self._ip, time.time()):
            self._conn.disconnect(asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE,
                                  "too many failed logins from your address; try again later")
            return True
        try:
            self.kind, self.lease = logins.lease_from_username(username)
        except BrokerError as exc:
            self.kind = None
            self._conn.send_auth_banner(f"shellrent: {exc} (e.g. {self.where.ssh('rent')})\r\n")
        return True

    @property
    def where(self) -> Where:
        """Where this renter reached the broker (or BROKER_PUBLIC_HOST), for the commands it is told."""
        return Where.of(self._broker.config.public_host, self._conn.get_extra_info("sockname") or ("localhost", 22))

    def password_auth_supported(self):
        return False

    def kbdint_auth_supported(self):
        return False

    def public_key_auth_supported(self):
        return True

    async def validate_public_key(self, username, key):
        fpr = material.fingerprint(key)
        try:
            if self._checked and self._checked[:2] == (username, fpr):  # the signed request after the query
                renter = self._checked[2]
            else:
                renter = await self._broker.renter_for_key(key) if self.kind else None
        except BrokerError as exc:  # the database does not answer: say so, in one line, and go
            self._conn.send_auth_banner(f"shellrent: {exc}\r\n")
            self._conn.disconnect(asyncssh.DISC_SERVICE_NOT_AVAILABLE, f"shellrent: {exc}")
            return False
        if self.kind == "signup" and self._broker.config.signup == "closed":  # nothing to log in for
            if not self._told_closed:
                self._told_closed = True
                self._conn.send_auth_banner(f"shellrent: {closed_message(self._broker.config.contact)}\r\n")
            return False
        if not renter and self.kind == "signup":
            self._checked = (username, fpr, None)
            return self._sign_up(key, None)
        if not renter:
            self._limiter.failed(self._ip, time.time())
            metrics.FAILED_LOGINS.inc()
            audit.info("auth-fail user=%s ip=%s key=%s", username, self._ip, fpr)
            self._fails += 1
            if self._fails >= self._broker.config.max_auth_tries:
                self._conn.disconnect(asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE, "too many authentication failures")
            return False
        self._checked = (username, fpr, renter)
        if self.kind == "signup":
            return self._sign_up(key, renter)
        if self._full(renter):
            self._conn.send_auth_banner(self._full(renter) + "\r\n")
            self._conn.disconnect(asyncssh.DISC_TOO_MANY_CONNECTIONS, self._full(renter))
            return False
        if self.renter != renter:
            metrics.LOGINS.inc()
            audit.info("login renter=%s user=%s ip=%s", renter, username, self._ip)
        self.renter = renter
        return True

    def _sign_up(self, key, known: str | None) -> bool:
        """Any key may log in as signup (its signature proves the person holds it); only a signup
        session opens, and a key a renter has already is told so."""
        self._signup_key, self.renter = key, None
        self._known = known
        return True

    def session_requested(self):
        if self.kind == "signup":
            if self._signup_open:
                raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, "one signup per connection")
            self._signup_open = True
            return CtlSession(Signup(self._broker, self._signup_key, self._known, self._ip, self.where,
                                     self._signups, on_fail=lambda: self._limiter.failed(self._ip, time.time())),
                              stdin=False)
        if self.kind == "ctl":
            return CtlSession(Commands(self._broker, self.renter, self.where))
        self._take_slot()
        picker = None if self.lease else self._pick
        return RenterSession(self._target, self._session_closed, picker, on_open=self._broker.channels.track,
                             banner=self._banner)

    async def _banner(self, lease_id: str, env: dict) -> str:
        where = self.where
        record = self._record if self._record and self._record["id"] == lease_id else None
        text = banner.text(record or await self._broker.accounts.lease(lease_id), (where.host, where.port), env)
        return text, (await self._broker.accounts.settings(self.renter))["tmux"]

    async def _pick(self, write, readline):
        return await pick_and_rent(self._broker, self.renter, write, readline, self.where)

    def _take_slot(self) -> None:
        """Sessions and port forwards together are limited per renter (all their connections, on
        this broker and, as of their last heartbeat, on the other brokers of its cluster)."""
        elsewhere = self._broker.cluster.sessions_elsewhere.get(self.renter, 0)
        if self._sessions[self.renter] + elsewhere >= self._broker.config.sessions_per_renter:
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_RESOURCE_SHORTAGE, "too many open sessions and forwards")
        self._sessions[self.renter] += 1

    def _free_slot(self) -> None:
        self._sessions[self.renter] -= 1
        if not self._sessions[self.renter]:
            del self._sessions[self.renter]

    def _session_closed(self, session):
        self._broker.channels.untrack(session)
        self._free_slot()

    async def _target(self, files_only: bool = False):
        if self.kind != "rent":
            raise BrokerError(f"{self.kind}@ takes commands only, e.g. {self.where.ssh('ctl')} offers")
        route = await self._broker.session_target(self.renter, self.lease, files_only, self.where)
        self._record = getattr(route, "record", None)
        if self.lease != route.lease:
            self.lease = route.lease
            audit.info("session renter=%s ip=%s lease=%s", self.renter, self._ip, route.lease)
        return route

    def connection_requested(self, dest_host, dest_port, orig_host, orig_port):
        if dest_host.lower() not in protocol.LOOPBACK or self.kind != "rent" or not 0 < dest_port < 65536:
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                "only ports on localhost inside your container can be forwarded")
        self._take_slot()
        return self._forward(dest_host, dest_port, orig_host, orig_port)

    async def _forward(self, dest_host, dest_port, orig_host, orig_port):
        try:
            route = await self._target()
            down = await open_tcp(route, dest_host.lower(), dest_port, (orig_host, orig_port))
        except BrokerError as exc:
            self._free_slot()
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, str(exc)) from None
        except BaseException:
            self._free_slot()
            raise
        self._broker.channels.track(route.lease, down)
        down.on_close = self._session_closed
        return down

    def server_requested(self, listen_host, listen_port):
        return False
