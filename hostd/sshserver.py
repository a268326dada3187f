"""hostd's SSH server side of the tunnel: the control channel, renter sessions and port forwards.

Only the broker's pinned client key may log in. The first channel of a connection must be the
control channel (shellrent.common.protocol); control is refused on every later channel, and renter channels are
refused until the control channel is open, so no relayed channel can ever reach control. A renter
session names its lease in the SHELLRENT_LEASE env var; it starts in that lease's container through
the lease's session helper, or as a `docker exec` where the helper cannot (hostd.spawn). Port forwards connect to a
loopback port inside the container's network namespace (hostd.netns).
"""
import asyncio
import logging
import signal as signals

import asyncssh

from shellrent.common import protocol
from shellrent.common.flow import Gate
from shellrent.keys import material

from . import engine, netns, spawn
from .selfcheck import MOUNTED as GPU_CHECK

log = logging.getLogger("shellrent.sessions")

SFTP = ("for p in /usr/lib/openssh/sftp-server /usr/libexec/openssh/sftp-server /usr/lib/ssh/sftp-server "
        "/usr/libexec/sftp-server; do [ -x \"$p\" ] && exec \"$p\"; done; "
        "echo 'sftp-server is not installed in this image' >&2; exit 127")


GONE_CHECK = 2.0  # seconds between looks at whether a running session's channel was closed
MAX_SESSIONS = 256  # open sessions per lease (the broker allows a renter 64 in all; this backs it up)


async def _within(fut: asyncio.Future, seconds: float) -> bool:
    """Whether fut is done within seconds (it keeps running either way)."""
    done, _ = await asyncio.wait([fut], timeout=seconds)
    return bool(done)


class SessionError(Exception):
    """A renter session cannot start; str() goes to the renter's stderr."""


class HostServer(asyncssh.SSHServer):
    """One connection from the broker: accepts only the pinned broker key; the first channel is
    control, every later one a renter's."""

    def __init__(self, agent):
        self._agent = agent
        self.opened = 0  # channels opened on this connection so far
        self.control: "HostSession | None" = None

    def begin_auth(self, username):
        return True

    def password_auth_supported(self):
        return False

    def public_key_auth_supported(self):
        return True

    def validate_public_key(self, username, key):
        return material.fingerprint(key) == self._agent.broker_fingerprint

    def session_requested(self):
        self.opened += 1
        return HostSession(self._agent, self, first=self.opened == 1)

    def connection_requested(self, dest_host, dest_port, orig_host, orig_port):
        self.opened += 1
        if self.control is None:
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, "no control channel yet")
        target = protocol.parse_target(dest_host)
        if not target or not 0 < dest_port < 65536:
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                                            "only loopback ports in a lease's container can be reached")
        return _forward(self._agent, *target, dest_port)

    def server_requested(self, listen_host, listen_port):
        return False


async def _forward(agent, lease: str, host: str, port: int) -> "TcpBridge":
    try:
        pid = await agent.container_pid(lease)
        sock = await netns.connect(pid, host, port)
    except (OSError, SessionError) as exc:
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED,
                                        f"cannot connect to {host}:{port} in the container: {exc}") from None
    bridge = TcpBridge()
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

    def connection_made(self, chan):
        self.chan = chan
        self.inp.attach(chan)
        self.out.release("starting")

    def data_received(self, data, datatype):
        self.inp.check()
        self.transport.write(data)

    def eof_received(self):
        if self.transport.can_write_eof():
            self.transport.write_eof()
        return True

    def pause_writing(self):
        self.out.hold("channel full")

    def resume_writing(self):
        self.out.release("channel full")

    def connection_lost(self, exc):
        self.transport.close()


