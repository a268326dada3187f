"""Back-pressure on one channel's reading: paused while any reason holds, resumed only when none does.

asyncssh keeps a single flag per channel, so two reasons to pause (a session still starting, the far
side's buffer full) undo each other: the first resume turns reading back on while the other still
holds, and from then on a renter's stdin piles up in memory. asyncssh also resumes a session channel
by itself right after `session_started()`, whatever the session asked there. A Gate counts reasons by
name, so every resume undoes exactly the pause it matches, and `check()` (called from
`data_received`) puts the pause back when asyncssh lifted it behind the gate's back: at most one
packet is delivered before reading stops again, and the rest waits inside the channel's window.

That window must then hold. asyncssh 2.24.1 (pinned) reopens a channel's whole window whenever it
delivers one packet with less than half the window left, without counting the packets it still
buffers for a paused reader: every resume that delivers one packet and pauses again granted the peer
another full window, and a renter's stdin into a terminal whose reader drains slowly grew hostd by
37 MB/s (12,406 packets, 194 MiB, held in one channel's receive buffer). `mend_windows()` makes the
window it grants count what it still holds, so a channel never holds more than its window.
"""
import asyncssh.channel
from asyncssh.packet import UInt32


class Gate:
    """Named holds on `reader.pause_reading()`; `valve(why)` gives a pause/resume pair for one of them."""

    def __init__(self, reader=None):
        self.reader = reader  # anything with pause_reading() and resume_reading(); may come later
        self._why: set[str] = set()

    @property
    def held(self) -> bool:
        return bool(self._why)

    def hold(self, why: str) -> None:
        self._why.add(why)
        if self.reader is not None:
            self.reader.pause_reading()

    def release(self, why: str) -> None:
        if why not in self._why:
            return  # a resume with no pause of its own undoes nothing
        self._why.discard(why)
        if not self._why and self.reader is not None:
            self.reader.resume_reading()

    def attach(self, reader) -> None:
        """The reader exists now: it takes the holds made before it."""
        self.reader = reader
        if self._why:
            reader.pause_reading()

    def check(self) -> None:
        """Data arrived: if a hold stands, asyncssh resumed on its own; pause again."""
        if self._why and self.reader is not None:
            self.reader.pause_reading()

    def valve(self, why: str) -> "Valve":
        return Valve(self, why)


class Valve:
    """One reason of a Gate, with the pause_reading/resume_reading face a transport's protocol calls."""

    def __init__(self, gate: Gate, why: str):
        self._gate, self._why = gate, why

    def pause_reading(self) -> None:
        self._gate.hold(self._why)

    def resume_reading(self) -> None:
        self._gate.release(self._why)


def _deliver_data(self, data, datatype) -> None:
    """asyncssh's SSHChannel._deliver_data, granting window only for what is really consumed.
    The buffer is summed only when the window is low (held >= the window), as rarely as asyncssh adjusts."""
    half = self._init_recv_window / 2
    if self._recv_window < half:
        held = self._recv_window + sum(len(chunk) for chunk, _ in self._recv_buf)
        if held < half:
            adjust = self._init_recv_window - held
            self.send_packet(asyncssh.channel.MSG_CHANNEL_WINDOW_ADJUST, UInt32(adjust))
            self._recv_window += adjust
    if self._encoding:
        try:
            data = self._decoder.decode(data)
        except UnicodeDecodeError as exc:
            raise asyncssh.ProtocolError(str(exc)) from None
    if self._session is not None:
        self._session.data_received(data, datatype)


def mend_windows() -> None:
    """Install _deliver_data in asyncssh's channels (both daemons call it before serving)."""
    asyncssh.channel.SSHChannel._deliver_data = _deliver_data
