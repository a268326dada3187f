"""A tiny async Docker Engine API client for the exec hot path.

docker-py's exec_start(socket=True) can lose output sent right after the HTTP upgrade (docker-py
#3332, #2042) and blocks a thread per stream. Here the upgrade is parsed in an asyncio Protocol, so
the bytes that follow the response headers in the same read are the first bytes of the stream.
"""
import asyncio
import json
import os
from urllib.parse import urlencode

import asyncssh


class EngineError(Exception):
    """The Docker engine refused a request; str() is its message."""


def socket_path() -> str:
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        raise EngineError(f"DOCKER_HOST={host}: only unix:// sockets are supported")
    return host[len("unix://"):]


def _request(method: str, path: str, body: dict | None, upgrade: bool = False) -> bytes:
    payload = json.dumps(body).encode() if body is not None else b""
    head = [f"{method} {path} HTTP/1.1", "Host: docker", f"Content-Length: {len(payload)}"]
    if body is not None:
        head.append("Content-Type: application/json")
    head += ["Connection: Upgrade", "Upgrade: tcp"] if upgrade else ["Connection: close"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + payload


def _split_head(buf: bytes) -> tuple[int, dict, bytes] | None:
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = buf[:end].decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, buf[end + 4:]


def _dechunk(body: bytes) -> bytes:
    out, pos = bytearray(), 0
    while True:
        eol = body.index(b"\r\n", pos)
        size = int(body[pos:eol].split(b";")[0], 16)
        if size == 0:
            return bytes(out)
        out += body[eol + 2:eol + 2 + size]
        pos = eol + 2 + size + 2


TIMEOUT = 30.0  # every engine request here; a stuck one raises asyncio.TimeoutError


async def _roundtrip(method: str, path: str, body: dict | None) -> bytes:
    reader, writer = await asyncio.open_unix_connection(socket_path())
    try:
        writer.write(_request(method, path, body))
        return await reader.read()
    finally:
        writer.close()


async def api(method: str, path: str, body: dict | None = None, **query) -> dict | None:
    """One request on its own connection; returns the parsed JSON body (None when empty)."""
    if query:
        path += "?" + urlencode(query)
    data = await asyncio.wait_for(_roundtrip(method, path, body), TIMEOUT)
    status, headers, rest = _split_head(data)
    if headers.get("transfer-encoding") == "chunked":
        rest = _dechunk(rest)
    result = json.loads(rest) if rest.strip() else None
    if status >= 400:
        raise EngineError((result or {}).get("message", f"engine answered {status}"))
    return result


class ExecStream(asyncio.Protocol):
    """The hijacked stream of one exec, spliced to an SSH channel with flow control both ways.

    The engine's output goes to chan (stderr as extended data when there is no tty);
    write()/write_eof() feed the process's stdin; while the engine has not taken it, `stdin_full`
    (the channel itself unless told otherwise) is paused. `done` resolves when the engine closes.
    """

    def __init__(self, chan, tty: bool, request: bytes, stdin_full=None):
        self._chan = chan
        self._stdin_full = stdin_full or chan
        self._tty = tty
        self._request = request
        self._head = b""
        self._upgraded = False
        self._hdr = b""
        self._left = 0
        self._kind = 1
        self.transport = None
        self.ready = asyncio.get_running_loop().create_future()
        self.done = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self._request)

    def data_received(self, data):
        if not self._upgraded:
            head = _split_head(self._head + data)
            if head is None:
                self._head += data
                return
            status, _, data = head
            if status not in (101, 200):
                self.ready.set_exception(EngineError(f"exec start failed: {data.decode(errors='replace').strip()}"))
                self.transport.close()
                return
            self._upgraded = True
            self._head = b""
            self.ready.set_result(None)
            if not data:
                return
        if self._tty:
            self._chan.write(data)
        else:
            self._demux(data)

    def _demux(self, data: bytes) -> None:
        """Docker's multiplexed framing: 8-byte header (stream, 0, 0, 0, size BE32), payload."""
        pos, n = 0, len(data)
        while pos < n:
            if not self._left:
                take = min(8 - len(self._hdr), n - pos)
                self._hdr += data[pos:pos + take]
                pos += take
                if len(self._hdr) == 8:
                    self._kind = self._hdr[0]
                    self._left = int.from_bytes(self._hdr[4:8], "big")
                    self._hdr = b""
                continue
            take = min(self._left, n - pos)
            chunk = data if (pos == 0 and take == n) else data[pos:pos + take]
            pos += take
            self._left -= take
            if self._kind == 2:
                self._chan.write(chunk, asyncssh.EXTENDED_DATA_STDERR)
            else:
                self._chan.write(chunk)

    def eof_received(self):
        """The exec ended. dockerd only half-closes the hijacked socket (CloseWrite) and keeps its end
        open until Go's collector closes it, so stdin still queued for the ended process would hold
        close() for as long, and the session with it: drop it."""
        self.transport.abort()
        return False

    def connection_lost(self, exc):
        if not self.ready.done():
            self.ready.set_exception(EngineError(f"engine closed the exec stream: {exc}"))
        if not self.done.done():
            self.done.set_result(None)

    def pause_writing(self):
        self._stdin_full.pause_reading()

    def resume_writing(self):
        self._stdin_full.resume_reading()

    # stdin side, called by the SSH session
    def write(self, data: bytes) -> None:
        self.transport.write(data)

    def write_eof(self) -> None:
        if self.transport.can_write_eof():
            self.transport.write_eof()


async def exec_start(exec_id: str, chan, tty: bool, stdin_full=None) -> ExecStream:
    """Start an exec and splice its stream to chan; returns once the engine has upgraded."""
    request = _request("POST", f"/exec/{exec_id}/start", {"Detach": False, "Tty": tty}, upgrade=True)
    loop = asyncio.get_running_loop()
    transport, stream = await asyncio.wait_for(
        loop.create_unix_connection(lambda: ExecStream(chan, tty, request, stdin_full), socket_path()), TIMEOUT)
    try:
        await asyncio.wait_for(asyncio.shield(stream.ready), TIMEOUT)
    except asyncio.TimeoutError:
        transport.close()
        raise
    return stream
