"""hostd's SSH server side of the tunnel: which channel may be what, and renter sessions.

Only the broker's pinned client key may log in. The first channel of a connection must be the
control channel (shellrent.common.protocol); control is refused on every later channel, and renter channels are
refused until the control channel is open, so no relayed channel can ever reach control. A renter
session names its lease in the SHELLRENT_LEASE env var; it starts in that lease's container through
the lease's session helper, or as a `docker exec` where the helper cannot (hostd.spawn). The control
channel's calls are hostd.controlchan's; port forwards are hostd.tcpbridge's.
"""
import asyncio
import logging
import signal as signals

import asyncssh

from shellrent.common import protocol
from shellrent.common.flow import Gate
from shellrent.keys import material

from . import engine, spawn
from .controlchan import ControlChannel
from .selfcheck import MOUNTED as GPU_CHECK
from .sessionhost import SessionError
from .tcpbridge import forward

log = logging.getLogger("shellrent.sessions")

SFTP = ("for p in /usr/lib/openssh/sftp-server /usr/libexec/openssh/sftp-server /usr/lib/ssh/sftp-server "
        "/usr/libexec/sftp-server; do [ -x \"$p\" ] && exec \"$p\"; done; "
        "echo 'sftp-server is not installed in this image' >&2; exit 127")


GONE_CHECK = 2.0  # seconds between looks at whether a running session's channel was closed


LOST_WAIT = 5  # seconds a session whose process vanished waits to hear whether its lease ended


async def _within(fut: asyncio.Future, seconds: float) -> bool:
    """Whether fut is done within seconds (it keeps running either way)."""
    done, _ = await asyncio.wait([fut], timeout=seconds)
    return bool(done)


class HostServer(asyncssh.SSHServer):
    """One connection from the broker: accepts only the pinned broker key; the first channel is
    control, every later one a renter's."""

    def __init__(self, broker_fingerprint: str, control, host):
        self._fingerprint = broker_fingerprint
        self._control = control  # hostd.control: the calls
        self._host = host  # hostd.sessionhost: what sessions need (None while joining: no sessions)
        self.opened = 0  # channels opened on this connection so far
        self.control: "HostSession | None" = None

    def begin_auth(self, username):
        return True

    def password_auth_supported(self):
        return False

    def public_key_auth_supported(self):
        return True

    def validate_public_key(self, username, key):
        return material.fingerprint(key) == self._fingerprint

    def session_requested(self):
        self.opened += 1
        return HostSession(self._control, self._host, self, first=self.opened == 1)

    def connection_requested(self, dest_host, dest_port, orig_host, orig_port):
        self.opened += 1
        if self.control is None:
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, "no control channel yet")
        target = protocol.parse_target(dest_host)
        if not target or not 0 < dest_port < 65536:
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                                            "only loopback ports in a lease's container can be reached")
        if self._host is None:
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, "this host is joining")
        return forward(self._host, *target, dest_port)

    def server_requested(self, listen_host, listen_port):
        return False


class PacedChannel:
    """A renter channel as a session's output sees it: every write is spent from the lease's bucket
    (hostd.pacing), which pauses the output's reading while the lease is over its rate."""

    def __init__(self, chan, throttle):
        self._chan, self._throttle = chan, throttle

    def write(self, data, datatype=None):
        self._chan.write(data, datatype)
        self._throttle.spend(len(data))

    def __getattr__(self, name):
        return getattr(self._chan, name)


