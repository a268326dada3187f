"""Host tunnels: accept hostd's outbound TCP connection and run SSH over it as the client.

The broker pins each host by the hostd host key it saw at join time; an unknown key gets only the
hello exchange, where it must present a valid join token. Right after authentication, before any
renter channel exists, the broker opens the connection's one control channel (shellrent.common.protocol): calls
and replies, and the host's events, travel on it and on nothing else.
"""
import asyncio
import itertools
import logging
import math
import time
from typing import Awaitable, Callable

import asyncssh

from shellrent.common import algorithms, protocol
from shellrent.keys import material

from .errors import Banned, Refused, Unavailable  # noqa: F401 (Refused: raised here, caught by the use cases)
from .quickack import QuickAckListener
from .startups import Startups

log = logging.getLogger("shellrent.tunnels")

TUNNEL_CIPHERS = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com"]
MAX_EVENTS = 5000  # events waiting to be handled; a host that floods more is cut off
MAX_ERROR = 300
CLOCK_EVERY = 30.0  # seconds between measurements of a host's clock
CLOCK_ROUND_TRIP = 2.0  # a measurement over a longer round trip is off by too much to use


class Control(asyncssh.SSHClientSession):
    """The broker's side of one host's control channel: calls matched to replies by id, and the
    host's events queued in order (dropped until the host is identified)."""

    def __init__(self):
        self._chan: asyncssh.SSHClientChannel | None = None
        self._buf = b""
        self._ids = itertools.count(1)
        self.epoch: int | None = None  # sent with every call once welcomed (hostd refuses a lower one)
        self._calls: dict[int, asyncio.Future] = {}
        self.events: asyncio.Queue | None = None  # set once the host is known

    def connection_made(self, chan):
        self._chan = chan

    def data_received(self, data, datatype):
        self._buf += data
        while b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            if line.strip():
                self._line(line)
        if len(self._buf) > protocol.MAX_LINE:
            self._cut("control line too long")

    def _line(self, line: bytes) -> None:
        try:
            msg = protocol.decode(line)
        except protocol.WireError as exc:
            self._cut(f"bad control message: {exc}")
            return
        if "call" in msg:
            fut = self._calls.pop(msg["call"], None) if isinstance(msg["call"], int) else None
            if fut and not fut.done():
                fut.set_result(msg)
        elif self.events is not None:
            if self.events.qsize() >= MAX_EVENTS:
                self._cut("too many events")
            else:
                self.events.put_nowait(msg)

    def _cut(self, why: str) -> None:
        log.warning("host connection %s: %s; closing it", self._chan.get_extra_info("peername"), why)
        self._chan.get_extra_info("connection").close()

    def connection_lost(self, exc):
        for fut in self._calls.values():
            if not fut.done():
                fut.set_exception(ConnectionError("control channel closed"))
        self._calls.clear()
        if self.events is not None:
            self.events.put_nowait(None)

    async def call(self, op: str, timeout: float = 120, alive=None, **args) -> dict:
        """One control call; raises Unavailable with hostd's message (made printable) when it fails.
        alive() (monotonic time of the op's last sign of life, e.g. a pull's progress) moves the
        timeout on: it counts from then."""
        if self._chan is None:
            raise Unavailable(f"host has no control channel for {op}")
        call_id = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._calls[call_id] = fut
        started = time.monotonic()
        try:
            epoch = {"epoch": self.epoch} if self.epoch is not None else {}
            self._chan.write(protocol.encode({**args, **epoch, "op": op, "call": call_id}))
            while not fut.done():
                left = max(started, alive() if alive else started) + timeout - time.monotonic()
                if left <= 0:
                    raise asyncio.TimeoutError()
                await asyncio.wait([fut], timeout=left)
            reply = fut.result()
        except asyncio.TimeoutError:
            raise Unavailable(f"host did not answer {op} in {timeout:.0f} s") from None
        except (OSError, asyncssh.Error, ConnectionError, ValueError) as exc:
            raise Unavailable(f"host did not answer {op}: {str(exc) or type(exc).__name__}") from None
        finally:
            self._calls.pop(call_id, None)
        if reply.get("ok") is not True:
            error = reply.get("error")
            error = protocol.printable(error)[:MAX_ERROR].replace("\n", " ") if isinstance(error, str) and error \
                else f"host refused {op}"
            raise Refused(error)
        return reply


