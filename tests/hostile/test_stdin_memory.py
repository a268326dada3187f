"""A renter's stdin that nobody reads: back-pressure holds from the first byte to the last, at both ends.

1 GiB of stdin into a session that does not read moves neither daemon's RSS by more than 64 MB: through
the session helper and through `docker exec`, with and without a terminal, and while the host is slow to
open its channel (a FakeHost on the real tunnel protocol that takes 5 s and then never reads)."""
import asyncio
import json
import shlex
import socket
import subprocess
import threading
import time

import asyncssh
import pytest

from ..cluster import rss_mb, wait_for
from .fakehost import FakeHost, _HostChannel, _HostServer

pytestmark = [pytest.mark.docker, pytest.mark.hostile]

GIB = 1 << 30
BOUND_MB = 64


class _Peak:
    """The highest RSS of each process, sampled every 50 ms while the block runs."""

    def __init__(self, pids: dict[str, int]):
        self.pids = pids
        self.base = {k: rss_mb(p) for k, p in pids.items()}
        self.peak = dict(self.base)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(0.05):
            for k, p in self.pids.items():
                self.peak[k] = max(self.peak[k], rss_mb(p))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def growth(self) -> dict[str, float]:
        return {k: round(self.peak[k] - self.base[k], 1) for k in self.pids}


def _flood(c, lease: str, tty: bool, seconds: int) -> subprocess.CompletedProcess:
    """head -c 1G /dev/zero | ssh [-tt] rent+LEASE@ 'sleep N'"""
    ssh = c.ssh_cmd(f"rent+{lease}", "-tt" if tty else "-T") + [f"sleep {seconds}"]
    return subprocess.run(["bash", "-c", f"head -c {GIB} /dev/zero | {shlex.join(ssh)}"], capture_output=True,
                          timeout=seconds + 60)


def _via(c, lease: str) -> list[str]:
    return [line.rsplit(" via ", 1)[1].split(" ")[0] for line in c.log("hostd-pc1").splitlines()
            if f"lease {lease}: session via" in line]


@pytest.fixture(scope="module")
def flood_cluster(cluster):
    """The module's lease, and a second one whose image has no usable python3 (sessions via docker exec)."""
    c = cluster
    c.exec_lease = c.create_lease()
    r = c.ssh("mv /usr/bin/python3 /usr/bin/py3-hidden", user=f"rent+{c.exec_lease}")
    assert r.returncode == 0, r.stderr
    c.ssh("pkill -KILL -f 'shellrent/helpe[r].py'", user=f"rent+{c.exec_lease}")  # ends this session too
    wait_for(lambda: c.ssh("true", user=f"rent+{c.lease}").returncode == 0 and "helper" in _via(c, c.lease)[-1:],
             what="the helper to serve the first lease")
    return c


@pytest.mark.parametrize("path", ["helper", "docker"])
@pytest.mark.parametrize("tty", [False, True], ids=["no-tty", "tty"])
def test_unread_stdin_moves_neither_daemon(flood_cluster, path, tty):
    c = flood_cluster
    lease = c.lease if path == "helper" else c.exec_lease
    before = len(_via(c, lease))
    with _Peak({"broker": c.procs["broker"].pid, "hostd": c.procs["hostd-pc1"].pid}) as peak:
        r = _flood(c, lease, tty, 8)
    assert r.returncode == 0, r.stderr
    assert _via(c, lease)[before:] == [path], _via(c, lease)[before:]
    assert max(peak.growth().values()) < BOUND_MB, peak.growth()
    assert c.ssh("echo alive", user=f"rent+{lease}").stdout == b"alive\n"  # and the lease still serves


class _SlowChannel(_HostChannel):
    """A host's session that never reads its stdin (it re-pauses whenever asyncssh resumes it)."""

    def session_started(self):
        self.chan.pause_reading()
        self.host.channels.append(self.record)

    def data_received(self, data, datatype):
        self.host.unread += len(data)
        self.chan.pause_reading()


class _SlowServer(_HostServer):
    def session_requested(self):
        self.opened += 1
        if self.opened == 1:
            return _HostChannel(self.host, True)
        return self._later()

    async def _later(self):
        await asyncio.sleep(5)  # slow to open the channel
        return _SlowChannel(self.host, False)


async def test_a_slow_host_that_never_reads_does_not_grow_the_broker(fresh_cluster):
    c = fresh_cluster
    c.broker("renter", "credit", "alice", "10")
    token = c.broker("host", "invite", "slow").stdout.decode().splitlines()[-1]
    host = FakeHost(token)
    host.unread = 0
    host.conn = await asyncssh.connect_reverse(
        "127.0.0.1", c.tunnel_port, server_factory=lambda: _SlowServer(host), server_host_keys=[host.key],
        encoding=None)
    await asyncio.wait_for(host.welcomed.wait(), 30)
    try:
        r = await asyncio.to_thread(c.ssh, "rent", "host_id=slow", "--hours", "1", "--yes", "--json", user="ctl")
        assert r.returncode == 0, r.stderr
        lease = json.loads(r.stdout)["id"]
        pid = c.procs["broker"].pid
        with _Peak({"broker": pid}) as peak:
            ssh = c.ssh_cmd(f"rent+{lease}", "-T") + ["sleep 12"]
            proc = await asyncio.create_subprocess_exec(
                "bash", "-c", f"head -c {GIB} /dev/zero | {shlex.join(ssh)}", stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL)
            await asyncio.sleep(12)
            proc.kill()
            await proc.wait()
        assert host.channels, "the session never reached the host"
        assert peak.growth()["broker"] < BOUND_MB, peak.growth()
        assert host.unread < BOUND_MB << 20
        await asyncio.sleep(2)  # and nothing of it stays once the renter is gone
        assert rss_mb(pid) < peak.base["broker"] + BOUND_MB
    finally:
        host.close()


# A listener in the container that accepts and then never reads.
DEAF = ("nohup python3 -c 'import socket,time; s=socket.socket(); s.bind((\"127.0.0.1\",9998)); s.listen(); "
        "c=s.accept(); time.sleep(3600)' >/dev/null 2>&1 &")


def test_a_forward_into_a_listener_that_never_reads_moves_neither_daemon(flood_cluster):
    c = flood_cluster
    assert c.ssh(DEAF, user=f"rent+{c.lease}").returncode == 0
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        local = probe.getsockname()[1]
    fwd = subprocess.Popen(c.ssh_cmd(f"rent+{c.lease}", "-N", "-L", f"{local}:localhost:9998"),
                           stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        sock = wait_for(lambda: _connect(local), what="the forward to listen")
        with _Peak({"broker": c.procs["broker"].pid, "hostd": c.procs["hostd-pc1"].pid}) as peak:
            sock.settimeout(0.5)
            sent, deadline, chunk = 0, time.monotonic() + 8, b"\0" * (1 << 20)
            while time.monotonic() < deadline and sent < GIB:
                try:
                    sent += sock.send(chunk)
                except TimeoutError:
                    pass
        sock.close()
        assert sent < 256 << 20, sent  # the forward took only what windows and buffers hold
        assert max(peak.growth().values()) < BOUND_MB, peak.growth()
    finally:
        fwd.kill()
        fwd.wait()


def _connect(port: int):
    try:
        return socket.create_connection(("127.0.0.1", port), timeout=1)
    except OSError:
        return None
