"""Renter sessions: through the lease's session helper (hostd.inside) where it runs, else `docker exec`.

The helper path costs one datagram into the container's network namespace instead of three or four
Docker API calls, and the session's bytes then flow through pipes straight between hostd and the
process (or the helper's keeper, for a terminal), with no engine or shim copying them. Both paths
give the session the same confinement: the helper is itself a `docker exec`.

The helper is the renter's (they can kill or replace it), so hostd takes nothing from it but bytes
in pipes hostd made: the request goes out as one datagram from an unbound socket (nothing can be
sent back on it), with duplicates of the pipes' far ends that only the sending thread holds and
closes; answers are bounded JSON lines, checked; signals and window sizes go to the helper as lines,
never to a PID it names. Any failure, or no answer within HELPER_WAIT, makes this session a
`docker exec` (logged) and asks for a new helper.
"""
import array
import asyncio
import fcntl
import json
import logging
import os
import secrets
import socket
import time
from pathlib import Path

import asyncssh

from . import engine, netns, offload, procfs
from .execsession import ExecSession
from .runtime import RuntimeError_

__all__ = ["ExecSession", "HelperError", "HelperSession", "Sessions", "install"]
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


def _send(pid: int, name: str, req: bytes, fds: list[int]) -> None:
    """Send the request datagram, with fds, to the helper in pid's network namespace (in a thread of
    its own). The fds are this call's own duplicates: it closes them whatever happens, so a caller
    that gave up (a timeout, a closed channel) can close its fds without this sending a reused number."""
    try:
        sock = netns.unix_socket(pid)
        try:
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
            sock.sendmsg([req], rights, 0, "\0" + name)
        finally:
            sock.close()
    finally:
        for fd in fds:
            os.close(fd)


class _Out(asyncio.Protocol):
    """A pipe from the session to the channel (stdout, stderr) or from the helper (ctl)."""

    def __init__(self, owner: "HelperSession", datatype=None, ctl: bool = False):
        self._owner, self._datatype, self._ctl = owner, datatype, ctl
        self.closed = asyncio.get_running_loop().create_future()

    def data_received(self, data):
        if self._ctl:
            self._owner.ctl_data(data)
        else:
            self._owner.seen += 1
            self._owner.chan.write(data, self._datatype)

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        if not self.closed.done():
            self.closed.set_result(None)
        if self._ctl:
            self._owner.ctl_closed()


class _In(asyncio.BaseProtocol):
    def __init__(self, chan=None):
        self._chan = chan

    def pause_writing(self):
        if self._chan:
            self._chan.pause_reading()

    def resume_writing(self):
        if self._chan:
            self._chan.resume_reading()


