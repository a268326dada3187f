"""A TCP listener for the renters' port that acknowledges every read at once (TCP_QUICKACK), and
holds a new connection back (no banner, nothing read) until Startups has a login slot for it.

OpenSSH's client turns Nagle off only for interactive sessions, so in the handshake of `ssh host cmd`
it holds a small packet until its previous one is acknowledged; Linux delays that acknowledgement
up to 40 ms when the broker has nothing to send back. That happened twice per login (after the
key exchange init and after NEWKEYS): 80 of a login's ~60-140 ms. The kernel leaves quick-ack mode
on its own, so it is set again after each read. Given to asyncssh as the listener's `tunnel`, the
documented hook for a listener of one's own.
"""
import asyncio
import fcntl
import socket
import struct
import termios


class _QuickAck(asyncio.Protocol):
    """Wraps asyncssh's connection protocol; the same calls, with the option set before each read.
    With startups, asyncssh sees the connection only once it has a slot."""

    def __init__(self, make_inner, startups=None):
        self._make_inner = make_inner
        self._inner = None
        self._startups = startups
        self._sock = None
        self._transport = None
        self._gone = False

    def connection_made(self, transport):
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            self._sock = sock
            self._quickack()
        if self._startups is None:
            self._start()
            return
        transport.pause_reading()  # while it waits: the client's bytes stay in the kernel
        self._startups.arrive(transport.get_extra_info("peername"), self._start, transport.abort, self._sent)

    def _sent(self) -> bool:
        """Whether the client has sent anything while it waited (bytes in the kernel, unread)."""
        fd = self._transport.get_extra_info("socket").fileno()
        return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0] > 0

    def _start(self):
        if self._gone:
            return
        self._inner = self._make_inner()
        self._inner.connection_made(self._transport)
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
        if self._startups is not None:
            self._startups.heard(self._inner)
        self._inner.data_received(data)

    def eof_received(self):
        return self._inner.eof_received() if self._inner else False

    def connection_lost(self, exc):
        self._gone = True
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

    def __init__(self, startups=None):
        self._startups = startups

    async def create_server(self, factory, host: str, port: int) -> asyncio.AbstractServer:
        return await asyncio.get_running_loop().create_server(
            lambda: _QuickAck(lambda: factory(host, port), self._startups), host, port)
