"""Relay a renter's SSH channel to a channel on the host's tunnel connection.

Only what a renter may ask for is relayed: a pty, a shell, exec, the allow-listed env, the sftp
subsystem, window changes, signals, break, and (RenterTcp) direct-tcpip to the container's
localhost. Anything else is refused here with a one-line reason, whatever hostd would say.

Each side's flow control drives the other's reading: when one channel's send window fills,
asyncssh calls pause_writing and we stop reading the other. Data is handed straight across,
never queued here, except a session's stdin that comes before the host's channel is open (at most
a packet: reading is held from `session_started` on, through a Gate of shellrent.common.flow, so a
resume for one reason never undoes a pause for another). Exit status and exit signal are held until
the host closes its channel, and so is the host's EOF: the renter's client sees the exit status first and then the close (with the
output before both). A client that closes as soon as both sides sent EOF (PuTTY's plink) would
otherwise lose the status that came after the EOF.
"""
import asyncio
import logging
from typing import Awaitable, Callable

import asyncssh

from shellrent.common import protocol
from shellrent.common.flow import Gate

from .errors import BrokerError, NotFound
from .metrics import TO_HOST, TO_RENTER
from .picker import LineReader
from .route import Route

log = logging.getLogger("shellrent.relay")

SUBSYSTEMS = ("sftp",)

Opener = Callable[[bool], Awaitable[Route]]  # files only? -> the route to the lease (broker.route)
Picker = Callable[..., Awaitable[object]]
WINDOW = 8 * 1024 * 1024
# Both tunnel ends are ours, so the packet size there is our choice: 64 KiB measured best. Against
# 256 KiB, a 1 GiB download went from 195 to 439 MiB/s and hostd's CPU for it from 4.9 to 0.8 s
# (asyncssh copies each packet several times; at 64 KiB those copies stay in cache); 32 KiB: 397.
TUNNEL_PKTSIZE = 64 * 1024


class _Upstream(asyncssh.SSHClientSession):
    """Host side of a relayed session: passes everything back to the renter's channel."""

    def __init__(self, down: "RenterSession"):
        self._down = down
        self._status: int | None = None
        self._signal: tuple | None = None
        self._eof = False

    def data_received(self, data, datatype):
        self._down.out.check()
        TO_RENTER.inc(len(data))
        self._down.chan.write(data, datatype)

    def eof_received(self):
        self._eof = True  # passed on at the close, after the exit status
        return True

    def exit_status_received(self, status):
        self._status = status

    def exit_signal_received(self, signal, core_dumped, msg, lang):
        self._signal = (signal, core_dumped, msg, lang)

    def pause_writing(self):
        self._down.inp.hold("host full")

    def resume_writing(self):
        self._down.inp.release("host full")

    def connection_lost(self, exc):
        chan = self._down.chan
        try:
            if self._signal:
                chan.exit_with_signal(*self._signal)
            elif self._status is not None:
                chan.exit(self._status)
            else:
                if self._eof:
                    chan.write_eof()
                chan.close()
        except (OSError, asyncssh.Error):
            chan.close()
        self._down.upstream_closed()


# What an interactive `ssh rent@` runs for a renter with `config tmux on` (a plain login shell when the
# image has no tmux). hostd runs it as SHELL -c ..., so $0 is that shell. tmux covers the banner, so
# its status line carries the lease and its time left, from the /etc/shellrent/lease hostd keeps.
TMUX = ('command -v tmux >/dev/null 2>&1 && exec tmux new-session -A -s main \\; set-option status-interval 15 \\; '
        'set-option status-right-length 60 \\; set-option status-right '
        '"#(. /etc/shellrent/lease; echo lease \\$SHELLRENT_LEASE_ID: \\$SHELLRENT_REMAINING left)"; exec "$0" -l')