class HostSession(asyncssh.SSHServerSession):
    """One channel from the broker: the connection's control channel, or a renter's session."""

    def __init__(self, control, host, server: HostServer, first: bool):
        self._calls = control
        self._host = host
        self._server = server
        self._first = first
        self._control: ControlChannel | None = None
        self._chan = None
        self._command: str | None = None
        self._subsystem: str | None = None
        self._pty: tuple | None = None
        self._size: tuple | None = None
        self._early: list[bytes] = []  # renter stdin that came before the exec stream was open (a packet)
        self._in = Gate()  # reading the channel: held while starting and while the process's stdin is full
        self._out = Gate()  # reading the session's output: held while the channel is full, and by the pacing
        self._early_eof = False
        self._stream: spawn.HelperSession | spawn.ExecSession | None = None
        self._paced: list = []  # the lease's pacing of this channel (hostd.pacing), once its lease is known
        self._task = None
        self._lease: str | None = None
        self._told_end = asyncio.get_running_loop().create_future()  # set when the lease's end is told

    def connection_made(self, chan):
        self._chan = chan
        self._in.attach(chan)

    def pty_requested(self, term_type, term_size, term_modes):
        self._pty = (term_type, term_size)
        self._size = term_size
        return self._control is None

    def shell_requested(self):
        return self._control is None

    def exec_requested(self, command):
        self._command = command
        return self._control is None

    def subsystem_requested(self, subsystem):
        if subsystem == protocol.CONTROL:
            if not self._first or self._server.control is not None or self._pty or self._command is not None:
                log.warning("refused a control request on a later channel of the broker's connection")
                return False
            self._control = ControlChannel(self._chan, self._calls)
            self._server.control = self._control
            return True
        self._subsystem = subsystem
        return subsystem == "sftp" and self._control is None

    def session_started(self):
        if self._control:
            return
        if self._server.control is None or self._first:
            self._chan.write_stderr(b"shellrent: this host has no control channel from the broker yet\r\n")
            self._chan.exit(2)
            return
        self._in.hold("starting")  # asyncssh resumes it right after this returns; data_received pauses again
        self._task = asyncio.get_running_loop().create_task(self._run_exec())

    # renter sessions
    def warn(self, message: str) -> None:
        """A lease warning for a session without a terminal (terminals get it in the container)."""
        if self._pty is None and self._subsystem is None:
            self._chan.write_stderr(f"\n{message}\n".encode())

    def ended(self, message: str) -> None:
        """The lease ends: every session hears it, a terminal too, before its channel closes."""
        try:
            self._chan.write_stderr(f"\r\nshellrent: {message}\r\n".encode())
        except (OSError, asyncssh.Error):
            pass
        if not self._told_end.done():
            self._told_end.set_result(None)

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
            if self._host is None:
                raise SessionError("this host is joining the broker: it serves no sessions yet")
            rec = await self._host.lease(lease, files_only=self._subsystem == "sftp")
            self._host.join(rec["id"], self)
            self._lease = rec["id"]
            env["SHELLRENT_ENDS_AT"] = str(int(rec["ends_at"]))
            if tty:
                env["TERM"] = self._pty[0] or "xterm"
            argv, size = self._argv(rec["shell"]), self._size[:2] if tty and self._size else None
            pacing = self._host.pacing
            self._paced = [pacing.throttle(rec["id"], "in", self._in), pacing.throttle(rec["id"], "out", self._out)]
            chan = PacedChannel(self._chan, self._paced[1])
            self._stream = await self._host.open(rec, chan, argv, env, tty, size, self._in.valve("stdin full"))
        except Exception as exc:  # one line to the renter, whatever it was; never a session left hanging
            if not isinstance(exc, (SessionError, engine.EngineError, OSError, asyncio.TimeoutError)):
                log.exception("session in lease %s failed to start", self._lease)
            self._chan.write_stderr(f"shellrent: {exc or type(exc).__name__}\r\n".encode())
            self._chan.exit(2)
            return
        self._out.attach(self._stream)  # paused at once if asyncssh said so while the session was starting
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
        if getattr(self._stream, "lost", False):  # its container may be going: say why, once hostd knows
            await _within(self._told_end, LOST_WAIT)
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
            self._control.data(data)
            return
        self._in.check()
        if self._paced:
            self._paced[0].spend(len(data))
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
        self._out.hold("channel full")

    def resume_writing(self):
        self._out.release("channel full")

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
            self._control.closed()
            return
        for throttle in self._paced:
            throttle.close()
        if self._lease:
            self._host.leave(self._lease, self)
        if self._stream:
            self._stream.close()
        elif self._task:
            self._task.cancel()
