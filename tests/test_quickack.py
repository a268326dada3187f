"""The renters' listener: every call reaches asyncssh's protocol, and each read re-arms TCP_QUICKACK."""
import asyncio
import socket

from shellrent.broker.quickack import QuickAckListener


class Recorder(asyncio.Protocol):
    def __init__(self):
        self.calls, self.quickack, self.sock = [], [], None
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport
        self.sock = transport.get_extra_info("socket")
        self.calls.append("made")

    def data_received(self, data):
        self.quickack.append(self.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK))
        self.calls.append(data)
        self.transport.write(b"reply")  # an answer right after a read: the kernel's cue to delay acks

    def eof_received(self):
        self.calls.append("eof")

    def connection_lost(self, exc):
        self.calls.append("lost")
        self.lost.set_result(None)


async def test_the_listener_passes_everything_through_and_acks_at_once():
    made = []

    def factory(host, port):
        made.append(Recorder())
        return made[0]
    server = await QuickAckListener().create_server(factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for chunk in (b"SSH-2.0-x\r\n", b"more"):
        writer.write(chunk)
        await writer.drain()
        await asyncio.sleep(0.05)
    writer.write_eof()
    await asyncio.wait_for(made[0].lost, 5)
    writer.close()
    server.close()
    assert made[0].calls == ["made", b"SSH-2.0-x\r\n", b"more", "eof", "lost"]
    assert made[0].quickack == [1, 1]
