"""A broker whose database is PostgreSQL: init remembers it (mode 0600, no broker.db), a renter rents
and works through it, the money is settled in it, the operator's commands read it from the home, and a
broker killed -9 picks up where it was."""
import json
import os
import stat
import tempfile
from pathlib import Path

import pytest

from .cluster import Cluster, wait_for
from .conftest import _require_docker

pytestmark = pytest.mark.docker
FAST = {"fake_gpus": "RTX 4090:24", "price": "0.40", "grace": "2s", "retention": "12s"}


@pytest.fixture
def pg_cluster(pg_server):
    _require_docker()
    c = Cluster(Path(tempfile.mkdtemp(prefix="shellrent-test-")), env={"BROKER_DB": pg_server.fresh_schema()})
    try:
        del c.env["BROKER_DB"]  # from here on, every command finds the database through the home
        yield c
    finally:
        c.close()


def _ctl_json(c, *args):
    r = c.ssh(*args, "--json", user="ctl")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_a_broker_on_postgresql_rents_settles_and_survives_kill_9(pg_cluster):
    c = pg_cluster
    remembered = c.bhome / "database"
    assert stat.S_IMODE(remembered.stat().st_mode) == 0o600 and remembered.read_text().startswith("postgresql")
    assert not (c.bhome / "broker.db").exists()
    c.start_broker()
    c.add_host("pc1", FAST)
    c.broker("renter", "credit", "alice", "5")
    wait_for(lambda: _ctl_json(c, "offers"), what="the host's offer")
    lease = _ctl_json(c, "rent", "--hours", "1", "--yes")
    assert lease["state"] == "active"
    assert c.ssh("echo hello > /workspace/f && cat /workspace/f", check=True).stdout == b"hello\n"

    c.kill("broker")  # -9: the lease runs on (hostd enforces it); the new broker reads it back
    c.start_broker()
    c.wait_connected("pc1")
    assert c.ssh("cat /workspace/f", check=True).stdout == b"hello\n"
    assert [row["id"] for row in _ctl_json(c, "ls")] == [lease["id"]]

    out = c.ssh("release", lease["id"], user="ctl", check=True)
    assert out.stdout.decode().startswith(f"lease {lease['id']} released after ")
    assert _ctl_json(c, "ls")[0]["state"] in ("ended", "purged")
    ledger = json.loads(c.broker("ledger", "--json").stdout)
    assert sum(ledger["balances"].values()) == 0
    kinds = [t["kind"] for t in ledger["transactions"] if t["lease"] == lease["id"]]
    assert kinds == ["hold", "settle"]
    balance = _ctl_json(c, "balance")
    assert balance["held_micro"] == 0 and 0 <= 5_000_000 - balance["balance_micro"] < 400_000
    leases = json.loads(c.broker("lease", "list", "--json").stdout)
    assert [(r["id"], r["gpus"] and len(r["gpus"])) for r in leases] == [(lease["id"], 1)]

    r = c.broker("backup", str(c.root / "copy.db"), check=False)
    assert r.returncode == 1 and b"PostgreSQL" in r.stderr and len(r.stderr.splitlines()) == 1
    logs = [p.read_text() for p in (c.bhome / "audit.log", c.root / "broker.log") if p.exists()]
    assert logs and not any("postgresql://" in text for text in logs)  # the URL may hold a password


def test_a_bad_database_url_is_one_line_and_makes_no_home(tmp_path):
    from .cluster import BIN, run
    home = tmp_path / "b"
    for url, says in (("mysql://x/y", b"--db takes a PostgreSQL URL"),
                      (f"postgresql:///nodb?host={tmp_path}", b"cannot open the broker's PostgreSQL database")):
        r = run(BIN / "broker", "--home", home, "init", "--db", url, check=False, env=dict(os.environ))
        assert r.returncode == 1 and says in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (home / "database").exists() and not (home / "ssh_host_ed25519_key").exists()