class HostLink:
    """One connected host: its name, its SSH connection and its control channel."""

    def __init__(self, name: str, conn: asyncssh.SSHClientConnection, control: Control):
        self.name = name
        self.conn = conn
        self.control = control
        self.since = time.time()
        self.epoch: int | None = None
        self.hello_at = self.since
        self.offset: float | None = None  # the host's clock less the broker's, as last measured

    async def call(self, op: str, timeout: float = 120, alive=None, **args) -> dict:
        """One control call; raises Unavailable with hostd's message when it fails."""
        return await self.control.call(op, timeout, alive, **args)


class _TunnelClient(asyncssh.SSHClient):
    def __init__(self, startups: Startups):
        self._startups = startups
        self._conn = None
        self.lost: Exception | None = None  # why the connection closed

    def connection_made(self, conn):
        self._conn = conn
        self._startups.admit(conn)

    def auth_completed(self):
        self._startups.done(self._conn)

    def connection_lost(self, exc):
        self._startups.done(self._conn)
        self.lost = exc

    def validate_host_public_key(self, host, addr, port, key):
        # Every key may finish the handshake; Tunnels._accepted then demands a pinned key or a
        # valid join token before the connection is used for anything.
        return True


def measured(reply: dict, asked: float, answered: float) -> float | None:
    """The host's clock less the broker's, from the time in its reply and the round trip's midpoint."""
    theirs = reply.get("time")
    if isinstance(theirs, bool) or not isinstance(theirs, (int, float)) or not math.isfinite(theirs):
        return None
    return theirs - (asked + answered) / 2


Identify = Callable[[asyncssh.SSHClientConnection, asyncssh.SSHKey, dict], Awaitable[str]]


