"""A host clock off by less than BROKER_MAX_SKEW (25 s either way here) moves no lease's end and no
charge by more than a second: the broker measures the host's clock at connect and every 30 s, and
hostd keeps its leases, and stamps what it reports, on the broker's time. Real broker, hostd, Docker
and OpenSSH; the skew is hostd's `clock` fault point (its whole clock, the engine's stamps aside)."""
import time

import pytest

from ..cluster import run, wait_for
from .records import PRICE, _rows, broker_leases, charged, ctl_json, market, wait_agree

pytestmark = [pytest.mark.docker, pytest.mark.faults]

TERM_TIME = "trap 'date +%s.%N; exit 0' TERM; while :; do sleep 0.2; done"


@pytest.mark.parametrize("skew", [25, -25])
def test_a_skewed_host_clock_moves_no_end_and_no_charge(fresh_cluster, skew):
    c = fresh_cluster
    market(c)
    c.kill("hostd-pc1")
    c.env["SHELLRENT_FAULTS"] = f"clock={skew}"
    c.start_hostd("pc1")
    lid = ctl_json(c, "rent", "--hours", "25s", "--yes")["id"]
    lease = broker_leases(c)[lid]
    # A down, stamped by the engine, is recorded in the broker's time (inside the lease, not before it).
    time.sleep(3)
    killed = time.time()
    run("docker", "kill", f"shellrent-{lid}")
    downs = lambda: _rows(c.bhome / "broker.db", "SELECT down, up FROM lease_downs WHERE lease = ?", [lid])
    wait_for(lambda: downs() and downs()[0]["up"], timeout=30, what="the broker to hear of the down")
    (down,) = downs()
    assert abs(down["down"] - killed) < 1, (down, killed)
    # The end: SIGTERM at the broker's end, not 25 s before or after it.
    r = c.ssh(TERM_TIME, user=f"rent+{lid}", timeout=90)
    term = float(r.stdout.split()[-1])
    assert abs(term - lease["ends_at"]) < 1, (term, lease["ends_at"])
    wait_for(lambda: broker_leases(c)[lid]["state"] == "ended", timeout=30, what="the lease to end")
    wait_agree(c)
    lease = broker_leases(c)[lid]
    assert abs(lease["ended"] - lease["ends_at"]) < 1
    ran = lease["ended"] - lease["started"] - (down["up"] - down["down"])
    assert abs(charged(c, lid) - ran * PRICE / 3600) <= PRICE / 3600, (charged(c, lid), ran)