class HostSession(asyncssh.SSHServerSession):
    """One channel from the broker: the connection's control channel, or a renter's session."""

    def __init__(self, agent, server: HostServer, first: bool):
        self._agent = agent
        self._server = server
        self._first = first
        self._control = False
        self._chan = None
        self._command: str | None = None
        self._subsystem: str | None = None
        self._pty: tuple | None = None
        self._size: tuple | None = None
        self._buf = b""
        self._early: list[bytes] = []  # renter stdin that came before the exec stream was open (a packet)
        self._in = Gate()  # reading the channel: held while starting and while the process's stdin is full
        self._early_eof = False
        self._stream: spawn.HelperSession | spawn.ExecSession | None = None
        self._out_paused = False  # the channel is full: the session's output waits (even while it starts)
        self._task = None
        self._calls: set[asyncio.Task] = set()
        self._lease: str | None = None

    def connection_made(self, chan):
        self._chan = chan
        self._in.attach(chan)

    def pty_requested(self, term_type, term_size, term_modes):
        self._pty = (term_type, term_size)
        self._size = term_size
        return not self._control

    def shell_requested(self):
        return not self._control

    def exec_requested(self, command):
        self._command = command
        return not self._control

    def subsystem_requested(self, subsystem):
        if subsystem == protocol.CONTROL:
            if not self._first or self._server.control is not None or self._pty or self._command is not None:
                log.warning("refused a control request on a later channel of the broker's connection")
                return False
            self._control = True
            self._server.control = self
            return True
        self._subsystem = subsystem
        return subsystem == "sftp" and not self._control

    def session_started(self):
        if self._control:
            return
        if self._server.control is None or self._first:
            self._chan.write_stderr(b"shellrent: this host has no control channel from the broker yet\r\n")
            self._chan.exit(2)
            return
        self._in.hold("starting")  # asyncssh resumes it right after this returns; data_received pauses again
        self._task = asyncio.get_running_loop().create_task(self._run_exec())

    # the control channel: calls from the broker, replies and events back
    def _control_data(self, data: bytes) -> None:
        self._buf += data
        while b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            if line.strip():
                task = asyncio.get_running_loop().create_task(self._call(line))
                self._calls.add(task)
                task.add_done_callback(self._calls.discard)
        if len(self._buf) > protocol.MAX_LINE:
            log.warning("control line from the broker too long: closing the connection")
            self._chan.get_extra_info("connection").close()

    async def _call(self, line: bytes):
        call_id = None
        try:
            req = protocol.decode(line)
            call_id = req.get("call")
            reply = await self._agent.control(req, self)
        except (protocol.WireError, KeyError, TypeError, ValueError) as exc:
            reply = {"ok": False, "error": f"bad control call: {exc}"}
        except Exception as exc:
            log.exception("control call failed")
            reply = {"ok": False, "error": str(exc)}
        try:
            self._chan.write(protocol.encode({**reply, "call": call_id}))
        except (OSError, asyncssh.Error):
            pass  # the broker went away

    def send(self, event: dict) -> None:
        """An event to the broker."""
        self._chan.write(protocol.encode(event))

    # renter sessions
    def warn(self, message: str) -> None:
        """A lease warning for a session without a terminal (terminals get it in the container)."""
        if self._pty is None and self._subsystem is None:
            self._chan.write_stderr(f"\n{message}\n".encode())

    def _argv(self, shell: str) -> list[str]:
        if self._subsystem == "sftp":
            return ["/bin/sh", "-c", SFTP]
        if self._command is not None:
            word, _, rest = self._command.partition(" ")
            if word == "gpu-check":  # `ssh rent@broker gpu-check`: the self-check hostd ships
                return [shell, "-c", f"exec python3 {GPU_CHECK} {rest}"]
            return [shell, "-c", self._command]
        return [shell, "-l"]

    async def _run_exec(self):
        env = dict(self._chan.get_environment())
        lease = env.pop(protocol.LEASE_ENV, None)
        env = protocol.filter_env(env)
        tty = self._pty is not None and self._subsystem is None
        try:
            rec = await self._agent.session_lease(lease, files_only=self._subsystem == "sftp")
            if len(self._agent.leases.sessions.get(rec["id"], ())) >= MAX_SESSIONS:
                raise SessionError(f"this lease has {MAX_SESSIONS} sessions open on this host, the most it may")
            self._lease = rec["id"]
            self._agent.leases.track(self._lease, self)
            env["SHELLRENT_ENDS_AT"] = str(int(rec["ends_at"]))
            if tty:
                env["TERM"] = self._pty[0] or "xterm"
            argv, size = self._argv(rec["shell"]), self._size[:2] if tty and self._size else None
            if rec["state"] == "active":
                self._stream = await self._agent.sessions.open(rec, self._chan, argv, env, tty, size,
                                                                self._in.valve("stdin full"))
            else:  # an ended lease's files, in a container of their own
                self._stream = await spawn.ExecSession(self._chan, tty, self._in.valve("stdin full")).start(rec["container"], argv, env, size)
        except Exception as exc:  # one line to the renter, whatever it was; never a session left hanging
            if not isinstance(exc, (SessionError, engine.EngineError, OSError, asyncio.TimeoutError)):
                log.exception("session in lease %s failed to start", self._lease)
            self._chan.write_stderr(f"shellrent: {exc or type(exc).__name__}\r\n".encode())
            self._chan.exit(2)
            return
        if self._out_paused:  # asyncssh said so once, while the session was starting
            self._stream.pause_reading()
        if tty and self._size and self._size[:2] != size:
            await self._stream.resize(*self._size[:2])  # resized while it started
        for data in self._early:
            self._stream.write(data)
        if self._early_eof:
            self._stream.write_eof()
        self._early = []
        self._in.release("starting")
        while not await _within(self._stream.done, GONE_CHECK):
            if self._chan.is_closing():
                # The broker closed the channel while it was paused (stdin the process does not
                # read): asyncssh holds that close behind the unread data, so it would never arrive.
                self._stream.close()
                self._chan.abort()
                return
        status = self._stream.status
        try:
            self._chan.write_eof()
        except OSError:
            return  # the renter is gone
        sig = status - 128
        if self._command is not None and 0 < sig < 32:
            self._chan.exit_with_signal(signals.Signals(sig).name[3:])
        else:
            self._chan.exit(status)

    def data_received(self, data, datatype):
        if self._control:
            self._control_data(data)
            return
        self._in.check()
        if self._stream:
            self._stream.write(data)
        else:
            self._early.append(data)

    def eof_received(self):
        if self._control:
            return True
        if self._stream:
            self._stream.write_eof()
        else:
            self._early_eof = True
        return True

    def pause_writing(self):
        self._out_paused = True
        if self._stream:
            self._stream.pause_reading()

    def resume_writing(self):
        self._out_paused = False
        if self._stream:
            self._stream.resume_reading()

    def terminal_size_changed(self, width, height, pixwidth, pixheight):
        self._size = (width, height)
        if self._stream:
            asyncio.get_running_loop().create_task(self._stream.resize(width, height))

    def signal_received(self, signal):
        if self._stream and signal in protocol.SIGNALS:
            asyncio.get_running_loop().create_task(self._stream.signal(signal))

    def break_received(self, msec):
        return False

    def connection_lost(self, exc):
        if self._control:
            self._agent.detach_sink(self)  # calls under way finish; their replies go nowhere
            return
        if self._lease:
            self._agent.leases.untrack(self._lease, self)
        if self._stream:
            self._stream.close()
        elif self._task:
            self._task.cancel()
