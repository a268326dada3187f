"""hostd killed (kill -9) while it starts and while it stops a container, and a lease's container
killed, stopped, paused and removed from outside (as a provider could). Afterwards broker, hostd,
the engine and the ledger agree; no lease is billed for time its container did not run.
Real broker, hostd, Docker and OpenSSH."""
import json
import subprocess
import time

import pytest

from ..cluster import run, wait_for
from .records import PRICE, _rows, broker_leases, charged, ctl, ctl_json, host_leases, market, reap, \
    running, wait_agree

pytestmark = [pytest.mark.docker, pytest.mark.faults]


def _restart_hostd(c, faults: str = "") -> None:
    reap(c, "hostd-pc1")
    c.env["SHELLRENT_FAULTS"] = faults
    c.start_hostd("pc1")


def test_hostd_killed_while_it_starts_a_container(fresh_cluster):
    c = fresh_cluster
    market(c)
    c.kill("hostd-pc1")
    _restart_hostd(c, "hostd.start.created=kill")
    r = ctl(c, "rent", "--hours", "1h", "--yes")
    assert r.returncode == 2 and b"did not answer lease.start" in r.stderr   # one line, no lease
    assert len(running(c)) == 1                                              # the container it made is left
    _restart_hostd(c)
    wait_agree(c)
    (lease,) = broker_leases(c).values()
    assert lease["state"] == "failed" and running(c) == {}
    assert host_leases(c)[lease["id"]]["state"] == "purged"
    assert ctl_json(c, "balance")["balance_micro"] == 100_000_000


def test_hostd_killed_while_it_stops_a_container(fresh_cluster):
    c = fresh_cluster
    market(c)
    lid = ctl_json(c, "rent", "--hours", "1h", "--yes")["id"]
    c.kill("hostd-pc1")
    _restart_hostd(c, "hostd.stop.signalled=kill")
    released = time.time()
    out = ctl_json(c, "release")                        # billing stops now, whatever hostd does next
    assert out["state"] == "ended"
    wait_for(lambda: "hostd-pc1" not in c.procs or c.procs["hostd-pc1"].poll() is not None, what="hostd to die")
    assert running(c) == {lid: "running"}
    _restart_hostd(c)
    wait_agree(c)
    lease = broker_leases(c)[lid]
    assert lease["ended"] <= released + 1 and host_leases(c)[lid]["state"] == "ended" and running(c) == {}
    assert charged(c, lid) <= (released + 1 - lease["started"]) * PRICE // 3600


def _downs(c, lid: str) -> list[dict]:
    return _rows(c.bhome / "broker.db", "SELECT down, up FROM lease_downs WHERE lease = ?", [lid])


@pytest.mark.parametrize("how", [["kill"], ["stop", "-t", "0"], ["pause"]])
def test_a_container_stopped_from_outside_comes_back_at_once(fresh_cluster, how):
    c = fresh_cluster
    market(c)
    lid = ctl_json(c, "rent", "--hours", "1h", "--yes")["id"]
    c.ssh("echo kept > /workspace/file", check=True)
    run("docker", *how, f"shellrent-{lid}")
    wait_for(lambda: _downs(c, lid) and _downs(c, lid)[0]["up"], timeout=30, what="the broker to hear of it")
    (down,) = _downs(c, lid)
    assert 0 < down["up"] - down["down"] < 10             # the engine's event woke hostd: back in seconds
    assert running(c) == {lid: "running"}
    assert c.ssh("cat /workspace/file", check=True).stdout == b"kept\n"
    wait_agree(c)


def test_the_time_a_container_was_down_is_not_billed(fresh_cluster):
    c = fresh_cluster
    market(c)
    lid = ctl_json(c, "rent", "--hours", "1h", "--yes")["id"]
    c.ssh("echo kept > /workspace/file", check=True)
    c.kill("hostd-pc1")                                   # the container dies while hostd is away
    stopped = time.time()
    run("docker", "stop", "-t", "0", f"shellrent-{lid}")
    time.sleep(6)
    _restart_hostd(c)
    wait_for(lambda: _downs(c, lid) and _downs(c, lid)[0]["up"], timeout=30, what="the broker to hear of it")
    (down,) = _downs(c, lid)
    assert abs(down["down"] - stopped) < 2 and down["up"] - down["down"] >= 6
    assert c.ssh("cat /workspace/file", check=True).stdout == b"kept\n"
    ctl_json(c, "release")
    lease = broker_leases(c)[lid]
    ran = lease["ended"] - lease["started"] - (down["up"] - down["down"])
    assert (ran - 1) * PRICE // 3600 <= charged(c, lid) <= (ran + 1) * PRICE // 3600
    wait_agree(c)