class Tunnels:
    """Listener for hostd connections and the registry of connected hosts."""

    def __init__(self, client_key: asyncssh.SSHKey, identify: Identify, keepalive: float = 15,
                 connected=None, disconnected=None, event=None, startups: Startups | None = None, welcome=None,
                 now=time.time):
        self._key = client_key
        self._identify = identify
        self._connected = connected  # async (link, hello) -> None, after welcome
        self._disconnected = disconnected  # async (name, when it was last heard) -> None
        self._event = event  # async (name, event) -> None, in the order the host sent them
        self._welcome = welcome  # async (name, epoch the host saw) -> what else the welcome tells it
        self._now = now  # the broker's time (the database's, in a cluster): hosts keep leases on it
        self._keepalive = keepalive
        self._startups = startups or Startups(100, 10)
        self.login_timeout = 30.0  # a connection that has not finished its handshake by then is dropped
        self.links: dict[str, HostLink] = {}
        self._acceptor = None

    async def listen(self, host: str, port: int) -> int:
        """Start accepting host connections; returns the bound port."""
        self._acceptor = await asyncssh.listen_reverse(
            host, port, **algorithms.tunnel_client(
                client_factory=lambda: _TunnelClient(self._startups), client_keys=[self._key],
                known_hosts=lambda h, a, p: ([], [], []), username="broker", client_version="shellrent",
                encryption_algs=TUNNEL_CIPHERS, keepalive_interval=self._keepalive,
                keepalive_count_max=3, login_timeout=self.login_timeout, acceptor=self._accepted,
                error_handler=self._failed, tunnel=QuickAckListener(self._startups)))
        return self._acceptor.get_port()

    def get(self, name: str) -> HostLink | None:
        link = self.links.get(name)
        return link if link and not link.conn.is_closed() else None

    def _failed(self, conn, exc):
        log.info("host connection failed before use: %s", exc)

    async def _accepted(self, conn: asyncssh.SSHClientConnection) -> None:
        peer = conn.get_extra_info("peername")
        key = conn.get_server_host_key()
        control = Control()
        try:
            await asyncio.wait_for(conn.create_session(lambda: control, subsystem=protocol.CONTROL, encoding=None), 30)
            asked = self._now()
            hello = await control.call("hello", timeout=30)
            offset = measured(hello, asked, self._now())
            if hello.get("proto") != protocol.PROTO:
                raise Unavailable(f"unsupported protocol version {protocol.printable(str(hello.get('proto')))[:20]}")
            name = await self._identify(conn, key, hello)
        except Exception as exc:  # any failure: say why, then drop the connection
            log.warning("host %s (%s) refused: %s", peer, material.fingerprint(key), exc)
            try:
                await control.call("reject", timeout=10, error=str(exc), **({"banned": True} if isinstance(exc, Banned)
                                                                          else {}))
            except Unavailable:
                pass
            conn.close()
            return
        old = self.links.get(name)
        link = self.links[name] = HostLink(name, conn, control)
        link.hello_at = asked  # the host's list of leases is as of this moment
        link.offset = offset
        if old and old.conn is not conn:
            old.conn.close()
        log.info("host %s connected from %s", name, peer)
        control.events = asyncio.Queue()
        try:
            seen = hello.get("epoch") if protocol.number_in(hello.get("epoch"), 0, 1 << 62, True) else 0
            extra = await self._welcome(name, seen) if self._welcome else {}
        except Exception as exc:  # the database does not answer: the host comes back when it does
            log.warning("host %s: cannot record its tunnel here (%s); closing it", name, exc)
            if self.links.get(name) is link:
                del self.links[name]
            conn.close()
            return
        link.epoch = extra.get("epoch")
        loop = asyncio.get_running_loop()
        loop.create_task(self._watch(name, conn))  # from here on, its end is recorded
        try:
            await control.call("welcome", timeout=30, host=name, offset=offset, **extra)
            control.epoch = link.epoch
        except Unavailable as exc:  # refused (another broker's epoch is higher) or not answered: no use
            log.warning("host %s: welcome failed: %s; closing its tunnel", name, exc)
            conn.close()
            return
        loop.create_task(self._clock(link))
        if self._connected:
            try:
                await self._connected(link, hello)
            except Exception:
                log.exception("host %s: after-connect work failed", name)
        loop.create_task(self._follow(link))

    async def _follow(self, link: HostLink) -> None:
        """Hand the host's events over, one at a time and in order, until its channel closes."""
        while (event := await link.control.events.get()) is not None:
            if self._event:
                try:
                    await self._event(link.name, event)
                except Exception:
                    log.exception("host %s: event failed", link.name)

    async def _clock(self, link: HostLink) -> None:
        """Measure the host's clock every CLOCK_EVERY seconds and tell it (hostd keeps leases on the
        broker's time); a measurement over a slow round trip is not believed."""
        while not link.conn.is_closed():
            await asyncio.sleep(CLOCK_EVERY)
            asked = self._now()
            try:
                reply = await link.call("clock", timeout=10, offset=link.offset)
            except Unavailable as exc:
                log.info("host %s: measuring its clock failed: %s", link.name, exc)
                continue
            answered = self._now()
            offset = measured(reply, asked, answered)
            if offset is not None and answered - asked < CLOCK_ROUND_TRIP:
                moved = link.offset is None or abs(offset - link.offset) >= 0.05
                link.offset = offset
                if moved:
                    try:
                        await link.call("clock", timeout=10, offset=offset)
                    except Unavailable:
                        pass

    async def _watch(self, name: str, conn: asyncssh.SSHClientConnection) -> None:
        await conn.wait_closed()
        link = self.links.get(name)
        if link and link.conn is conn:
            del self.links[name]
            lost = getattr(conn.get_owner(), "lost", None)
            at = self._now()
            if lost is not None and "keepalive" in str(lost).lower():
                at -= self._keepalive * 3  # it went silent before the keepalives gave up on it
            log.info("host %s disconnected (%s)", name, lost or "closed")
            if self._disconnected:
                await self._disconnected(name, at, link.epoch)

    async def close(self) -> None:
        if self._acceptor:
            self._acceptor.close()
        for link in list(self.links.values()):
            link.conn.close()
