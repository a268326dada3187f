"""hostd's port forwards: a direct-tcpip channel from the broker bridged to a loopback port inside a
lease container's network namespace (hostd.netns), with flow control both ways, paced at the
lease's bandwidth cap (hostd.pacing) both ways."""
import asyncio

import asyncssh

from shellrent.common.flow import Gate

from . import netns
from .sessionhost import SessionError


async def forward(host, lease: str, addr: str, port: int) -> "TcpBridge":
    """A bridge to addr:port in the lease's container; host is hostd.sessionhost's SessionHost."""
    try:
        pid = await host.container_pid(lease)
        sock = await netns.connect(pid, addr, port)
    except (OSError, SessionError) as exc:
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED,
                                        f"cannot connect to {addr}:{port} in the container: {exc}") from None
    bridge = TcpBridge()
    bridge.paced = [host.pacing.throttle(lease, "in", bridge.inp), host.pacing.throttle(lease, "out", bridge.out)]
    await asyncio.get_running_loop().create_connection(lambda: _Sock(bridge), sock=sock)
    return bridge


class _Sock(asyncio.Protocol):
    def __init__(self, bridge: "TcpBridge"):
        self._b = bridge

    def connection_made(self, transport):
        self._b.transport = transport
        self._b.out.attach(transport)
        self._b.out.hold("starting")  # until the SSH channel is open

    def data_received(self, data):
        self._b.chan.write(data)
        if self._b.paced:
            self._b.paced[1].spend(len(data))

    def eof_received(self):
        self._b.chan.write_eof()
        return True

    def pause_writing(self):
        self._b.inp.hold("socket full")

    def resume_writing(self):
        self._b.inp.release("socket full")

    def connection_lost(self, exc):
        if self._b.chan:
            self._b.chan.close()


class TcpBridge(asyncssh.SSHTCPSession):
    """SSH direct-tcpip channel <-> TCP socket inside the container."""

    def __init__(self):
        self.chan = None
        self.transport = None
        self.inp = Gate()  # reading the channel
        self.out = Gate()  # reading the socket
        self.paced: list = []  # the lease's pacing: (to the container, from it)

    def connection_made(self, chan):
        self.chan = chan
        self.inp.attach(chan)
        self.out.release("starting")

    def data_received(self, data, datatype):
        self.inp.check()
        self.transport.write(data)
        if self.paced:
            self.paced[0].spend(len(data))

    def eof_received(self):
        if self.transport.can_write_eof():
            self.transport.write_eof()
        return True

    def pause_writing(self):
        self.out.hold("channel full")

    def resume_writing(self):
        self.out.release("channel full")

    def connection_lost(self, exc):
        for throttle in self.paced:
            throttle.close()
        self.transport.close()