def test_a_container_removed_from_outside_ends_the_lease_when_it_went(fresh_cluster):
    c = fresh_cluster
    market(c)
    lid = ctl_json(c, "rent", "--hours", "1h", "--yes")["id"]
    time.sleep(2)
    removed = time.time()
    run("docker", "rm", "-f", f"shellrent-{lid}")
    time.sleep(3)
    wait_for(lambda: broker_leases(c)[lid]["state"] == "ended", timeout=30, what="the lease to end")
    wait_agree(c)
    lease = broker_leases(c)[lid]
    assert lease["ended"] <= removed + 1                  # not billed for the time after it was gone
    assert charged(c, lid) <= (removed + 1 - lease["started"]) * PRICE // 3600
    assert ctl_json(c, "balance")["held_micro"] == 0
    r = ctl(c, "ls")
    assert lid.encode() in r.stdout and b"ended" in r.stdout
    assert subprocess.run(["docker", "inspect", f"shellrent-{lid}"], capture_output=True).returncode == 1


@pytest.mark.parametrize("how", ["pause", "rm"])
def test_a_container_paused_or_removed_while_hostd_is_away_counts_from_when_it_went(fresh_cluster, how):
    c = fresh_cluster
    market(c, {"grace": "1s"})
    lid = ctl_json(c, "rent", "--hours", "1h", "--yes")["id"]
    time.sleep(6)                                         # hostd has seen it running (checks every 5 s)
    c.kill("hostd-pc1")
    went = time.time()
    run("docker", *(["pause"] if how == "pause" else ["rm", "-f"]), f"shellrent-{lid}")
    time.sleep(8)
    _restart_hostd(c)
    if how == "pause":
        wait_for(lambda: _downs(c, lid) and _downs(c, lid)[0]["up"], timeout=30, what="the broker to hear of it")
        (down,) = _downs(c, lid)
        assert went - 6 <= down["down"] <= went and down["up"] - down["down"] >= 8
        ctl_json(c, "release")
        lease = broker_leases(c)[lid]
        assert charged(c, lid) <= (lease["ended"] - lease["started"] - 8 + 1) * PRICE // 3600
    else:
        wait_for(lambda: broker_leases(c)[lid]["state"] == "ended", timeout=30, what="the lease to end")
        assert went - 6 <= broker_leases(c)[lid]["ended"] <= went
    wait_agree(c)


def test_a_second_hostd_on_one_home_is_refused_and_the_first_goes_on(cluster):
    c = cluster
    first = c.procs["hostd-pc1"]
    for _ in range(2):
        r = c.hostd("pc1", "run", check=False, timeout=30)
        err = r.stderr.decode()
        assert r.returncode == 1 and err.count("\n") == 1, err
        assert f"another hostd is running on {c.hostd_homes['pc1']} (pid {first.pid})" in err, err
    assert first.poll() is None
    c.wait_connected("pc1")
    assert c.ssh("echo still", user=f"rent+{c.lease}").stdout == b"still\n"
    c.kill("hostd-pc1")  # killed with -9: the kernel drops the lock, and the next one starts
    c.start_hostd("pc1")
    assert c.ssh("echo back", user=f"rent+{c.lease}").stdout == b"back\n"