class HelperSession:
    """One session the helper started, spliced to an SSH channel; the same face as ExecSession.

    Only pipes connect hostd to the helper: hostd makes them all and sends their far ends, so it
    never receives a file descriptor (or anything but bytes) from the renter's side."""

    via = "helper"

    def __init__(self, chan, tty: bool, stdin_full=None):
        self.chan, self.tty = chan, tty
        self._stdin_full = stdin_full or chan  # paused while the process's stdin pipe is full
        self.done = asyncio.get_running_loop().create_future()
        self.status: int = 255
        self.lost = False      # it ended without the keeper reporting an exit
        self.seen = 0          # reads of output so far
        self._paused = False   # the channel is full: output waits, it is not quiet
        self._transports: list[asyncio.BaseTransport] = []
        self._outs: list[tuple[asyncio.ReadTransport, _Out]] = []
        self._in: asyncio.WriteTransport | None = None
        self._sig: asyncio.WriteTransport | None = None
        self._ctl: _Out | None = None
        self._buf = b""
        self._exit: int | None = None
        self._started = asyncio.get_running_loop().create_future()
        self._started.add_done_callback(lambda f: f.cancelled() or f.exception())  # read even if nobody waits

    async def start(self, pid: int, name: str, argv: list[str], env: dict, size) -> "HelperSession":
        loop = asyncio.get_running_loop()
        req = {"argv": argv, "env": env, "cwd": "/workspace", "tty": self.tty, "size": list(size or (80, 24))}
        # (ours, theirs) per pipe: stdin, stdout, [stderr], ctl (theirs writes), sig (ours writes)
        kinds = ["in", "out"] + ([] if self.tty else ["err"]) + ["ctl", "sig"]
        pipes = {}
        try:
            for kind in kinds:
                r, w = os.pipe()
                pipes[kind] = (w, r) if kind in ("in", "sig") else (r, w)
                if kind in ("in", "out"):
                    try:
                        fcntl.fcntl(w, F_SETPIPE_SZ, PIPE_SIZE)
                    except OSError:
                        pass
            theirs = []
            try:
                for kind in kinds:
                    theirs.append(os.dup(pipes[kind][1]))
            except OSError:
                for fd in theirs:
                    os.close(fd)
                raise
            try:
                await offload.call(_send, pid, name, (json.dumps(req) + "\n").encode(), theirs,
                                   timeout=HELPER_WAIT)
            finally:
                for kind in kinds:  # ours no more: the helper has them (or nobody does)
                    os.close(pipes[kind][1])
                    pipes[kind] = (pipes[kind][0], None)
            await self._connect(loop, pipes)
            await asyncio.wait_for(asyncio.shield(self._started), HELPER_WAIT)
            if not self._paused:
                self.resume_reading()
        except BaseException:
            for pair in pipes.values():
                for fd in pair:
                    if fd is not None:  # not yet a transport's (or sent)
                        os.close(fd)
            self.close()
            raise
        loop.create_task(self._finish())
        return self

    async def _connect(self, loop, pipes: dict) -> None:
        """Our ends of the pipes, each to a transport (which owns and closes it from now on)."""
        def own(kind):
            fd = pipes[kind][0]
            pipes[kind] = (None, None)
            return fd
        self._ctl = _Out(self, ctl=True)
        transport, _ = await loop.connect_read_pipe(lambda: self._ctl, os.fdopen(own("ctl"), "rb", 0))
        self._transports.append(transport)
        self._sig, _ = await loop.connect_write_pipe(_In, os.fdopen(own("sig"), "wb", 0))
        self._transports.append(self._sig)
        self._in, _ = await loop.connect_write_pipe(lambda: _In(self._stdin_full), os.fdopen(own("in"), "wb", 0))
        self._transports.append(self._in)
        for kind, datatype in (("out", None), ("err", asyncssh.EXTENDED_DATA_STDERR)):
            if kind in pipes:
                out = _Out(self, datatype)
                transport, _ = await loop.connect_read_pipe(lambda o=out: o, os.fdopen(own(kind), "rb", 0))
                transport.pause_reading()  # nothing reaches the channel before the helper says it started
                self._outs.append((transport, out))
                self._transports.append(transport)

    def ctl_data(self, data: bytes) -> None:
        """The helper's lines: checked, bounded; anything else is ignored."""
        self._buf += data
        if len(self._buf) > 4096:
            self._buf = b""
            self.close()
            return
        while b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            try:
                msg = json.loads(line)
                pid, code, sig = msg.get("pid"), msg.get("exit"), msg.get("signal")
            except (ValueError, RecursionError, AttributeError):
                continue
            if not self._started.done():
                if isinstance(pid, int):
                    self._started.set_result(None)
                else:
                    self._started.set_exception(HelperError(f"the helper answered {line[:80]!r}"))
            elif isinstance(code, int) and 0 <= code <= 255:
                self._exit = code
            elif isinstance(sig, int) and 0 < sig < 65:
                self._exit = 128 + sig

    def ctl_closed(self) -> None:
        if not self._started.done():
            self._started.set_exception(HelperError("the helper hung up"))

    async def _finish(self):
        """Done once the keeper has reported the end and the output is read: up to the end of its
        pipes, or, where a background job holds them open, until they stay quiet for DRAIN seconds
        (as with `docker exec`, `cmd &` returns). A helper killed mid-session reports no end: then
        the output's end ends the session."""
        outputs = asyncio.gather(*(out.closed for _, out in self._outs))
        await self._ctl.closed
        while self._exit is not None:
            seen = self.seen
            try:
                await asyncio.wait_for(asyncio.shield(outputs), DRAIN)
                break
            except asyncio.TimeoutError:
                if self.seen == seen and not self._paused:
                    break
        if self._exit is None:
            await outputs
            self.lost = True  # no end reported: the helper died with its container, or was killed
        else:
            self.status = self._exit
        if not self.done.done():
            self.done.set_result(None)

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

    def _tell(self, msg: dict) -> None:
        if self._sig and not self._sig.is_closing() and self._sig.get_write_buffer_size() < 65536:
            self._sig.write(json.dumps(msg).encode() + b"\n")

    async def resize(self, width: int, height: int) -> None:
        if self.tty:
            self._tell({"size": [width, height]})

    async def signal(self, name: str) -> None:
        self._tell({"signal": name})

    def close(self) -> None:
        """The channel is gone: drop everything now, stdin not yet taken included (a close would
        wait for the process to read it, which it may never do)."""
        for transport in self._transports:
            if transport.is_closing():  # (a closed pipe transport's abort() fails)
                continue
            transport.abort() if isinstance(transport, asyncio.WriteTransport) else transport.close()


class Sessions:
    """Opens sessions for hostd: the helper where it answers, docker exec otherwise."""

    def __init__(self, runtime, lease_dir):
        self._runtime = runtime
        self._lease_dir = lease_dir      # lease id -> its host directory (/etc/shellrent inside)
        self._known: dict[str, tuple[str, int, str]] = {}  # lease id -> (container, its init's PID, helper name)
        self._tried: dict[str, float] = {}

    def forget(self, lease_id: str) -> None:
        """A lease ended: nothing of it is kept here."""
        self._tried.pop(lease_id, None)
        self._known.pop(lease_id, None)

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

    async def open(self, rec: dict, chan, argv: list[str], env: dict, tty: bool, size, stdin_full=None):
        """A started session (HelperSession or ExecSession) for an active lease; stdin_full as theirs."""
        container = rec["container"]
        try:
            known, pid, name = self._known.get(rec["id"]) or (None, 0, None)
            if known != container or not procfs.in_container(pid, container):  # new, restarted, a reused number
                name = (self._lease_dir(rec["id"]) / "helper.key").read_text().strip()
                pid = await offload.call(self._runtime.pid, container, timeout=offload.QUICK)
                self._known[rec["id"]] = (container, pid, name)
            session = await HelperSession(chan, tty, stdin_full).start(pid, name, argv, env, size)
        except Exception as exc:  # whatever went wrong with the helper, this session goes on without it
            self._known.pop(rec["id"], None)
            if not isinstance(exc, (HelperError, RuntimeError_, OSError, ValueError, asyncio.TimeoutError)):
                log.exception("lease %s: the session helper path failed", rec["id"])
            log.info("lease %s: session via docker exec (helper: %s)", rec["id"],
                     str(exc) or type(exc).__name__)
            self.start_helper(rec)
            return await ExecSession(chan, tty, stdin_full).start(container, argv, env, size)
        log.info("lease %s: session via helper", rec["id"])
        return session
