"""scripts/demo.sh as README gives it: on ports of its own (a taken one is said clearly), it leaves a
shell to ssh into; `stop` releases the lease (the container goes, the unused time is refunded) and
`clean` removes its state. Real broker, hostd, Docker and OpenSSH."""
import os
import re
import socket
import subprocess
from pathlib import Path

import pytest

from .cluster import run

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.docker


def _free_pair() -> int:
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
        if port < 65000:
            try:
                socket.create_server(("127.0.0.1", port + 1)).close()
                return port
            except OSError:
                continue
    raise AssertionError("no two free ports in a row")


def test_the_demo_on_other_ports_then_stop_and_clean(tmp_path):
    env = {**os.environ, "HOME": str(tmp_path / "home"), "DEMO_DIR": str(tmp_path / "demo")}
    (tmp_path / "home").mkdir()
    demo = lambda *args: subprocess.run(["bash", ROOT / "scripts" / "demo.sh", *args], env=env,  # noqa: E731
                                        capture_output=True, text=True, timeout=600)
    busy = socket.create_server(("127.0.0.1", 0))
    try:
        taken = demo("--port", str(busy.getsockname()[1]))
        assert taken.returncode == 1
        assert f"demo: port {busy.getsockname()[1]} on 127.0.0.1 is taken by another program: run bash " \
               f"scripts/demo.sh --port N (renters on N, hosts on N+1)" in taken.stderr
    finally:
        busy.close()
    port = _free_pair()
    r = demo("--port", str(port))
    try:
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        line = r.stdout.strip().splitlines()[-1].strip()
        assert line == f"ssh -i {tmp_path / 'demo' / 'renter_key'} -p {port} rent@localhost"
        assert "voucher redeemed: +100.00 credits" in r.stdout
        words = line.split()  # the line as printed, with a client of the test's own known_hosts
        ssh = [words[0], "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new",
               "-o", f"UserKnownHostsFile={tmp_path / 'kh'}", *words[1:], "echo in-$SHELLRENT_LEASE_ID"]
        inside = subprocess.run(ssh, capture_output=True, text=True, timeout=60)
        assert re.fullmatch(r"in-[0-9a-f]{8}\n", inside.stdout), inside.stderr
        lid = inside.stdout.strip()[3:]
        assert demo("--port", str(port + 7)).stderr.startswith(f"demo: this demo was set up on port {port}")
        stop = demo("stop")
        assert stop.returncode == 0 and f"lease {lid} released after " in stop.stdout and "refunded" in stop.stdout
        assert not run("docker", "ps", "-q", "--filter", f"label=shellrent.lease={lid}").stdout.strip()
    finally:
        clean = demo("clean")
    assert clean.returncode == 0 and not (tmp_path / "demo").exists()
