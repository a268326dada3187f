"""The exec stream's HTTP upgrade and Docker frame parsing, fed byte streams cut every which way."""
import asyncio
import socket

import asyncssh
from hypothesis import given, settings, strategies as st

from shellrent.hostd.engine import ExecStream, _dechunk, exec_start


class Recorder:
    """Stands in for the SSH channel: records what the stream writes to it."""

    def __init__(self):
        self.out, self.err = bytearray(), bytearray()

    def write(self, data, datatype=None):
        (self.err if datatype == asyncssh.EXTENDED_DATA_STDERR else self.out).extend(data)


class Transport:
    def write(self, data):
        pass

    def close(self):
        pass


HEAD = b"HTTP/1.1 101 UPGRADED\r\nContent-Type: application/vnd.docker.multiplexed-stream\r\n" \
       b"Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n"


def _frame(kind: int, payload: bytes) -> bytes:
    return bytes([kind, 0, 0, 0]) + len(payload).to_bytes(4, "big") + payload


def _feed(chunks, tty=False):
    async def go():
        rec = Recorder()
        stream = ExecStream(rec, tty, b"")
        stream.connection_made(Transport())
        for chunk in chunks:
            stream.data_received(chunk)
        return rec, stream
    return asyncio.run(go())


frames = st.lists(st.tuples(st.sampled_from([1, 2]), st.binary(max_size=300)), max_size=8)


@settings(max_examples=200, deadline=None)
@given(frames, st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=50))
def test_frames_survive_any_chunking(frames, cuts):
    wire = HEAD + b"".join(_frame(k, p) for k, p in frames)
    chunks, pos = [], 0
    for n in cuts * (len(wire) // max(sum(cuts), 1) + 1):
        if pos >= len(wire):
            break
        chunks.append(wire[pos:pos + n])
        pos += n
    rec, stream = _feed(chunks)
    assert stream.ready.done() and stream.ready.exception() is None
    assert bytes(rec.out) == b"".join(p for k, p in frames if k == 1)
    assert bytes(rec.err) == b"".join(p for k, p in frames if k == 2)


def test_output_in_the_same_read_as_the_headers_is_kept():
    rec, _ = _feed([HEAD + _frame(1, b"first bytes")])
    assert bytes(rec.out) == b"first bytes"


def test_tty_stream_is_raw():
    rec, _ = _feed([HEAD[:10], HEAD[10:] + b"\x01\x02raw"], tty=True)
    assert bytes(rec.out) == b"\x01\x02raw"


def test_refused_upgrade_is_an_error():
    rec, stream = _feed([b"HTTP/1.1 404 Not Found\r\nContent-Length: 20\r\n\r\n{\"message\":\"nope\"}"])
    assert "exec start failed" in str(stream.ready.exception())
    assert not rec.out


def test_dechunk():
    assert _dechunk(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n") == b"hello world"


async def test_a_half_closed_stream_ends_although_stdin_is_still_queued(tmp_path, monkeypatch):
    """dockerd ends an exec with CloseWrite only and keeps its socket open until Go collects it: stdin
    the ended process never read must not hold the session open (it hung for minutes this way)."""
    path = str(tmp_path / "docker.sock")
    conns = []

    async def engine(reader, writer):  # upgrades, never reads stdin, then half-closes and keeps the socket
        conns.append(writer)
        await reader.readuntil(b"\r\n\r\n")
        writer.write(HEAD)
        await asyncio.sleep(0.5)
        writer.transport.get_extra_info("socket").shutdown(socket.SHUT_WR)

    server = await asyncio.start_unix_server(engine, path)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{path}")

    class Chan(Recorder):
        def pause_reading(self):
            pass

    try:
        stream = await exec_start("x", Chan(), False)
        stream.write(b"\0" * (16 << 20))  # far more than the socket buffers take
        await asyncio.wait_for(stream.done, 5)
    finally:
        for writer in conns:
            writer.close()
        server.close()
        await server.wait_closed()
