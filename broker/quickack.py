"""A TCP listener for the renters' port that acknowledges every read at once (TCP_QUICKACK).

OpenSSH's client turns Nagle off only for interactive sessions, so in the handshake of `ssh host cmd`
it holds a small packet until its previous one is acknowledged; Linux delays that acknowledgement
up to 40 ms when the broker has nothing to send back. That happened twice per login (after the
key exchange init and after NEWKEYS): 80 of a login's ~60-140 ms. The kernel leaves quick-ack mode
on its own, so it is set again after each read. Given to asyncssh as the listener's `tunnel`, the
documented hook for a listener of one's own.
"""
import asyncio
import socket


class _QuickAck(asyncio.Protocol):
    """Wraps asyncssh's connection protocol; the same calls, with the option set before each read."""

    def __init__(self, inner: asyncio.Protocol):
        self._inner = inner
        self._sock = None

    def connection_made(self, transport):
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            self._sock = sock
            self._quickack()
        self._inner.connection_made(transport)

    def _quickack(self):
        try:
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        except OSError:
            self._sock = None

    def data_received(self, data):
        if self._sock is not None:
            self._quickack()
        self._inner.data_received(data)

    def eof_received(self):
        return self._inner.eof_received()

    def connection_lost(self, exc):
        self._inner.connection_lost(exc)

    def pause_writing(self):
        self._inner.pause_writing()

    def resume_writing(self):
        self._inner.resume_writing()


class QuickAckListener:
    """What asyncssh.create_server(tunnel=...) calls to listen: a plain TCP server of ours."""

    async def create_server(self, factory, host: str, port: int) -> asyncio.AbstractServer:
        return await asyncio.get_running_loop().create_server(lambda: _QuickAck(factory(host, port)), host, port)
