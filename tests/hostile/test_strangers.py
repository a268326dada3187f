"""Strangers: unauthenticated connections are bounded in total and per address, idle ones are cut
after the login grace time on both ports, a flood leaves the broker's memory where it was, and one
connection cannot try keys without end. Real broker; raw sockets and OpenSSH/asyncssh clients."""
import asyncio
import socket
import subprocess
import time

import asyncssh
import pytest

from ..cluster import Cluster, rss_mb, wait_for

pytestmark = [pytest.mark.docker, pytest.mark.hostile]


def _open(port: int, source: str = "127.0.0.1") -> socket.socket:
    s = socket.socket()
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    s.settimeout(0.2)
    return s


def _dropped(s: socket.socket) -> bool:
    """True once the server has closed this connection (it may have sent its banner first)."""
    try:
        while data := s.recv(4096):
            if not data.startswith(b"SSH-"):
                break
        return True
    except socket.timeout:
        return False
    except OSError:
        return True


@pytest.fixture
def broker(tmp_path):
    c = Cluster(tmp_path / "c", env={"BROKER_MAX_STARTUPS": "40", "BROKER_MAX_STARTUPS_PER_IP": "5",
                                     "BROKER_LOGIN_TIMEOUT": "3", "BROKER_AUTH_FAIL_LIMIT": "1000"})
    try:
        c.start_broker()
        yield c
    finally:
        c.close()


def _banner(s: socket.socket) -> bool:
    """True once the server has sent its version line on this connection."""
    timeout = s.gettimeout()
    s.setblocking(False)
    try:
        return s.recv(4096, socket.MSG_PEEK).startswith(b"SSH-")
    except OSError:
        return False
    finally:
        s.settimeout(timeout)


def test_unauthenticated_connections_are_bounded_per_address_and_in_total(broker):
    c = broker
    # One address past its bound: the rest wait for a slot, banner held back, none dropped.
    flood = [_open(c.ssh_port) for _ in range(20)]
    wait_for(lambda: sum(_banner(s) for s in flood) == 5, timeout=10, what="one address's 5 slots")
    time.sleep(0.5)
    assert sum(_banner(s) for s in flood) == 5
    for s in flood:
        s.close()
    wait_for(lambda: c.ssh("offers", user="ctl").returncode == 0, what="logins to work again")
    # Many addresses: the total bound holds, and a newcomer still gets in (a connection that has
    # sent nothing for a while makes room).
    many = [_open(c.ssh_port, f"127.0.1.{i // 4 + 1}") for i in range(60)]
    wait_for(lambda: sum(_banner(s) for s in many) >= 40, timeout=10, what="the total bound")
    assert sum(_banner(s) and not _dropped(s) for s in many) <= 40
    time.sleep(1.2)  # they have been quiet for a while
    assert c.ssh("offers", user="ctl").returncode == 0
    # The tunnel port has the same bounds.
    hosts = [_open(c.tunnel_port, "127.0.4.1") for _ in range(20)]
    wait_for(lambda: sum(_dropped(s) for s in hosts) >= 15, timeout=10, what="the tunnel port's bound")
    for s in hosts:
        s.close()
    # The login grace time: idle connections are cut on both ports.
    for port in (c.ssh_port, c.tunnel_port):
        idle = [_open(port, "127.0.2.1")]
        started = time.monotonic()
        wait_for(lambda: _dropped(idle[0]), timeout=15, what=f"port {port} to drop an idle connection")
        assert time.monotonic() - started < 10
        idle[0].close()
    for s in many:
        s.close()


def test_a_flood_leaves_the_brokers_memory_where_it_was(broker):
    c = broker
    pid = c.procs["broker"].pid
    before = rss_mb(pid)
    for round_ in range(10):
        wave = [_open(c.ssh_port, f"127.0.3.{1 + (i % 200)}") for i in range(300)]
        for s in wave:
            s.close()
    wait_for(lambda: c.ssh("offers", user="ctl").returncode == 0, what="the broker to serve again")
    after = rss_mb(pid)
    print(f"broker RSS: {before:.0f} MB before 3,000 connections, {after:.0f} MB after")
    assert after - before < 40, f"broker RSS grew from {before:.0f} to {after:.0f} MB after 3,000 connections"


async def test_one_connection_cannot_try_keys_without_end(broker):
    c = broker
    keys = [asyncssh.generate_private_key("ssh-ed25519") for _ in range(10)]
    with pytest.raises(asyncssh.DisconnectError, match="too many authentication failures"):
        await asyncio.wait_for(asyncssh.connect("127.0.0.1", c.ssh_port, username="rent", client_keys=keys,
                                                known_hosts=str(c.root / "known_hosts")), 30)
    assert (c.bhome / "audit.log").read_text().count("auth-fail") == 6


def _kexinit(names: bytes) -> bytes:
    """A client's first key-exchange packet (unencrypted), every name-list set to names."""
    import os
    import struct
    payload = bytes([20]) + os.urandom(16) + b"".join(struct.pack(">I", len(names)) + names for _ in range(10))
    payload += b"\0" + b"\0\0\0\0"
    pad = 8 - (len(payload) + 5) % 8
    pad += 8 if pad < 4 else 0
    return struct.pack(">IB", len(payload) + pad + 1, pad) + payload + b"\0" * pad


FORGED = b"curve25519-sha256\n2026-12-01 00:00:00,000 INFO shellrent.audit: login renter=root\x1b[2J\r,x"


def test_a_strangers_words_never_forge_a_log_line(fresh_cluster):
    c = fresh_cluster
    c.kill("broker")
    c.start_broker("-v")
    for port in (c.ssh_port, c.tunnel_port):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"SSH-2.0-evil\x1b[31m\r\n" + _kexinit(FORGED))
        try:
            while s.recv(4096):
                pass
        except OSError:
            pass
        s.close()
    wait_for(lambda: "evil" in c.log("broker") and c.log("broker").count("renter=root") >= 2,
             what="the broker to log the strangers' words")
    for line in c.log("broker").splitlines():
        assert not line.startswith("2026-12-01 00:00:00,000"), repr(line)  # no line is the stranger's
        assert not any(ch < " " or "\x7f" <= ch <= "\x9f" for ch in line), repr(line)


def test_no_port_names_a_version(cluster):
    c = cluster
    for port in (c.ssh_port, c.tunnel_port):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"SSH-2.0-probe\r\n")
            banner = b""
            while not banner.endswith(b"\r\n"):
                banner += s.recv(1)
        assert banner == b"SSH-2.0-shellrent\r\n", (port, banner)


def test_a_burst_of_logins_from_one_address_all_get_in(fresh_cluster):
    """20 at once got in 10 to 17 times (sshd behind ssh -J: 12); past the per-address bound they wait."""
    c = fresh_cluster
    procs = [subprocess.Popen(c.ssh_cmd("ctl") + ["balance"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(50)]
    results = [(p.wait(timeout=120), p.stdout.read(), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    failed = [r for r in results if r[0] != 0]
    assert not failed, (len(failed), failed[:2])