class RenterSession(asyncssh.SSHServerSession):
    """Renter side of a session channel; opens the host side once the request is known."""

    def __init__(self, opener: Opener, on_close: Callable[["RenterSession"], None], picker: Picker | None = None,
                 on_open: Callable[[str, "RenterSession"], None] | None = None, banner=None):
        self._opener = opener
        self._banner = banner  # async (lease id, renter's env) -> (banner text, tmux on) for a shell
        self._on_open = on_open
        self._refused: str | None = None
        self._on_close = on_close
        self._picker = picker
        self._reader: LineReader | None = None
        self.chan: asyncssh.SSHServerChannel | None = None
        self._up: asyncssh.SSHClientChannel | None = None
        self._req: dict = {}
        self._pty: dict = {}
        self._size: tuple | None = None
        self._task: asyncio.Task | None = None
        self._early: list[bytes] = []  # stdin that came before the host side was open (a packet or so)
        self._early_eof = False
        self.inp = Gate()  # reading the renter's channel
        self.out = Gate()  # reading the host's channel

    def connection_made(self, chan):
        self.chan = chan
        self.inp.attach(chan)

    def pty_requested(self, term_type, term_size, term_modes):
        self._pty = {"term_type": term_type, "term_size": term_size, "term_modes": term_modes}
        return True

    def shell_requested(self):
        return True

    def exec_requested(self, command):
        self._req = {"command": command}
        return True

    def subsystem_requested(self, subsystem):
        if subsystem not in SUBSYSTEMS:
            # Accepted only to say why on stderr; nothing reaches the host.
            self._refused = f"subsystem {protocol.printable(subsystem)[:64]!r} is not available (only sftp is)"
            log.warning("refused subsystem %r", protocol.printable(subsystem)[:64])
            return True
        self._req = {"subsystem": subsystem}
        return True

    def session_started(self):
        if self._refused:
            self._fail(self._refused)
            return
        self.inp.hold("starting")  # asyncssh resumes it right after this returns; data_received pauses again
        self._task = asyncio.get_running_loop().create_task(self._open())

    async def _open(self):
        try:
            try:
                route = await self._opener(self._req.get("subsystem") == "sftp")
            except NotFound:
                if not (self._pty and self._picker and not self._req):
                    raise
                route = await self._pick()
            lease = route.lease
            env = protocol.filter_env(self.chan.get_environment())
            if self._pty and not self._req and self._banner:  # a person's shell: say where they are
                text, tmux = await self._banner(lease, {**self.chan.get_environment(), "TERM": self._pty["term_type"]})
                self.chan.write(text.encode())
                if tmux:  # the renter's `config tmux on`: the shell is the lease's tmux session
                    self._req = {"command": TMUX}
            env[protocol.LEASE_ENV] = lease
            self._up, _ = await route.open_session(
                lambda: _Upstream(self), **self._req, **self._pty, env=env, encoding=None,
                window=WINDOW, max_pktsize=TUNNEL_PKTSIZE)
            self.out.attach(self._up)
        except BrokerError as exc:
            self._fail(str(exc))
            return
        except (OSError, asyncssh.Error) as exc:
            log.warning("opening session on host failed: %s", exc)
            self._fail(f"could not reach the container: {getattr(exc, 'reason', exc)}")
            return
        if self._on_open and (getattr(route, "record", None) or {}).get("state", "active") == "active":
            self._on_open(lease, self)  # a lease's end closes it (an ended lease's files session stays)
        if self._size:
            self._up.change_terminal_size(*self._size)
        for data in self._early:
            self._up.write(data)
        if self._early_eof:
            self._up.write_eof()
        self._early = []
        self.inp.release("starting")

    async def _pick(self):
        """No lease, and a person at a terminal: let them rent one, then carry on into the shell."""
        self._reader = LineReader(self.chan.write)
        self.inp.release("starting")
        try:
            await self._picker(self.chan.write, self._reader.readline)
        finally:
            self._reader = None
            self.inp.hold("starting")
        return await self._opener(False)

    def _fail(self, message: str):
        message = protocol.printable(message).replace("\n", " ")
        self.chan.write_stderr(f"shellrent: {message}\r\n".encode() if self._pty else
                               f"shellrent: {message}\n".encode())
        self.chan.exit(2)

    def end(self, message: str) -> None:
        """The lease is over: say so and close the channel (the host's side closes with it)."""
        try:
            self.chan.write_stderr(f"\r\nshellrent: {message}\r\n".encode())
        except (OSError, asyncssh.Error):
            pass
        if self._up:
            self._up.close()  # _Upstream.connection_lost closes the renter's channel
        else:
            self.chan.close()

    def data_received(self, data, datatype):
        self.inp.check()
        TO_HOST.inc(len(data))
        if self._up:
            self._up.write(data)
        elif self._reader:
            self._reader.feed(data)
        else:
            self._early.append(data)

    def eof_received(self):
        if self._up:
            self._up.write_eof()
        else:
            self._early_eof = True
        return True

    def pause_writing(self):
        self.out.hold("renter full")

    def resume_writing(self):
        self.out.release("renter full")

    def terminal_size_changed(self, width, height, pixwidth, pixheight):
        if self._up:
            self._up.change_terminal_size(width, height, pixwidth, pixheight)
        else:
            self._size = (width, height, pixwidth, pixheight)

    def signal_received(self, signal):
        if self._up and signal in protocol.SIGNALS:
            self._up.send_signal(signal)

    def break_received(self, msec):
        if self._up:
            self._up.send_break(msec)
        return True

    def connection_lost(self, exc):
        if self._up:
            # abort, not close: the renter is gone, so stdin still buffered here has nowhere to go,
            # and a close would wait (for ever, if hostd's side is paused) to deliver it first
            self._up.abort()
        elif self._task:
            self._task.cancel()
        self._on_close(self)

    def upstream_closed(self):
        self._up = None


