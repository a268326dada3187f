"""The renter's connection cut, and the broker killed (kill -9), at each step of rent, extend and
release, through the broker's fault points. Afterwards broker, hostd, the engine and the ledger
agree; a cut never cancels a half-done operation, a kill completes it or undoes it.
Real broker, hostd, Docker and OpenSSH."""
import subprocess
import time

import pytest

from ..cluster import wait_for
from .records import PRICE, broker_leases, charged, ctl, ctl_json, host_leases, market, restart_broker, \
    running, wait_agree

pytestmark = [pytest.mark.docker, pytest.mark.faults]

STEPS = {  # fault point -> the ctl command that reaches it
    "rent.starting": ["rent", "--hours", "1h", "--yes"],   # lease held and starting; host not asked yet
    "rent.started": ["rent", "--hours", "1h", "--yes"],    # the host made the container; not recorded yet
    "extend.held": ["extend", "30m"],                      # new end and its hold written; host not told
    "release.settled": ["release"],                        # ended and settled; host not told
}


def _setup(c, point: str, action: str) -> tuple[str | None, float]:
    market(c)
    lid = None if point.startswith("rent") else ctl_json(c, "rent", "--hours", "1h", "--yes")["id"]
    c.kill("broker")
    restart_broker(c, f"{point}={action}")
    return lid, broker_leases(c)[lid]["ends_at"] if lid else 0.0


@pytest.mark.parametrize("point", list(STEPS))
def test_a_renter_who_cuts_the_connection_cancels_nothing(fresh_cluster, point):
    c = fresh_cluster
    lid, ends = _setup(c, point, "sleep:3")
    cmd = subprocess.Popen(c.ssh_cmd("ctl") + STEPS[point], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(1.2)
    cmd.kill()                                            # the renter's ssh dies mid-command
    cmd.communicate()
    wait_for(lambda: any(x["state"] not in ("pending", "starting") for x in broker_leases(c).values())
             and (point != "release.settled" or broker_leases(c)[lid]["state"] == "ended"), timeout=30,
             what="the operation to complete")
    wait_agree(c)
    leases = broker_leases(c)
    if point.startswith("rent"):                           # the lease was made: it is the renter's now
        (lease,) = leases.values()
        assert lease["state"] == "active" and running(c) == {lease["id"]: "running"}
        assert [x["id"] for x in ctl_json(c, "ls")] == [lease["id"]]
    elif point == "extend.held":
        assert leases[lid]["ends_at"] == ends + 1800 == host_leases(c)[lid]["ends_at"]
    else:
        assert leases[lid]["state"] == "ended" and running(c) == {}
        assert charged(c, lid) <= (leases[lid]["ended"] - leases[lid]["started"] + 1) * PRICE // 3600


@pytest.mark.parametrize("point", list(STEPS))
def test_a_broker_killed_at_each_step_completes_or_undoes_it(fresh_cluster, point):
    c = fresh_cluster
    lid, ends = _setup(c, point, "kill")
    asked = time.time()
    r = ctl(c, *STEPS[point])
    assert r.returncode == 255                            # the broker died under the command
    time.sleep(2)                                         # down a while: none of it may be billed on release
    restart_broker(c)
    wait_agree(c)
    leases = broker_leases(c)
    if point.startswith("rent"):                           # undone: failed, refunded, nothing left on the host
        (lease,) = leases.values()
        assert lease["state"] == "failed" and running(c) == {}
        assert host_leases(c).get(lease["id"], {"state": "purged"})["state"] == "purged"
        assert ctl_json(c, "balance")["balance_micro"] == 100_000_000
    elif point == "extend.held":                          # completed: the host was told at reconnect
        assert leases[lid]["ends_at"] == ends + 1800 == host_leases(c)[lid]["ends_at"]
        assert ctl_json(c, "balance")["held_micro"] == leases[lid]["held"] == PRICE * 3 // 2
    else:                                                 # completed: billed to the release, not the restart
        assert leases[lid]["state"] == "ended" and leases[lid]["ended"] <= asked + 1
        assert running(c) == {} and host_leases(c)[lid]["state"] == "ended"
        assert charged(c, lid) <= (asked + 1 - leases[lid]["started"]) * PRICE // 3600
