"""The tunnel black-holed (a proxy that stops forwarding without closing) for less and for more
than the offline grace, a provider clock ten minutes off, and the broker's disk full.
Real broker, hostd, Docker and OpenSSH."""
import json
import os
import subprocess
import time

import pytest

from ..cluster import BIN, Cluster, run, wait_for
from .blackhole import BlackHole
from .records import FAST, PRICE, balances, broker_leases, charged, ctl, ctl_json, own_cluster, running, \
    wait_agree

pytestmark = [pytest.mark.docker, pytest.mark.faults]

NET = {"BROKER_KEEPALIVE": "1", "BROKER_OFFLINE_GRACE": "5", "HOSTD_KEEPALIVE": "2"}


@pytest.fixture
def behind_proxy(tmp_path):
    """A broker, and hostd pc1 joined through a black-hole proxy in front of the tunnel port."""
    from ..conftest import _require_docker
    _require_docker()
    c = Cluster(tmp_path / "c", env=NET)
    proxy = None
    try:
        c.start_broker()
        proxy = BlackHole(c.tunnel_port)
        token = c.broker("host", "invite", "pc1").stdout.decode().strip().splitlines()[-1]
        c.hostd("pc1", "join", f"127.0.0.1:{proxy.port}", token)
        c.hostd_homes["pc1"] = c.root / "hostd-pc1"
        for key, value in FAST.items():
            c.hostd("pc1", "config", "set", key, value)
        c.start_hostd("pc1")
        c.broker("renter", "credit", "alice", "100")
        wait_for(lambda: ctl_json(c, "offers"), what="the host's offer")
        yield c, proxy
    finally:
        if proxy:
            proxy.release()
            proxy.close()
        c.close()


@pytest.mark.parametrize("hold, billed", [(1.5, "all"), (15, "less the gap")])
def test_a_black_holed_tunnel(behind_proxy, hold, billed):
    c, proxy = behind_proxy
    lid = ctl_json(c, "rent", "--hours", "1h", "--yes")["id"]
    time.sleep(1)
    held = time.time()
    proxy.hold()
    time.sleep(hold)
    proxy.release()
    freed = time.time()
    c.wait_connected("pc1")
    wait_for(lambda: c.ssh("true", user=f"rent+{lid}").returncode == 0, timeout=60, what="the lease to answer again")
    wait_agree(c)
    assert running(c) == {lid: "running"}                 # hostd kept the lease through the gap
    ctl_json(c, "release")
    lease = broker_leases(c)[lid]
    span = lease["ended"] - lease["started"]
    if billed == "all":                                   # shorter than the grace: billed in full
        assert charged(c, lid) >= (span - 1) * PRICE // 3600
    else:                                                 # longer: the gap (seen from its start) is not
        assert charged(c, lid) <= (span - (freed - held) + 5) * PRICE // 3600
    wait_agree(c)


def test_a_host_with_a_clock_ten_minutes_off_is_refused_with_the_reason(fresh_cluster):
    c = fresh_cluster
    c.env["SHELLRENT_FAULTS"] = "clock=600"
    token = c.broker("host", "invite", "pc1").stdout.decode().strip().splitlines()[-1]
    r = c.hostd("pc1", "join", f"127.0.0.1:{c.tunnel_port}", token, check=False)
    assert r.returncode == 1
    assert r.stderr.decode().strip() == ("Error: the host's clock is 600 s ahead of the broker's (at most 30 s "
                                         "allowed): set its time (e.g. enable NTP); hostd reconnects by itself")
    c.env["SHELLRENT_FAULTS"] = ""
    c.hostd("pc1", "join", f"127.0.0.1:{c.tunnel_port}", token)      # the token was not used up
    c.hostd_homes["pc1"] = c.root / "hostd-pc1"
    c.env["SHELLRENT_FAULTS"] = "clock=-600"
    c._spawn("hostd-pc1", [BIN / "hostd", "--home", c.hostd_homes["pc1"], "run"])
    wait_for(lambda: "behind the broker" in (json.loads(c.hostd("pc1", "status", "--json").stdout).get("error")
                                             or ""), what="hostd to show why it is refused")
    assert json.loads(c.hostd("pc1", "status", "--json").stdout)["connected"] is False
    assert ctl_json(c, "offers") == []


@pytest.fixture
def small_disk(tmp_path):
    """A cluster whose broker keeps its home (and database) on a 16 MB filesystem."""
    (tmp_path / "c" / "broker").mkdir(parents=True)
    run("mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", tmp_path / "c" / "broker")
    try:
        with own_cluster(tmp_path / "c") as c:
            yield c
    finally:
        run("umount", "-l", tmp_path / "c" / "broker", check=False)


def test_a_full_disk_is_one_clear_error_and_work_resumes_when_space_returns(small_disk):
    c = small_disk
    lid = ctl_json(c, "rent", "--hours", "1h", "--gpus", "1", "--yes")["id"]
    before, leases = balances(c), broker_leases(c)
    filler = c.bhome / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M", "count=64"], capture_output=True)
    for args in (["rent", "--hours", "1h", "--yes"], ["extend", lid, "1h"]):
        r = ctl(c, *args)
        assert r.returncode == 2, r
        assert r.stderr.decode() == ("ctl: the broker cannot write its records (its disk is full): nothing was "
                                     "changed; try again later\n")
    assert balances(c) == before and broker_leases(c) == leases and list(running(c)) == [lid]
    os.remove(filler)
    ext = ctl_json(c, "extend", lid, "1h")
    assert ext["held"] == "7.20"
    assert ctl_json(c, "rent", "--hours", "1h", "--yes")["state"] == "active"
    wait_agree(c)
