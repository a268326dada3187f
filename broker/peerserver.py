"""The peer port: where the other brokers of the cluster carry their renters' channels to the hosts
whose tunnels this broker holds, and make the calls only this broker may make to those hosts (a start,
an extension).

Only a live broker's peer key (the brokers table) logs in, as user `peer`: a renter, a host or a
stranger is refused at authentication. Each channel names its lease (and its renter); this broker
checks again that the lease is that renter's, is active (or, for sftp, still has its files) and that
its host's tunnel is here, and then only relays, with broker.relay's classes: flow control, exit
status after all data, pty, signals, sftp and port forwards behave as on a direct login."""
import asyncio
import logging

import asyncssh

from shellrent.common import protocol
from shellrent.keys import material

from .errors import BrokerError, Unavailable
from .peerlink import RENTER_ENV, RPC
from .relay import RenterSession, open_tcp

log = logging.getLogger("shellrent.peers")
VERBS = ("launch", "call")
CALLS = ("lease.extend",)  # the control calls another broker may have this one make to a host


class PeerSession(RenterSession):
    """A relayed session (broker.relay.RenterSession with the lease named by the other broker) or a
    call (subsystem RPC: one JSON line in, lines out)."""

    def __init__(self, peers: "PeerServer"):
        self._peers = peers
        self._call = False
        self._input = b""
        super().__init__(self._route, self._closed, on_open=peers.broker.channels.track)

    async def _route(self, files_only: bool):
        env = self.chan.get_environment()
        renter = env.get(RENTER_ENV)
        if not isinstance(renter, str):
            raise BrokerError("a relayed session names its renter")
        return await self._peers.broker.logins.local_target(protocol.name(renter, "renter"),
                                                           env.get(protocol.LEASE_ENV), files_only)

    def _closed(self, session) -> None:
        self._peers.broker.channels.untrack(session)

    def subsystem_requested(self, subsystem):
        if subsystem == RPC:
            self._call = True
            return True
        return super().subsystem_requested(subsystem)

    def session_started(self):
        if not self._call:
            super().session_started()

    def data_received(self, data, datatype):
        if not self._call:
            super().data_received(data, datatype)
        elif len(self._input) + len(data) > protocol.MAX_LINE:
            self.chan.close()
        else:
            self._input += data

    def eof_received(self):
        if not self._call:
            return super().eof_received()
        self._task = asyncio.get_running_loop().create_task(self._answer())
        return True

    async def _answer(self) -> None:
        try:
            req = protocol.decode(self._input)
            reply = await self._peers.answer(req, lambda item: self.chan.write(protocol.encode({"say": item})))
            answer = {"ok": True, **reply}
        except BrokerError as exc:
            answer = {"ok": False, "kind": type(exc).__name__, "error": str(exc)}
        except protocol.WireError as exc:
            answer = {"ok": False, "error": f"bad call: {exc}"}
        except Exception as exc:  # whatever went wrong, the caller hears of it and the channel closes
            log.exception("a peer call failed")
            answer = {"ok": False, "kind": "Unavailable", "error": f"the call failed here: {type(exc).__name__}"}
        try:
            self.chan.write(protocol.encode(answer))
        except (OSError, asyncssh.Error):
            pass
        self.chan.close()

    def connection_lost(self, exc):
        if self._call:
            if self._task:
                self._task.cancel()  # the caller went: a start under way goes on (renting shields it)
            return
        super().connection_lost(exc)


class PeerServer(asyncssh.SSHServer):
    """One other broker's connection to this one."""

    def __init__(self, broker):
        self.broker = broker
        self._conn = None
        self.peer: str | None = None

    def connection_made(self, conn):
        self._conn = conn

    def begin_auth(self, username):
        return True

    def password_auth_supported(self):
        return False

    def kbdint_auth_supported(self):
        return False

    def public_key_auth_supported(self):
        return True

    async def validate_public_key(self, username, key):
        if username != "peer":
            return False
        line = material.public_line(key)
        cluster = self.broker.cluster
        if line not in cluster.peer_keys and not await cluster.peer_key_known(line):
            return self._refuse(key)
        for row in await cluster.live():  # the row as it is now: a broker gone since is refused
            if row["id"] != cluster.id and row["peer_key"] == line:
                self.peer = row["id"]
                log.info("broker %s connected from %s", row["id"], self._conn.get_extra_info("peername"))
                return True
        return self._refuse(key)

    def _refuse(self, key) -> bool:
        fpr = material.fingerprint(key)
        log.warning("peer port: refused key %s from %s (not a live broker of this cluster)", fpr,
                    self._conn.get_extra_info("peername"))
        return False

    def session_requested(self):
        return PeerSession(self)

    def connection_requested(self, dest_host, dest_port, orig_host, orig_port):
        where = protocol.parse_target(dest_host)
        renter, _, orig = orig_host.partition("@") if isinstance(orig_host, str) else ("", "", "")
        if where is None or not 0 < dest_port < 65536 or not protocol.NAME.fullmatch(renter):
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, "not a lease's port")
        return self._forward(*where, dest_port, (orig, orig_port), renter)

    async def _forward(self, lease: str, host: str, port: int, orig, renter: str):
        try:
            route = await self.broker.logins.local_target(renter, lease, False)
            down = await open_tcp(route, host, port, orig)
        except BrokerError as exc:
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, str(exc)) from None
        self.broker.channels.track(route.lease, down)
        down.on_close = self.broker.channels.untrack
        return down

    def server_requested(self, listen_host, listen_port):
        return False

    async def answer(self, req: dict, say) -> dict:
        """A call from the other broker, for a host whose tunnel is here."""
        verb = req.get("verb")
        if verb not in VERBS:
            raise BrokerError(f"unknown call {protocol.printable(str(verb))[:20]!r}")
        lid = protocol.lease_id(req.get("lease"))
        if verb == "launch":
            closes = req.get("closes")
            if closes is not None:
                closes = protocol.timestamp(closes)
            await self.broker.renting.launch_here(lid, say, req.get("pull") is True, closes, self.peer)
            return {}
        op = req.get("op")
        if op not in CALLS:
            raise BrokerError(f"call {protocol.printable(str(op))[:20]!r} is not one a broker makes for another")
        lease = await self.broker.db(self.broker.store.lease, lid)
        link = self.broker.tunnels.get(lease["host"])
        if link is None:
            raise Unavailable(f"host {lease['host']} has no tunnel here (it moved); it is told when it is back")
        args = req.get("args")
        if not isinstance(args, dict) or set(args) - {"ends_at"}:
            raise protocol.WireError("lease.extend takes ends_at only")
        reply = await link.call(op, id=lid, ends_at=protocol.timestamp(args.get("ends_at")))
        return {"reply": {k: v for k, v in reply.items() if k not in ("call",)}}
