"""Line input on a raw terminal channel, the interactive rent picker, and the ctl session.

`ssh rent@broker` with no lease and a terminal lands here: offers, a choice, hours, the price to
confirm, start-up progress, then the shell. `ssh ctl@broker CMD` runs one marketplace command.
"""
import asyncio
import time

import asyncssh

from shellrent.common import protocol

from . import render
from .commands import Commands
from .errors import BrokerError
from .progress import StartProgress
from .leases import credits, format_duration, hold_for, parse_duration
from .renting import DEFAULT_IMAGE, check_length
from .service import Broker


class Aborted(BrokerError):
    """The person pressed Ctrl-C or Ctrl-D at a prompt."""


class LineReader:
    """Collects keystrokes into lines, echoing them, with backspace, Ctrl-C and Ctrl-D."""

    def __init__(self, write):
        self._write = write
        self._buf = bytearray()
        self._waiter: asyncio.Future | None = None

    def feed(self, data: bytes) -> None:
        for byte in data:
            if self._waiter is None or self._waiter.done():
                return
            if byte in (13, 10):
                self._write(b"\r\n")
                self._waiter.set_result(self._buf.decode(errors="replace"))
                self._buf = bytearray()
            elif byte in (127, 8):
                if self._buf:
                    self._buf.pop()
                    self._write(b"\b \b")
            elif byte in (3, 4):
                self._write(b"^C\r\n" if byte == 3 else b"\r\n")
                self._waiter.set_exception(Aborted("cancelled"))
            elif byte >= 32 and len(self._buf) < 200:
                self._buf.append(byte)
                self._write(bytes([byte]))

    async def readline(self, prompt: str) -> str:
        self._write(prompt.encode())
        self._waiter = asyncio.get_running_loop().create_future()
        return await self._waiter


def _crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode()


async def _ask(write, readline, prompt: str, default: str, parse):
    """Ask until the answer parses (a bad one is told why, and asked again)."""
    while True:
        try:
            return parse((await readline(prompt)).strip() or default)
        except Aborted:
            raise
        except BrokerError as exc:
            write(_crlf(f"{exc}\n"))


def _count(text: str, most: int) -> int:
    if not (text.isascii() and text.isdigit() and len(text) < 4) or not 1 <= int(text) <= most:
        raise BrokerError(f"please type a number from 1 to {most}")
    return int(text)


def _hours(broker: Broker, text: str) -> float:
    seconds = parse_duration(text)
    check_length(broker.config, seconds)
    return seconds


async def pick_and_rent(broker: Broker, renter: str, write, readline, where) -> str:
    """Interactive rent: returns the new lease's id."""
    offers = (await broker.offers(""))[:15]
    if not offers:
        raise BrokerError("no GPUs are on offer right now; try again later")
    rows = [{"n": i + 1, **o, "dph": f"{o['dph']:.2f}"} for i, o in enumerate(offers)]
    write(_crlf("You have no active lease. GPUs on offer now:\n\n" + render.table(
        rows, ["n", "gpu_name", "num_gpus", "gpu_ram", "cpu_cores", "cpu_ram", "dph", "host_id"],
        ["#", "gpu", "free", "gpu_gb", "cpus", "ram_gb", "$/h (all)", "host"]) + "\n"))
    while True:
        choice = (await readline(f"Offer [1-{len(offers)}, q to quit]: ")).strip()
        if choice.lower() in ("q", "quit"):
            raise Aborted("nothing rented")
        if choice.isascii() and choice.isdigit() and len(choice) < 4 and 1 <= int(choice) <= len(offers):
            offer = offers[int(choice) - 1]
            break
        write(b"Please type a number from the list.\r\n")
    gpus = 1
    if offer["num_gpus"] > 1:
        gpus = await _ask(write, readline, f"GPUs [1-{offer['num_gpus']}, default 1]: ", "1",
                          lambda text: _count(text, offer["num_gpus"]))
    seconds = await _ask(write, readline, "Hours (e.g. 2, 90m) [1]: ", "1", lambda text: _hours(broker, text))
    cost = hold_for(offer["price"], gpus, seconds)
    answer = await readline(f"Rent {gpus}x {offer['gpu_name']} on {offer['host_id']} for {format_duration(seconds)}: "
                            f"{credits(cost)} credits held, unused time refunded. OK? [y/N] ")
    if answer.strip().lower() not in ("y", "yes"):
        raise Aborted("nothing rented")
    started = time.monotonic()
    lease = await broker.rent(renter, f"host_id={offer['host_id']} gpu_name={offer['gpu_name'].replace(' ', '_')}",
                              seconds, gpus, DEFAULT_IMAGE, progress=StartProgress(write, terminal=True))
    write(_crlf(f"lease {lease['id']} ready in {time.monotonic() - started:.1f}s; "
                f"next time: {where.ssh('rent+' + lease['id'])}\n\n"))
    return lease["id"]


class CtlSession(asyncssh.SSHServerSession):
    """One `ssh ctl@broker COMMAND`."""

    def __init__(self, commands: Commands, stdin: bool = True):
        self._commands = commands
        self._takes_stdin = stdin  # `keys add` reads a key from stdin; a signup session reads nothing
        self._chan = None
        self._line = "help"
        self._pty = False
        self._stdin = bytearray()
        self._collect = False
        self._reader: LineReader | None = None
        self._task = None

    def connection_made(self, chan):
        self._chan = chan

    def pty_requested(self, term_type, term_size, term_modes):
        self._pty = True
        return True

    def shell_requested(self):
        return True

    def exec_requested(self, command):
        self._line = command
        return True

    def session_started(self):
        self._collect = self._takes_stdin and self._line.split()[:2] == ["keys", "add"]
        if self._pty:
            self._reader = LineReader(self._chan.write)
        if not self._collect:
            self._start()

    def _start(self):
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self):
        ask = self._reader.readline if self._reader else None
        # on a terminal, with the output; otherwise on stderr, apart from the output scripts read
        progress = StartProgress(self._chan.write if self._pty else self._chan.write_stderr, terminal=self._pty,
                                 backlog=self._chan.get_write_buffer_size)
        try:
            code, out = await self._commands.run(self._line, bytes(self._stdin), ask, progress)
        except Exception as exc:  # never leave the renter hanging
            code, out = 1, f"ctl: internal error: {exc}\n"
        if code == 0:
            self._chan.write(self._text(out))
        else:
            self._chan.write_stderr(self._text(out))
        self._chan.exit(code)

    def _text(self, text: str) -> bytes:
        text = protocol.printable(text)  # hosts' and renters' words never steer a terminal
        return _crlf(text) if self._pty else text.encode()

    def data_received(self, data, datatype):
        if self._collect:
            if len(self._stdin) < 64 * 1024:
                self._stdin += data
        elif self._reader:
            self._reader.feed(data)

    def eof_received(self):
        if self._collect:
            self._collect = False
            self._start()
        return True

    def connection_lost(self, exc):
        if self._task:
            self._task.cancel()