def test_a_hostd_that_lost_its_database_adopts_the_container_with_its_gpus(fresh_cluster):
    c = fresh_cluster
    market(c, {"power_limit": "200"})
    lid = ctl_json(c, "rent", "--hours", "1h", "--yes")["id"]
    (gpu,) = json.loads(host_leases(c)[lid]["gpus"])
    c.kill("hostd-pc1")
    for f in c.hostd_homes["pc1"].glob("hostd.db*"):
        f.unlink()
    _restart_hostd(c)
    rec = host_leases(c)[lid]
    assert json.loads(rec["gpus"]) == [gpu] and rec["renter"] == "alice" and rec["state"] == "active"

    def gpus():
        return {g["uuid"]: g for g in json.loads(c.hostd("pc1", "gpus", "--json").stdout)}
    assert gpus()[gpu]["lease"] == lid                    # the watchdog and the power limit act on it again
    wait_for(lambda: gpus()[gpu]["power_limit_w"] == 200, what="the power limit on the adopted lease's GPU")
    assert c.ssh("echo adopted", user=f"rent+{lid}", check=True).stdout == b"adopted\n"
    other = ctl_json(c, "rent", "--hours", "1h", "--yes")["id"]  # gets the other GPU, not the adopted one's
    assert json.loads(host_leases(c)[other]["gpus"]) == [u for u in gpus() if u != gpu]
    for lease in (lid, other):
        assert ctl(c, "release", lease).returncode == 0
    wait_agree(c)


@pytest.mark.parametrize("end", ["release", "time up"])
def test_a_container_that_died_while_hostd_was_away_is_not_billed_after_it_died(fresh_cluster, end):
    """It died, then the lease ended (released, or its time up) before hostd came back: the broker
    settled it as if it ran to the end, and refunds the rest when hostd reports the engine's stop time."""
    c = fresh_cluster
    market(c)
    lid = ctl_json(c, "rent", "--hours", "1h" if end == "release" else "20s", "--yes")["id"]
    time.sleep(6)                                         # hostd has seen it running
    c.kill("hostd-pc1")
    run("docker", "kill", f"shellrent-{lid}")
    died = time.time()
    if end == "release":
        time.sleep(6)
        assert ctl(c, "release", lid).returncode == 0
    else:
        wait_for(lambda: broker_leases(c)[lid]["state"] == "ended", timeout=40, what="the lease's time to end")
    lease = broker_leases(c)[lid]
    assert charged(c, lid) >= (lease["ended"] - lease["started"] - 1) * PRICE // 3600  # settled as if it ran
    _restart_hostd(c)
    wait_agree(c)
    lease = broker_leases(c)[lid]
    ran = died - lease["started"]
    wait_for(lambda: charged(c, lid) <= (ran + 1) * PRICE // 3600, timeout=20, what="the refund")
    assert charged(c, lid) >= (ran - 1) * PRICE // 3600
    assert ctl_json(c, "balance")["held_micro"] == 0 and running(c) == {}


def test_hostd_killed_after_it_moved_a_workspace_gives_it_back(fresh_cluster):
    c = fresh_cluster
    market(c)
    old = ctl_json(c, "rent", "--hours", "1h", "--yes")["id"]
    c.ssh("echo kept > /workspace/file", check=True)
    ctl_json(c, "release", old)
    wait_for(lambda: host_leases(c)[old]["state"] == "ended", what="the lease to end on the host")
    c.kill("hostd-pc1")
    _restart_hostd(c, "hostd.start.created=kill")  # the workspace is moved, the container made: then -9
    r = ctl(c, "rent", "--workspace", old, "--hours", "1h", "--yes")
    assert r.returncode == 2 and b"did not answer lease.start" in r.stderr
    _restart_hostd(c)
    wait_agree(c)
    failed = next(lid for lid, lease in broker_leases(c).items() if lid != old)
    assert broker_leases(c)[failed]["state"] == "failed" and running(c) == {}
    assert host_leases(c)[old]["state"] == "ended" and host_leases(c)[failed]["state"] == "purged"
    assert [w["lease"] for w in ctl_json(c, "workspaces")] == [old]  # kept as before, and taken again
    new = ctl_json(c, "rent", "--workspace", old, "--hours", "1h", "--yes")["id"]
    assert c.ssh("cat /workspace/file", user=f"rent+{new}", check=True).stdout == b"kept\n"
    assert ctl_json(c, "balance")["held_micro"] == broker_leases(c)[new]["held"]
