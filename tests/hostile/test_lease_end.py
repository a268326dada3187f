"""Lease end cannot be defeated from inside the container, and the broker ends its side too.

The renter owns every file in the container: here they replace /bin/sh, kill and tmux with programs
that hang, and ignore SIGTERM. The lease still ends on time through the engine, its container is
gone, the broker's record and ledger agree. Real broker, hostd, Docker and OpenSSH."""
import json
import signal
import subprocess
import time

import pytest

from ..cluster import BIN, Cluster, run, wait_for
from .stallproxy import StallProxy

pytestmark = [pytest.mark.docker, pytest.mark.hostile]

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
    assert _lease(c, lid)["ended"] <= ends_at


def test_release_closes_the_renters_sessions_at_once(fresh_cluster):
    c = fresh_cluster
    c.add_host("pc1", {"grace": "20s"})
    lid = c.create_lease()
    session = subprocess.Popen(c.ssh_cmd("rent") + ["sleep 300"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for(lambda: "sleep 300" in c.ssh("ps -eo args", check=True).stdout.decode(), what="the session")
    started = time.monotonic()
    stop = subprocess.Popen([str(BIN / "broker"), "--home", str(c.bhome), "lease", "stop", lid], env=c.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, err = session.communicate(timeout=15)
    closed_after = time.monotonic() - started
    assert closed_after < 10, f"session closed {closed_after:.1f}s after release (the grace is 20s)"
    assert f"lease {lid} has ended".encode() in err
    assert stop.wait(timeout=60) == 0
    assert _lease(c, lid)["state"] == "ended"


def test_release_while_the_host_is_away_is_done_on_reconnect(fresh_cluster):
    c = fresh_cluster
    c.add_host("pc1", {"fake_gpus": "RTX 4090:24", "grace": "1s"})
    c.broker("renter", "credit", "alice", "5")
    wait_for(lambda: c.ssh("offers", "--json", user="ctl", check=True).stdout != b"[]\n", what="the offer")
    r = c.ssh("rent", "--hours", "1", "--yes", "--json", user="ctl", check=True)
    lid = json.loads(r.stdout)["id"]
    c.kill("hostd-pc1")
    assert c.ssh("release", lid, user="ctl").returncode == 0
    assert _lease(c, lid)["state"] == "ended" and len(c.containers()) == 1  # hostd is away: still running
    c.start_hostd("pc1")
    wait_for(lambda: not c.containers(), what="hostd to stop it on reconnect")
    wait_for(lambda: c.ssh("offers", "--json", user="ctl", check=True).stdout != b"[]\n",
             what="the GPU back on offer once its container is gone")


def test_one_leases_stuck_engine_calls_hold_up_nothing_else(tmp_path):
    proxy = StallProxy(tmp_path / "docker.sock")
    c = Cluster(tmp_path / "c", env={"DOCKER_HOST": f"unix://{proxy.path}"})
    stuck = []
    try:
        c.start_broker()
        c.add_host("pc1", {"grace": "1s"})
        a, b = c.create_lease(), c.create_lease()
        cid = run("docker", "inspect", "-f", "{{.Id}}", f"shellrent-{a}").stdout.decode().strip()
        proxy.hold(a)
        proxy.hold(cid)
        # Every engine call about lease a now hangs: its end, sessions and forwards into it.
        stuck.append(subprocess.Popen([str(BIN / "broker"), "--home", str(c.bhome), "lease", "stop", a],
                                      env=c.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for i in range(10):
            extra = ["-W", "localhost:22"] if i % 2 else []
            stuck.append(subprocess.Popen(c.ssh_cmd(f"rent+{a}", *extra) + ([] if extra else ["true"]),
                                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
        wait_for(lambda: len(proxy.held) >= 11, what="the stuck engine calls")
        started = time.monotonic()
        assert c.ssh("hostname", user=f"rent+{b}", check=True).stdout.decode().strip() == f"rent-{b}"
        third = c.create_lease()
        c.broker("lease", "stop", b)
        assert c.ssh("hostname", user=f"rent+{third}", check=True).stdout.decode().strip() == f"rent-{third}"
        assert json.loads(c.hostd("pc1", "status", "--json").stdout)["connected"]
        assert time.monotonic() - started < 30
        assert _lease(c, a)["state"] == "ended"             # billing stopped at the stop
        assert _lease(c, a)["host_ended"] is None             # but the host has not confirmed it yet
        proxy.release()
        wait_for(lambda: _lease(c, a)["host_ended"], timeout=90, what="hostd to end lease a once the engine answers")
        # A call stuck at shutdown never holds hostd up.
        proxy.hold(third)
        stuck.append(subprocess.Popen([str(BIN / "broker"), "--home", str(c.bhome), "lease", "stop", third],
                                      env=c.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_for(lambda: proxy.held, what="a stuck call")
        t = time.monotonic()
        c.kill("hostd-pc1", signal.SIGTERM)
        assert time.monotonic() - t < 10
    finally:
        for p in stuck:
            p.kill()
            p.wait()
        proxy.release()
        c.close()
        proxy.close()


def test_broker_restarted_while_the_container_is_made_leaves_nothing(tmp_path):
    proxy = StallProxy(tmp_path / "docker.sock")
    c = Cluster(tmp_path / "c", env={"DOCKER_HOST": f"unix://{proxy.path}"})
    try:
        c.start_broker()
        c.add_host("pc1", {"fake_gpus": "RTX 4090:24", "grace": "1s"})
        c.broker("renter", "credit", "alice", "5")
        wait_for(lambda: c.ssh("offers", "--json", user="ctl", check=True).stdout != b"[]\n", what="the offer")
        proxy.hold("/containers/create")
        rent = subprocess.Popen(c.ssh_cmd("ctl") + ["rent", "--hours", "1", "--yes"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        wait_for(lambda: proxy.held, what="hostd to be making the container")
        c.kill("broker")                       # the broker never hears the reply
        assert rent.wait(timeout=30) != 0
        c.start_broker()                       # fails the lease; hostd reports it as starting
        c.wait_connected("pc1")
        proxy.release()                        # the container comes into being after all...
        wait_for(lambda: not c.containers(), timeout=60, what="hostd to discard it")  # ...and goes
        assert [x["state"] for x in json.loads(c.broker("lease", "list", "--json").stdout)] == ["failed"]
        balance = json.loads(c.ssh("balance", "--json", user="ctl", check=True).stdout)
        assert (balance["balance_micro"], balance["held_micro"]) == (5_000_000, 0)
        wait_for(lambda: c.ssh("offers", "--json", user="ctl", check=True).stdout != b"[]\n",
                 what="the GPU back on offer")
    finally:
        proxy.release()
        c.close()
        proxy.close()
