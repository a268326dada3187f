"""hostd's side of the session helper, in-process against a stand-in helper on a real abstract socket
(in this process's own network namespace; needs root, as hostd does): what crosses to the helper,
and that a start given up at any moment leaves no fd behind."""
import array
import asyncio
import os
import secrets
import socket
import stat

from shellrent.hostd import spawn


class Chan:
    def __init__(self):
        self.out = []

    def write(self, data, datatype=None):
        self.out.append(data)

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass


def _listen():
    name = "shellrent-test-" + secrets.token_hex(8)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.setblocking(False)
    return name, sock


def _receive(sock) -> tuple[bytes, list[int]]:
    msg, anc, _, _ = sock.recvmsg(1 << 18, socket.CMSG_SPACE(64))
    return msg, [fd for _, _, data in anc for fd in array.array("i", data)]


async def _start(name: str, sock, tty: bool) -> tuple[asyncio.Task, list[int]]:
    """A session starting, and what the stand-in helper received for it."""
    task = asyncio.get_running_loop().create_task(
        spawn.HelperSession(Chan(), tty).start(os.getpid(), name, ["true"], {}, None))
    while True:
        try:
            return task, _receive(sock)[1]
        except BlockingIOError:
            await asyncio.sleep(0.01)


def _fds() -> set[str]:
    return {f for f in os.listdir("/proc/self/fd")}


async def test_the_helper_gets_only_pipes_and_a_silent_one_costs_nothing(monkeypatch):
    monkeypatch.setattr(spawn, "HELPER_WAIT", 0.3)
    name, sock = _listen()
    before = _fds() | {str(sock.fileno())}
    for tty in (False, True):
        try:
            await spawn.HelperSession(Chan(), tty).start(os.getpid(), name, ["true"], {}, (80, 24))
            raise AssertionError("a silent helper started a session")
        except asyncio.TimeoutError:
            pass
        msg, fds = _receive(sock)
        assert len(fds) == (4 if tty else 5) and all(stat.S_ISFIFO(os.fstat(fd).st_mode) for fd in fds)
        assert b'"argv": ["true"]' in msg
        for fd in fds:
            os.close(fd)
    await asyncio.sleep(0.05)
    assert _fds() <= before
    sock.close()


async def test_a_start_given_up_at_any_moment_leaves_no_fd():
    name, sock = _listen()
    before = _fds() | {str(sock.fileno())}
    for delay in [0, 0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02] * 3:
        task = asyncio.get_running_loop().create_task(
            spawn.HelperSession(Chan(), False).start(os.getpid(), name, ["true"], {}, None))
        await asyncio.sleep(delay)
        task.cancel()
        try:
            await task
        except (asyncio.CancelledError, asyncio.TimeoutError):
            pass
        with open("/etc/hostname", "rb"):  # opened where a freed number could be reused
            await asyncio.sleep(0.02)
        while True:
            try:
                _, fds = _receive(sock)
            except BlockingIOError:
                break
            assert all(stat.S_ISFIFO(os.fstat(fd).st_mode) for fd in fds)  # never a reused number's file
            for fd in fds:
                os.close(fd)
    await asyncio.sleep(0.2)  # the sending threads finish and close their copies
    assert _fds() <= before
    sock.close()


async def test_answers_are_checked():
    name, sock = _listen()
    for answer, ok in [(b'{"pid": 7}\n{"exit": 3}\n', 3), (b'{"pid": 7}\n{"signal": 15}\n', 143),
                       (b'{"pid": 7}\n{"exit": 999}\n', 255), (b"[" * 4000 + b'\n{"pid": 7}\n{"exit": 0}\n', 0)]:
        task, fds = await _start(name, sock, tty=False)
        os.write(fds[3], answer)
        for fd in fds:
            os.close(fd)
        session = await task
        await asyncio.wait_for(session.done, 5)
        assert session.status == ok
        session.close()
    sock.close()


async def test_a_helper_that_hangs_up_fails_the_start_at_once():
    name, sock = _listen()
    for tty in (False, True):
        task, fds = await _start(name, sock, tty)
        os.write(fds[-2], b"\xff" * 100 + b"\n")  # garbage, then every pipe closed
        for fd in fds:
            os.close(fd)
        try:
            await asyncio.wait_for(task, spawn.HELPER_WAIT / 2)
            raise AssertionError("a session started without the helper")
        except spawn.HelperError as exc:
            assert "hung up" in str(exc)
    sock.close()
