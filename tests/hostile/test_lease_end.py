"""Lease end cannot be defeated from inside the container, and the broker ends its side too.

The renter owns every file in the container: here they replace /bin/sh, kill and tmux with programs
that hang, and ignore SIGTERM. The lease still ends on time through the engine, its container is
gone, the broker's record and ledger agree. Real broker, hostd, Docker and OpenSSH."""
import json
import subprocess
import time

import pytest

from ..cluster import BIN, Cluster, wait_for

pytestmark = pytest.mark.docker

SABOTAGE = r"""
set -e
printf '#!/bin/bash\nexec sleep 3600\n' > /tmp/hang
chmod +x /tmp/hang
for f in /usr/bin/kill /bin/kill /usr/bin/tmux /usr/bin/printf; do [ -e "$f" ] && cp /tmp/hang "$f"; done
cp /tmp/hang /bin/dash.hang && ln -sf /bin/dash.hang /bin/sh
(trap '' TERM; exec -a stubborn sleep 3600) </dev/null >/dev/null 2>&1 &
echo sabotaged
"""


def _lease(c: Cluster, lid: str) -> dict:
    return next(x for x in json.loads(c.broker("lease", "list", "--json").stdout) if x["id"] == lid)


def test_lease_ends_on_time_when_the_renter_owns_every_program(fresh_cluster):
    c = fresh_cluster
    c.add_host("pc1", {"warnings": "12s,6s", "grace": "3s"})
    lid = c.create_lease(hours=20 / 3600)
    ends_at = _lease(c, lid)["ends_at"]
    r = c.ssh(SABOTAGE, opts=["-o", "ServerAliveInterval=1"])
    assert r.stdout.decode().strip() == "sabotaged", r.stderr
    wait_for(lambda: not c.containers(), timeout=ends_at - time.time() + 3 + 15, what="the container to go")
    gone = time.time()
    assert gone - ends_at < 3 + 10, f"ended {gone - ends_at:.1f}s after its end"
    wait_for(lambda: _lease(c, lid)["state"] == "ended", what="the broker to record the end")
    ended = c.hostd_log_time(f"lease {lid} ended")
    assert ended - ends_at < 3 + 5
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert "stubborn" not in ps
    ledger = json.loads(c.broker("ledger", "--json").stdout)
    assert sum(1 for t in ledger["transactions"] if t["key"] == f"settle:{lid}") == 1


def test_release_closes_the_renters_sessions_at_once(fresh_cluster):
    c = fresh_cluster
    c.add_host("pc1", {"grace": "20s"})
    lid = c.create_lease()
    session = subprocess.Popen(c.ssh_cmd("rent") + ["sleep 300"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for(lambda: "sleep 300" in c.ssh("ps -eo args", check=True).stdout.decode(), what="the session")
    started = time.monotonic()
    stop = subprocess.Popen([str(BIN / "broker"), "--home", str(c.bhome), "lease", "stop", lid], env=c.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, err = session.communicate(timeout=15)
    closed_after = time.monotonic() - started
    assert closed_after < 10, f"session closed {closed_after:.1f}s after release (the grace is 20s)"
    assert f"lease {lid} has ended".encode() in err
    stop.wait(timeout=60)
    assert _lease(c, lid)["state"] == "ended"
