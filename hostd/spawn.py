"""Renter sessions: through the lease's session helper (hostd.inside) where it runs, else `docker exec`.

The helper path costs one unix-socket round trip into the container's network namespace instead of
three or four Docker API calls, and the session's bytes then flow through pipes (or a pty master)
straight between hostd and the process, with no engine or shim copying them. Both paths give the
session the same confinement: the helper is itself a `docker exec`.

The helper is the renter's (they can kill or replace it), so nothing it says is trusted: the name
it listens on is a per-lease secret (no other lease can answer for it), every answer is checked, a
pty master must be one, extra fds are closed, and any failure or delay past HELPER_WAIT makes this
session a `docker exec` (logged) and asks for a new helper. Signals go to the helper, never to a PID
it names.
"""
import array
import asyncio
import fcntl
import json
import logging
import os
import secrets
import signal as signals
import socket
import stat
import struct
import termios
import time
from pathlib import Path

import asyncssh

from . import engine, netns, offload
from .runtime import RuntimeError_

log = logging.getLogger("shellrent.sessions")

HELPER_WAIT = 3.0      # seconds for the helper to answer before the session goes through docker exec
HELPER_RETRY = 10.0    # seconds between tries to (re)start one lease's helper
DRAIN = 0.2            # seconds of quiet output after the exit that end a session
PIPE_SIZE = 1 << 20
F_SETPIPE_SZ = 1031
SOURCE = Path(__file__).with_name("inside.py")


class HelperError(Exception):
    """The helper could not start this session; str() says why (for the log)."""


def install(lease_dir: Path) -> None:
    """Put the helper and a fresh secret name into the lease's read-only /etc/shellrent."""
    (lease_dir / "helper.py").write_bytes(SOURCE.read_bytes())
    key = lease_dir / "helper.key"
    if not key.exists():
        key.write_text(secrets.token_hex(16) + "\n")
    for name in ("helper.py", "helper.key"):
        (lease_dir / name).chmod(0o644)


def _is_pty_master(fd: int) -> bool:
    st = os.fstat(fd)
    return stat.S_ISCHR(st.st_mode) and (os.major(st.st_rdev), os.minor(st.st_rdev)) == (5, 2)


def _ask(pid: int, name: str, req: bytes, fds: list[int]) -> tuple[socket.socket, int | None]:
    """Connect to the helper inside pid's network namespace, send the request, read its answer."""
    deadline = time.monotonic() + HELPER_WAIT
    sock = netns.unix_connect(pid, name, HELPER_WAIT)
    got: list[int] = []
    try:
        sock.sendmsg([req], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else [])
        data = b""
        while not data.endswith(b"\n"):
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            msg, anc, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(4 * 4))
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    got += array.array("i", payload[:len(payload) - len(payload) % 4]).tolist()
            if not msg or len(data) > 4096:
                raise HelperError("the helper hung up")
            data += msg
        reply = json.loads(data)
        if not isinstance(reply, dict) or not isinstance(reply.get("pid"), int):
            raise HelperError(f"the helper answered {str(reply)[:80]!r}")
        if got and not _is_pty_master(got[0]):
            raise HelperError("the helper sent something that is not a pty master")
        master = got.pop(0) if got else None
        for fd in got:
            os.close(fd)
        sock.setblocking(False)
        return sock, master
    except BaseException:
        for fd in got:
            os.close(fd)
        sock.close()
        raise


class _Out(asyncio.Protocol):
    """A pipe or pty master from the session to the channel."""

    def __init__(self, owner: "HelperSession", datatype=None):
        self._owner, self._datatype = owner, datatype
        self.closed = asyncio.get_running_loop().create_future()

    def data_received(self, data):
        self._owner._seen += 1
        self._owner.chan.write(data, self._datatype)

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        if not self.closed.done():
            self.closed.set_result(None)


class _In(asyncio.BaseProtocol):
    def __init__(self, owner: "HelperSession"):
        self._owner = owner

    def pause_writing(self):
        self._owner.chan.pause_reading()

    def resume_writing(self):
        self._owner.chan.resume_reading()


class _Ctl(asyncio.Protocol):
    """The helper's end of one session: the exit, and signals to it."""

    def __init__(self):
        self.buf = b""
        self.status: int | None = None
        self.closed = asyncio.get_running_loop().create_future()
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.buf += data
        if len(self.buf) > 4096:
            self.transport.close()
            return
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            try:
                msg = json.loads(line)
                code, sig = msg.get("exit"), msg.get("signal")
            except (ValueError, AttributeError):
                continue
            if isinstance(code, int) and 0 <= code <= 255:
                self.status = code
            elif isinstance(sig, int) and 0 < sig < 65:
                self.status = 128 + sig

    def connection_lost(self, exc):
        if not self.closed.done():
            self.closed.set_result(None)


