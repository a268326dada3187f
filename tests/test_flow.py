"""Back-pressure parts (shellrent.common.flow): a Gate's holds undo only their own pause, and a channel
whose reader resumes and pauses again never holds more than its window (real asyncssh on port 0)."""
import asyncio

import asyncssh

from shellrent.common import flow

WINDOW = 64 * 1024


class Reader:
    def __init__(self):
        self.calls = []

    def pause_reading(self):
        self.calls.append("pause")

    def resume_reading(self):
        self.calls.append("resume")


def test_a_resume_undoes_only_its_own_pause():
    r = Reader()
    gate = flow.Gate(r)
    gate.hold("starting")
    gate.valve("full").pause_reading()
    gate.release("starting")
    assert r.calls == ["pause", "pause"] and gate.held  # still full: reading stays paused
    gate.valve("full").resume_reading()
    assert r.calls[-1] == "resume" and not gate.held
    gate.release("never held")
    gate.valve("full").resume_reading()
    assert r.calls.count("resume") == 1  # a resume without its pause does nothing


def test_holds_made_before_the_reader_exists_apply_when_it_does():
    gate = flow.Gate()
    gate.hold("starting")
    r = Reader()
    gate.attach(r)
    assert r.calls == ["pause"]
    gate.check()  # data came while held: asyncssh resumed behind the gate's back
    assert r.calls == ["pause", "pause"]
    gate.release("starting")
    gate.check()
    assert r.calls == ["pause", "pause", "resume"]


class _Trickle(asyncssh.SSHServerSession):
    """Takes one packet per resume and pauses again, like a reader whose pipe drains slowly."""

    def __init__(self, seen: list):
        self.chan, self.seen = None, seen

    def connection_made(self, chan):
        self.chan = chan

    def shell_requested(self):
        return True

    def data_received(self, data, datatype):
        self.seen.append(sum(len(d) for d, _ in self.chan._recv_buf) + len(data))
        self.chan.pause_reading()
        asyncio.get_running_loop().call_later(0.001, self.chan.resume_reading)


class _Server(asyncssh.SSHServer):
    def __init__(self, seen):
        self.seen = seen

    def begin_auth(self, username):
        return False

    def session_requested(self):
        return self.chan_factory()

    def chan_factory(self):
        return _Trickle(self.seen)


async def test_a_channel_never_holds_more_than_its_window():
    flow.mend_windows()
    seen: list[int] = []
    key = asyncssh.generate_private_key("ssh-ed25519")
    server = await asyncssh.create_server(lambda: _Server(seen), "127.0.0.1", 0, server_host_keys=[key],
                                          window=WINDOW, max_pktsize=4096)
    port = server.sockets[0].getsockname()[1]
    try:
        async with asyncssh.connect("127.0.0.1", port, known_hosts=None, username="x") as conn:
            chan, _ = await conn.create_session(asyncssh.SSHClientSession, encoding=None)
            for _ in range(256):
                chan.write(b"\0" * 4096)
            await asyncio.sleep(1.5)
            chan.close()
    finally:
        server.close()
    assert len(seen) > 100
    assert max(seen) <= WINDOW, max(seen)  # unmended: several times the window, and growing
