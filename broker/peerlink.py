"""The renter's broker's end of the peer link: one SSH connection to each other broker of the
cluster (dialled when first needed, its key pinned against the brokers table, this broker's own peer
key as the client key), the route through it to a lease whose host holds its tunnel there, and the
calls (a start, a control call) that broker makes for this one.

Every channel of a renter's session is a channel of its own on the one connection, so SSH's flow
control holds each separately, as on a host's tunnel."""
import asyncio
import logging

import asyncssh

from shellrent.common import algorithms, protocol
from shellrent.keys import material

from .config import parse_addr
from .errors import BrokerError, Refused, Unavailable

log = logging.getLogger("shellrent.peers")

RPC = "shellrent-peer-v1"  # the subsystem of a call to another broker (a JSON line each way)
RENTER_ENV = "SHELLRENT_RENTER"  # whose lease a relayed session is: checked again by the other broker
CIPHERS = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com"]
ERRORS = {"Unavailable": Unavailable, "Refused": Refused}


class PeerRoute:
    """The way to a lease's container through the broker that holds its host's tunnel
    (broker.route.Route's two calls)."""

    def __init__(self, lease: str, host: str, renter: str, conn: asyncssh.SSHClientConnection, broker: str):
        self.lease, self.host, self.renter, self.broker = lease, host, renter, broker
        self._conn = conn

    async def open_session(self, factory, **kw):
        kw["env"] = {**kw.get("env", {}), protocol.LEASE_ENV: self.lease, RENTER_ENV: self.renter}
        return await self._conn.create_session(factory, **kw)

    async def open_forward(self, factory, dest_host: str, port: int, orig: tuple[str, int], **kw):
        """A forward names its lease in the destination and its renter in the originator (RENTER@HOST)."""
        return await self._conn.create_connection(factory, protocol.target(self.lease, dest_host), port,
                                                  f"{self.renter}@{orig[0]}", orig[1], **kw)

    def __repr__(self) -> str:
        return f"PeerRoute(lease={self.lease!r}, host={self.host!r}, via={self.broker!r})"


class _Call(asyncssh.SSHClientSession):
    """One call's channel: its lines, in order, until the other broker closes it."""

    def __init__(self):
        self.lines: asyncio.Queue = asyncio.Queue()
        self._buf = b""

    def data_received(self, data, datatype):
        self._buf += data
        while b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            self.lines.put_nowait(line)
        if len(self._buf) > protocol.MAX_LINE:
            self._buf = b""
            self.lines.put_nowait(None)

    def connection_lost(self, exc):
        self.lines.put_nowait(None)


class Peers:
    """Connections to the other brokers, one per broker, made again after a drop."""

    def __init__(self, key: asyncssh.SSHKey, keepalive: float = 5.0):
        self._key = key
        self._keepalive = keepalive
        self._conns: dict[str, asyncssh.SSHClientConnection] = {}
        self._dialling: dict[str, asyncio.Lock] = {}

    async def connection(self, owner: dict) -> asyncssh.SSHClientConnection:
        """The connection to the broker that owns a host (owner: its id, peer address and key)."""
        bid = owner["broker"]
        async with self._dialling.setdefault(bid, asyncio.Lock()):
            conn = self._conns.get(bid)
            if conn is not None and not conn.is_closed():
                return conn
            try:
                host, port = parse_addr(owner["peer"])
                pinned = material.parse_public_key(owner["peer_key"])
                conn = await asyncio.wait_for(asyncssh.connect(
                    host, port, **algorithms.tunnel_client(
                        username="peer", client_keys=[self._key], known_hosts=([pinned], [], []),
                        encryption_algs=CIPHERS, keepalive_interval=self._keepalive, keepalive_count_max=2,
                        client_version="shellrent-peer", encoding=None)), 10)
            except (OSError, asyncssh.Error, asyncio.TimeoutError, ValueError) as exc:
                raise Unavailable(f"the broker that holds this host's tunnel does not answer "
                                  f"({type(exc).__name__}); try again shortly") from None
            self._conns[bid] = conn
            return conn

    async def route(self, owner: dict, lease: str, host: str, renter: str) -> PeerRoute:
        return PeerRoute(lease, host, renter, await self.connection(owner), owner["broker"])

    async def call(self, owner: dict, verb: str, say=None, timeout: float = 600, **args) -> dict:
        """One call to the broker that owns a host: its lines {"say": ...} go to say(), its last
        line is the answer; an error there is raised here as the same kind, with its message."""
        conn = await self.connection(owner)
        try:
            chan, call = await conn.create_session(_Call, subsystem=RPC, encoding=None)
        except (OSError, asyncssh.Error) as exc:
            raise Unavailable(f"the broker that holds this host's tunnel refused the call: {exc}") from None
        try:
            chan.write(protocol.encode({"verb": verb, **args}))
            chan.write_eof()
            async with asyncio.timeout(timeout):
                while (line := await call.lines.get()) is not None:
                    msg = protocol.decode(line)
                    if "say" in msg:
                        if say:
                            say(msg["say"])
                        continue
                    if msg.get("ok") is True:
                        return msg
                    error = protocol.printable(str(msg.get("error") or f"{verb} failed"))[:300]
                    raise ERRORS.get(msg.get("kind"), BrokerError)(error)
        except TimeoutError:
            raise Unavailable(f"the broker that holds this host's tunnel did not answer {verb}") from None
        except protocol.WireError:
            raise Unavailable(f"the broker that holds this host's tunnel answered {verb} badly") from None
        except (OSError, asyncssh.Error) as exc:
            raise Unavailable(f"the link to the broker that holds this host's tunnel failed: {exc}") from None
        finally:
            chan.close()
        raise Unavailable(f"the broker that holds this host's tunnel went away during {verb}")

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()