class HelperSession:
    """One session the helper started, spliced to an SSH channel; the same face as ExecSession."""

    via = "helper"

    def __init__(self, chan, tty: bool):
        self.chan, self.tty = chan, tty
        self.done = asyncio.get_running_loop().create_future()
        self._outs: list[tuple[asyncio.ReadTransport, _Out]] = []
        self._in: asyncio.WriteTransport | None = None
        self._ctl: _Ctl | None = None
        self._master: int | None = None
        self._seen = 0         # reads so far
        self._paused = False   # the channel is full: output waits, it is not quiet

    async def start(self, pid: int, name: str, argv: list[str], env: dict, size) -> "HelperSession":
        loop = asyncio.get_running_loop()
        req = {"argv": argv, "env": env, "cwd": "/workspace", "tty": self.tty, "size": list(size or (80, 24))}
        mine, theirs = [], []
        if not self.tty:
            for child_reads in (True, False, False):
                r, w = os.pipe()
                try:
                    fcntl.fcntl(w, F_SETPIPE_SZ, PIPE_SIZE)
                except OSError:
                    pass
                mine.append(w if child_reads else r)
                theirs.append(r if child_reads else w)
        try:
            sock, master = await offload.call(_ask, pid, name, (json.dumps(req) + "\n").encode(), theirs,
                                              timeout=HELPER_WAIT + 1)
        except BaseException:
            for fd in mine:
                os.close(fd)
            raise
        finally:
            for fd in theirs:
                os.close(fd)
        _, self._ctl = await loop.create_unix_connection(_Ctl, sock=sock)
        if self.tty:
            if master is None:
                self._ctl.transport.close()
                raise HelperError("the helper sent no pty")
            self._master = os.dup(master)  # for resizes, ours until close()
            mine = [os.dup(master), master]
        elif master is not None:
            os.close(master)
        self._in, _ = await loop.connect_write_pipe(lambda: _In(self), os.fdopen(mine[0], "wb", 0))
        kinds = [None] if self.tty else [None, asyncssh.EXTENDED_DATA_STDERR]
        for fd, datatype in zip(mine[1:], kinds):
            out = _Out(self, datatype)
            transport, _ = await loop.connect_read_pipe(lambda o=out: o, os.fdopen(fd, "rb", 0))
            self._outs.append((transport, out))
        loop.create_task(self._finish())
        return self

    async def _finish(self):
        """Done once the process has exited and its output is read: up to the end of its pipes, or,
        where a background job holds them open, until they stay quiet for DRAIN seconds (as with
        `docker exec`, `cmd &` returns). A helper killed mid-session reports no exit: then the
        output's end ends the session."""
        outputs = asyncio.gather(*(out.closed for _, out in self._outs))
        await self._ctl.closed
        while self._ctl.status is not None:
            seen = self._seen
            try:
                await asyncio.wait_for(asyncio.shield(outputs), DRAIN)
                break
            except asyncio.TimeoutError:
                if self._seen == seen and not self._paused:
                    break
        if self._ctl.status is None:
            await outputs
        if not self.done.done():
            self.done.set_result(None)

    @property
    def status(self) -> int:
        return 255 if self._ctl.status is None else self._ctl.status

    def write(self, data: bytes) -> None:
        if not self._in.is_closing():
            self._in.write(data)

    def write_eof(self) -> None:
        if not self.tty and not self._in.is_closing():
            self._in.close()

    def pause_reading(self) -> None:
        self._paused = True
        for transport, _ in self._outs:
            transport.pause_reading()

    def resume_reading(self) -> None:
        self._paused = False
        for transport, _ in self._outs:
            transport.resume_reading()

    async def resize(self, width: int, height: int) -> None:
        if self._master is not None:
            try:
                fcntl.ioctl(self._master, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))
            except OSError as exc:
                log.debug("resize failed: %s", exc)

    async def signal(self, name: str) -> None:
        if not self._ctl.transport.is_closing():
            self._ctl.transport.write(json.dumps({"signal": name}).encode() + b"\n")

    def close(self) -> None:
        for transport in [self._in, self._ctl.transport, *(t for t, _ in self._outs)]:
            if transport:
                transport.close()
        if self._master is not None:
            os.close(self._master)
            self._master = None