class _TcpUpstream(asyncssh.SSHTCPSession):
    """Host side of a relayed port forward."""

    def __init__(self, down: "RenterTcp"):
        self._down = down

    def connection_made(self, chan):
        self._down.out.attach(chan)
        self._down.out.hold("starting")  # until the renter's channel exists; RenterTcp releases it

    def data_received(self, data, datatype):
        self._down.out.check()
        TO_RENTER.inc(len(data))
        self._down.chan.write(data)

    def eof_received(self):
        self._down.chan.write_eof()
        return True

    def pause_writing(self):
        self._down.inp.hold("host full")

    def resume_writing(self):
        self._down.inp.release("host full")

    def connection_lost(self, exc):
        self._down.chan.close()


class RenterTcp(asyncssh.SSHTCPSession):
    """Renter side of a direct-tcpip channel (ssh -L / -D), relayed to the container."""

    def __init__(self, up: asyncssh.SSHTCPChannel | None = None):
        self.chan = None
        self.up = up
        self.on_close: Callable[["RenterTcp"], None] | None = None
        self.inp = Gate()  # reading the renter's channel
        self.out = Gate()  # reading the host's channel

    def end(self, message: str) -> None:
        """The lease is over: close both sides."""
        self.up.close()
        if self.chan:
            self.chan.close()

    def connection_made(self, chan):
        self.chan = chan
        self.inp.attach(chan)
        self.out.release("starting")

    def data_received(self, data, datatype):
        self.inp.check()
        TO_HOST.inc(len(data))
        self.up.write(data)

    def eof_received(self):
        self.up.write_eof()
        return True

    def pause_writing(self):
        self.out.hold("renter full")

    def resume_writing(self):
        self.out.release("renter full")

    def connection_lost(self, exc):
        self.up.abort()  # as RenterSession: nothing buffered for a departed renter is delivered
        if self.on_close:
            self.on_close(self)


async def open_tcp(route, dest_host: str, port: int, orig: tuple[str, int]) -> RenterTcp:
    """Open the host side of a forward first (broker.route), so a refused port is refused to the renter."""
    down = RenterTcp()
    up, _ = await route.open_forward(lambda: _TcpUpstream(down), dest_host, port, orig,
                                     encoding=None, window=WINDOW, max_pktsize=TUNNEL_PKTSIZE)
    down.up = up
    return down
