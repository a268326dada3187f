"""A TCP listener for the renters' port that acknowledges every read at once (TCP_QUICKACK), and
holds a new connection back (no banner, nothing read) until Startups has a login slot for it.

OpenSSH's client turns Nagle off only for interactive sessions, so in the handshake of `ssh host cmd`
it holds a small packet until its previous one is acknowledged; Linux delays that acknowledgement
up to 40 ms when the broker has nothing to send back. That happened twice per login (after the
key exchange init and after NEWKEYS): 80 of a login's ~60-140 ms. The kernel leaves quick-ack mode
on its own, so it is set again after each read. Given to asyncssh as the listener's `tunnel`, the
documented hook for a listener of one's own. From a load balancer the operator trusts, the PROXY v2
header is read first (broker.proxyproto), and the client it names is the connection's peer.
"""
import asyncio
import fcntl
import logging
import socket
import struct
import termios

from . import proxyproto

log = logging.getLogger("shellrent.server")


class _QuickAck(asyncio.Protocol):
    """Wraps asyncssh's connection protocol; the same calls, with the option set before each read.
    With startups, asyncssh sees the connection only once it has a slot."""

    def __init__(self, make_inner, startups=None, proxies=()):
        self._make_inner = make_inner
        self._inner = None
        self._startups = startups
        self._proxies = proxies  # networks whose connections start with a PROXY v2 header
        self._header: bytearray | None = None  # the header being read
        self._early = b""  # what came after the header, for the SSH side
        self._timer = None
        self._sock = None
        self._transport = None
        self._gone = False

    def connection_made(self, transport):
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            self._sock = sock
            self._quickack()
        if self._proxies and proxyproto.trusted(transport.get_extra_info("peername"), self._proxies):
            self._header = bytearray()
            self._timer = asyncio.get_running_loop().call_later(proxyproto.HEADER_WAIT, transport.abort)
            return
        self._admit()

    def _admit(self):
        if self._startups is None:
            self._start()
            return
        self._transport.pause_reading()  # while it waits: the client's bytes stay in the kernel
        self._startups.arrive(self._transport.get_extra_info("peername"), self._start, self._transport.abort,
                              self._sent)

    def _proxy_header(self, data: bytes) -> None:
        self._header += data
        try:
            got = proxyproto.parse(bytes(self._header))
        except proxyproto.ProxyError as exc:
            log.warning("connection from the proxy %s dropped: %s", self._transport.get_extra_info("peername"), exc)
            self._transport.abort()
            return
        if got is None:
            return
        length, peer, sock = got
        self._early, self._header = bytes(self._header[length:]), None
        self._timer.cancel()
        if peer:
            self._transport = proxyproto.Proxied(self._transport, peer, sock)
        self._admit()

    def _sent(self) -> bool:
        """Whether the client has sent anything while it waited (bytes in the kernel, unread)."""
        fd = self._transport.get_extra_info("socket").fileno()
        return bool(self._early) or struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0] > 0

    def _start(self):
        if self._gone:
            return
        self._inner = self._make_inner()
        self._inner.connection_made(self._transport)
        if self._early:
            early, self._early = self._early, b""
            self._inner.data_received(early)
        if self._startups is not None:
            self._transport.resume_reading()

    def _quickack(self):
        try:
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        except OSError:
            self._sock = None

    def data_received(self, data):
        if self._sock is not None:
            self._quickack()
        if self._header is not None:
            self._proxy_header(data)
            return
        if self._startups is not None:
            self._startups.heard(self._inner)
        self._inner.data_received(data)

    def eof_received(self):
        return self._inner.eof_received() if self._inner else False

    def connection_lost(self, exc):
        self._gone = True
        if self._timer:
            self._timer.cancel()
        if self._inner:
            self._inner.connection_lost(exc)

    def pause_writing(self):
        if self._inner:
            self._inner.pause_writing()

    def resume_writing(self):
        if self._inner:
            self._inner.resume_writing()


class QuickAckListener:
    """What asyncssh.create_server(tunnel=...) calls to listen: a plain TCP server of ours."""

    def __init__(self, startups=None, proxies=()):
        self._startups = startups
        self._proxies = proxies

    async def create_server(self, factory, host: str, port: int) -> asyncio.AbstractServer:
        return await asyncio.get_running_loop().create_server(
            lambda: _QuickAck(lambda: factory(host, port), self._startups, self._proxies), host, port)
