"""What the operator sets and does: limits with their reasons, a backup taken while serving and
restored, a banned host's leases, numbers that are not numbers. Real broker, hostd and OpenSSH."""
import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from ..cluster import wait_for
from .records import balances, broker_leases, ctl, ctl_json, market, own_cluster, running, wait_agree

pytestmark = [pytest.mark.docker, pytest.mark.faults]


@pytest.fixture
def limited(tmp_path):
    with own_cluster(tmp_path / "c", {"BROKER_MAX_LEASES": "1", "BROKER_MAX_LEASE_DAYS": "2"}) as c:
        yield c


def test_each_limit_says_which_it_is(limited):
    c = limited
    r = ctl(c, "rent", "--hours", "3d", "--yes")
    assert r.returncode == 2
    assert r.stderr.decode() == ("ctl: a lease may last at most 2d on this broker "
                                 "(operator limit BROKER_MAX_LEASE_DAYS=2)\n")
    lid = ctl_json(c, "rent", "--hours", "1d", "--yes")["id"]
    r = ctl(c, "rent", "--hours", "1h", "--yes")
    assert r.returncode == 2
    assert r.stderr.decode() == ("ctl: you have 1 live leases, the most this broker allows per renter "
                                 "(operator limit BROKER_MAX_LEASES=1); release one first\n")
    r = ctl(c, "extend", lid, "1d1h")
    assert r.returncode == 2 and b"at most 2d on this broker" in r.stderr
    assert ctl_json(c, "balance")["held_micro"] == broker_leases(c)[lid]["held"]
    assert len(broker_leases(c)) == 1 and list(running(c)) == [lid]


def test_backup_while_serving_and_restore(fresh_cluster, tmp_path):
    c = fresh_cluster
    market(c)
    lid = ctl_json(c, "rent", "--hours", "1h", "--yes")["id"]
    out = c.broker("backup", tmp_path / "b.db").stdout.decode()
    assert out.strip().endswith("1 leases, 2 transactions, 1 renters")
    assert (tmp_path / "b.db").stat().st_mode & 0o777 == 0o600
    r = c.broker("backup", tmp_path / "b.db", check=False)
    assert r.returncode == 1 and b"already exists" in r.stderr
    for bad, why in ((tmp_path / "no" / "b.db", f"no directory {tmp_path / 'no'}"),
                     (Path("/proc/b.db"), "unable to open database file")):
        r = c.broker("backup", bad, check=False)
        assert (r.returncode, r.stderr.decode()) == (1, f"Error: cannot back up to {bad}: {why}\n")
    copy = sqlite3.connect(tmp_path / "b.db")
    assert copy.execute("SELECT state FROM leases").fetchall() == [("active",)]
    assert dict(copy.execute("SELECT account, SUM(amount) FROM entries GROUP BY account")) == balances(c)
    copy.close()
    ctl_json(c, "release")
    c.kill("broker")                                     # restore: stop, put the copy in place, start
    for name in ("broker.db", "broker.db-wal", "broker.db-shm"):
        (c.bhome / name).unlink(missing_ok=True)
    shutil.copy(tmp_path / "b.db", c.bhome / "broker.db")
    c.start_broker()
    c.wait_connected("pc1")
    wait_for(lambda: broker_leases(c)[lid]["state"] == "ended", what="the restored lease to meet the host's end")
    wait_agree(c)                                        # the host had ended it: the copy learns so


def test_a_banned_hosts_leases_end_and_are_refunded(fresh_cluster):
    c = fresh_cluster
    market(c)
    lid = ctl_json(c, "rent", "--hours", "1h", "--yes")["id"]
    c.broker("host", "ban", "pc1")
    wait_for(lambda: broker_leases(c)[lid]["state"] == "ended", what="the banned host's lease to end")
    r = c.ssh("true", user=f"rent+{lid}")
    assert r.returncode == 2 and r.stderr.decode().startswith(f"shellrent: lease {lid} is ended")
    assert ctl_json(c, "balance")["held_micro"] == 0
    assert ctl_json(c, "offers") == []


@pytest.mark.parametrize("args", [["lease", "create", "--renter", "alice", "--host", "pc1", "--hours", "nan"],
                                  ["lease", "create", "--renter", "alice", "--host", "pc1", "--hours", "inf"],
                                  ["lease", "create", "--renter", "alice", "--host", "pc1", "--hours", "1e400"],
                                  ["renter", "credit", "alice", "nan"], ["renter", "credit", "alice", "1e999"]])
def test_numbers_that_are_not_numbers_are_usage_errors(fresh_cluster, args):
    r = fresh_cluster.broker(*args, check=False)
    if args[0] == "renter":  # an amount is checked by the command itself: one line
        assert r.returncode == 1 and r.stderr.decode().startswith(f"Error: bad amount '{args[-1]}'")
        assert len(r.stderr.decode().splitlines()) == 1
    else:
        assert r.returncode == 2
        assert r.stderr.decode().splitlines()[-1].startswith("Error: Invalid value for")
    assert b"Traceback" not in r.stderr and b"internal" not in r.stderr
    assert json.loads(fresh_cluster.broker("lease", "list", "--json").stdout) == []
    conn = sqlite3.connect(fresh_cluster.bhome / "broker.db")
    assert conn.execute("SELECT count(*) FROM txs").fetchone()[0] == 0