class ExecSession:
    """A session as a `docker exec`, its hijacked stream spliced to the channel (hostd.engine)."""

    via = "docker exec"

    def __init__(self, chan, tty: bool):
        self.chan, self.tty = chan, tty
        self.status = 255
        self._stream: engine.ExecStream | None = None
        self._exec_id: str | None = None
        self.done = asyncio.get_running_loop().create_future()

    async def start(self, container: str, argv: list[str], env: dict, size) -> "ExecSession":
        created = await engine.api("POST", f"/containers/{container}/exec", {
            "AttachStdin": True, "AttachStdout": True, "AttachStderr": True, "Tty": self.tty,
            "Cmd": argv, "Env": [f"{k}={v}" for k, v in env.items()], "WorkingDir": "/workspace"})
        self._exec_id = created["Id"]
        self._stream = await engine.exec_start(self._exec_id, self.chan, self.tty)
        if self.tty and size:
            await self.resize(*size[:2])
        asyncio.get_running_loop().create_task(self._finish())
        return self

    async def _finish(self):
        await self._stream.done
        for _ in range(200):
            try:
                info = await engine.api("GET", f"/exec/{self._exec_id}/json")
            except (engine.EngineError, OSError, asyncio.TimeoutError):
                break
            if not info["Running"] and info["ExitCode"] is not None:
                self.status = info["ExitCode"]
                break
            await asyncio.sleep(0.01)
        self.done.set_result(None)

    def write(self, data: bytes) -> None:
        self._stream.write(data)

    def write_eof(self) -> None:
        if not self.tty:
            self._stream.write_eof()

    def pause_reading(self) -> None:
        self._stream.transport.pause_reading()

    def resume_reading(self) -> None:
        self._stream.transport.resume_reading()

    async def resize(self, width: int, height: int) -> None:
        try:
            await engine.api("POST", f"/exec/{self._exec_id}/resize", h=height, w=width)
        except (engine.EngineError, OSError, asyncio.TimeoutError) as exc:
            log.debug("resize failed: %s", exc)

    async def signal(self, name: str) -> None:
        try:
            info = await engine.api("GET", f"/exec/{self._exec_id}/json")
            if info.get("Running") and info.get("Pid"):
                os.kill(info["Pid"], getattr(signals, f"SIG{name}"))
        except (engine.EngineError, OSError, asyncio.TimeoutError) as exc:
            log.debug("signal %s failed: %s", name, exc)

    def close(self) -> None:
        if self._stream:
            self._stream.transport.close()


class Sessions:
    """Opens sessions for hostd: the helper where it answers, docker exec otherwise."""

    def __init__(self, runtime, lease_dir):
        self._runtime = runtime
        self._lease_dir = lease_dir      # lease id -> its host directory (/etc/shellrent inside)
        self._pids: dict[str, int] = {}  # container id -> its init's host PID
        self._tried: dict[str, float] = {}

    def start_helper(self, rec: dict) -> None:
        """(Re)start the lease's helper, at most once per HELPER_RETRY; never waits for it."""
        now = time.monotonic()
        if now - self._tried.get(rec["id"], -HELPER_RETRY) < HELPER_RETRY:
            return
        self._tried[rec["id"]] = now
        try:
            install(self._lease_dir(rec["id"]))
        except OSError as exc:
            log.warning("lease %s: cannot write its session helper: %s", rec["id"], exc)
            return
        asyncio.get_running_loop().create_task(self._run_helper(rec))

    async def _run_helper(self, rec: dict) -> None:
        cmd = ("command -v python3 >/dev/null 2>&1 || exit 0; "
               "exec python3 -I /etc/shellrent/helper.py /etc/shellrent/helper.key")
        try:
            created = await engine.api("POST", f"/containers/{rec['container']}/exec", {
                "AttachStdin": False, "AttachStdout": False, "AttachStderr": False, "Tty": False,
                "Cmd": ["/bin/sh", "-c", cmd], "WorkingDir": "/"})
            await engine.api("POST", f"/exec/{created['Id']}/start", {"Detach": True, "Tty": False})
        except (engine.EngineError, OSError, asyncio.TimeoutError) as exc:
            log.info("lease %s: the session helper did not start: %s", rec["id"], exc or "timed out")

    async def open(self, rec: dict, chan, argv: list[str], env: dict, tty: bool, size):
        """A started session (HelperSession or ExecSession) for an active lease."""
        container = rec["container"]
        try:
            name = (self._lease_dir(rec["id"]) / "helper.key").read_text().strip()
            pid = self._pids.get(container) or await offload.call(self._runtime.pid, container,
                                                                  timeout=offload.QUICK)
            self._pids[container] = pid
            session = await HelperSession(chan, tty).start(pid, name, argv, env, size)
        except (HelperError, RuntimeError_, OSError, ValueError, asyncio.TimeoutError) as exc:
            self._pids.pop(container, None)
            log.info("lease %s: session via docker exec (helper: %s)", rec["id"],
                     str(exc) or type(exc).__name__)
            self.start_helper(rec)
            return await ExecSession(chan, tty).start(container, argv, env, size)
        log.info("lease %s: session via helper", rec["id"])
        return session
