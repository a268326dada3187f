"""The renter port behind HAProxy (mode tcp, PROXY protocol v2): the client HAProxy names is the
peer the limits and the audit log see; a header is taken only from the addresses the operator names,
a connection from them without one is dropped, a forged one from anyone else names nobody, and a
proxy that stalls mid-header is cut. Real broker, real HAProxy (Debian's), OpenSSH."""
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from shellrent.broker.proxyproto import SIGNATURE

from ..cluster import Cluster, run, wait_for
from ..test_proxyproto import header

pytestmark = pytest.mark.hostile
FORGED = "203.0.113.9"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def proxied():
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not Path(haproxy).exists():
        pytest.fail("haproxy not found: these tests need Debian's haproxy package (scripts/test.sh)")
    c = Cluster(Path(tempfile.mkdtemp(prefix="shellrent-test-")), env={"BROKER_PROXY_FROM": "127.0.0.1"})
    proc = None
    try:
        c.start_broker()
        port = _free_port()
        cfg = c.root / "haproxy.cfg"
        cfg.write_text("global\n  maxconn 200\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n"
                       f"  timeout server 60s\nfrontend renters\n  bind 127.0.0.1:{port}\n  default_backend brokers\n"
                       f"backend brokers\n  server b1 127.0.0.1:{c.ssh_port} send-proxy-v2\n")
        with open(c.root / "haproxy.log", "wb") as log:
            proc = subprocess.Popen([haproxy, "-db", "-f", str(cfg)], stdout=log, stderr=log)
        wait_for(lambda: _accepts(port), what="haproxy to listen")
        key = (c.root / "known_hosts").read_text().split(" ", 1)[1]
        with open(c.root / "known_hosts", "a") as f:
            f.write(f"\n[127.0.0.1]:{port} {key}")
        c.proxy_port = port
        yield c
    finally:
        if proc:
            proc.terminate()
            proc.wait(10)
        c.close()


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 1).close()
        return True
    except OSError:
        return False


def _audit(c) -> str:
    path = c.bhome / "audit.log"
    return path.read_text() if path.exists() else ""


def test_through_haproxy_the_client_it_names_is_the_peer(proxied):
    c = proxied
    opts = [*c.ssh_opts(), "-p", str(c.proxy_port), "-b", "127.0.0.5"]
    r = run("ssh", *opts, "ctl@127.0.0.1", "balance", check=False)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: "login renter=alice user=ctl ip=127.0.0.5" in _audit(c), what="the login in the audit log")
    assert "ip=127.0.0.1" not in _audit(c)  # the proxy's own address names no one


def test_the_proxy_address_without_a_header_is_dropped(proxied):
    c = proxied
    r = run("ssh", *c.ssh_opts(), "-o", "ConnectTimeout=10", "-p", str(c.ssh_port), "ctl@127.0.0.1", "balance",
            check=False, timeout=30)
    assert r.returncode == 255 and "login renter=alice" not in _audit(c)


def test_a_forged_header_from_anyone_else_names_nobody(proxied, tmp_path):
    c = proxied
    relay = tmp_path / "forge.py"  # ProxyCommand: from 127.0.0.7, a header claiming FORGED, then the session
    relay.write_text(
        "import os, socket, sys, threading\n"
        f"s = socket.socket(); s.bind(('127.0.0.7', 0)); s.connect(('127.0.0.1', {c.ssh_port}))\n"
        f"s.sendall({header(FORGED, 4444, '127.0.0.1', c.ssh_port)!r})\n"
        "def up():\n"
        "    while (d := os.read(0, 65536)): s.sendall(d)\n"
        "    s.shutdown(socket.SHUT_WR)\n"
        "threading.Thread(target=up, daemon=True).start()\n"
        "while (d := s.recv(65536)): os.write(1, d)\n")
    r = run("ssh", *c.ssh_opts(), "-o", f"ProxyCommand={sys.executable} {relay}", "-o", "ConnectTimeout=10",
            "-p", str(c.ssh_port), "ctl@127.0.0.1", "balance", check=False, timeout=30)
    time.sleep(0.5)
    assert FORGED not in _audit(c) and FORGED not in (c.root / "broker.log").read_text()
    if r.returncode == 0:  # asyncssh skipped the bytes before its version line: then it is 127.0.0.7's login
        assert "ip=127.0.0.7" in _audit(c)


def test_a_proxy_that_stalls_mid_header_is_cut(proxied):
    c = proxied
    s = socket.create_connection(("127.0.0.1", c.ssh_port), 5)
    s.sendall(SIGNATURE[:8])
    s.settimeout(15)
    started = time.monotonic()
    assert s.recv(100) == b""  # closed (no banner: the SSH side never saw it)
    assert 3 < time.monotonic() - started < 12
    s.close()
