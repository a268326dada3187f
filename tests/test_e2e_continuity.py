"""Carrying on: a new lease takes an ended lease's /workspace (`ctl rent --workspace`, `ctl
workspaces`), and an auto-extended lease runs past its first end, billed for the time it ran, until
the credit runs out (told first in the container). Real broker, hostd, Docker and OpenSSH."""
import json
import subprocess

import pytest

from .cluster import Cluster, run, wait_for
from .faults.records import host_leases

pytestmark = pytest.mark.docker


def _ctl(c: Cluster, *args, key=None, check=True):
    return c.ssh(*args, user="ctl", key=key, check=check)


def _rent(c: Cluster, *args, key=None) -> dict:
    return json.loads(_ctl(c, "rent", *args, "--yes", "--json", key=key).stdout)


def _ls(c: Cluster) -> dict:
    return {row["id"]: row for row in json.loads(_ctl(c, "ls", "--json").stdout)}


def _refused(proc, *words) -> str:
    err = proc.stderr.decode() + proc.stdout.decode()
    assert proc.returncode == 2 and len(err.strip().splitlines()) == 1 and all(w in err for w in words), err
    return err


def test_a_new_lease_takes_an_ended_leases_workspace_and_no_one_else_can(fresh_cluster):
    c = fresh_cluster
    c.add_host("pc1", {"fake_gpus": "RTX 4090:24,RTX 4090:24", "disk_per_gpu": "1", "price": "1"})
    bob = c.new_key("bob")
    c.broker("renter", "add", "bob", "--key", f"{bob}.pub")
    c.broker("renter", "credit", "alice", "10")
    c.broker("renter", "credit", "bob", "10")
    wait_for(lambda: _ctl(c, "offers", "--json").stdout != b"[]\n", what="the offer")
    first = _rent(c, "--hours", "1")["id"]
    c.ssh("sh", "-c", "'echo kept > /workspace/data.txt; mkdir /workspace/d; echo x > /workspace/d/y'",
          user=f"rent+{first}", check=True)
    _refused(_ctl(c, "rent", "--workspace", first, "--hours", "1", "--yes", check=False), "is active")
    _ctl(c, "release", first)
    wait_for(lambda: [w["lease"] for w in json.loads(_ctl(c, "workspaces", "--json").stdout)] == [first],
             what="the kept workspace")
    assert f"rent --workspace {first}" in _ctl(c, "workspaces").stdout.decode()

    # another renter cannot name it, nor learn that it exists
    _refused(_ctl(c, "rent", "--workspace", first, "--hours", "1", "--yes", key=bob, check=False),
             f"no lease '{first}' for renter bob")
    _refused(_ctl(c, "rent", "--workspace", "0123abcd", "--hours", "1", "--yes", key=bob, check=False),
             "no lease '0123abcd' for renter bob")
    assert json.loads(_ctl(c, "workspaces", "--json", key=bob).stdout) == []

    # taken with two GPUs: the files are there, the filesystem grown to the larger share
    second = _rent(c, "--workspace", first, "--hours", "1", "--gpus", "2")
    assert second["host"] == "pc1" and second["gpus"] == 2
    out = c.ssh("sh", "-c", "'cat /workspace/data.txt /workspace/d/y; df -k --output=size /workspace | tail -1'",
                user=f"rent+{second['id']}", check=True).stdout.decode().split()
    assert out[:2] == ["kept", "x"] and int(out[2]) > 1.5 * 1024 * 1024, out
    rows = _ls(c)
    assert rows[first]["state"] == "purged" and rows[second["id"]]["state"] == "active"
    assert json.loads(_ctl(c, "workspaces", "--json").stdout) == []
    # the old lease's files view has ended; the workspace cannot be taken twice
    gone = run("sftp", "-b", "-", "-P", str(c.ssh_port), *c.ssh_opts(), f"rent+{first}@127.0.0.1",
               input=b"ls\n", check=False)
    assert gone.returncode != 0
    _refused(_ctl(c, "rent", "--workspace", first, "--hours", "1", "--yes", check=False), "no longer kept")

    # the host's GPUs taken: one line, no lease, nothing held, no container
    _ctl(c, "release", second["id"])
    wait_for(lambda: _ls(c)[second["id"]]["state"] == "ended", what="the second lease to end")
    wait_for(lambda: _ctl(c, "offers", "--json").stdout != b"[]\n", what="the GPUs back on offer")
    taken = _rent(c, "--gpus", "2", "--hours", "1", key=bob)["id"]
    before = set(c.containers())
    _refused(_ctl(c, "rent", "--workspace", second["id"], "--hours", "1", "--yes", check=False),
             "has 0 GPU(s) free now")
    assert set(c.containers()) == before and len(_ls(c)) == 2
    assert json.loads(_ctl(c, "balance", "--json").stdout)["held_micro"] == 0
    _ctl(c, "release", taken, key=bob)

    # taken again with one GPU: the workspace keeps its size, and the lease its larger share
    wait_for(lambda: _ctl(c, "offers", "--json").stdout != b"[]\n", what="the GPUs back on offer")
    third = _rent(c, "--workspace", second["id"], "--hours", "1")["id"]
    size = c.ssh("df -k --output=size /workspace | tail -1", user=f"rent+{third}", check=True).stdout
    assert int(size) > 1.5 * 1024 * 1024
    assert host_leases(c)[third]["disk_gb"] > 1.5
    _ctl(c, "release", third)
    wait_for(lambda: _ls(c)[third]["state"] == "ended", what="the third lease to end")
    (kept,) = json.loads(_ctl(c, "workspaces", "--json").stdout)
    assert kept["lease"] == third and kept["size_gb"] == pytest.approx(2, abs=0.1) and kept["until"] > kept["ended"]

    # the host offline: one line that says so
    c.kill("hostd-pc1")
    wait_for(lambda: _ctl(c, "offers", "--json").stdout == b"[]\n", what="the host to go")
    _refused(_ctl(c, "rent", "--workspace", third, "--hours", "1", "--yes", check=False), "offline")
    ledger = json.loads(c.broker("ledger", "--json").stdout)
    assert sum(ledger["balances"].values()) == 0 and ledger["balances"].get("hold:alice", 0) == 0


def test_an_auto_extended_lease_runs_past_its_end_until_the_credit_runs_out(fresh_cluster):
    c = fresh_cluster
    # 36 credits per GPU-hour: 0.01 a second; 0.25 credits pay for two 10 s steps, not three
    c.add_host("pc1", {"fake_gpus": "RTX 4090:24", "price": "36", "grace": "1s"})
    c.broker("renter", "credit", "alice", "0.25")
    wait_for(lambda: _ctl(c, "offers", "--json").stdout != b"[]\n", what="the offer")
    lease = _rent(c, "--hours", "10s", "--auto-extend")
    lid = lease["id"]
    assert lease["auto_extend"] == "on, by 10s"
    session = subprocess.Popen(c.ssh_cmd(f"rent+{lid}") + ["sleep 300"], stdin=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first_end = lease["ends_at"]
    wait_for(lambda: _ls(c)[lid]["ends_at"] > first_end, timeout=30, what="the first auto-extension")
    assert "AUTO-EXTEND" in (table := _ctl(c, "ls").stdout.decode()) and "on, by 10s" in table
    wait_for(lambda: "not extending: not enough credit" in _ls(c)[lid].get("auto_extend", ""), timeout=40,
             what="auto-extend to stop for the credit")
    told = session.communicate(timeout=60)[1].decode(errors="replace")
    assert "unless auto-extend extends it first" in told, told
    assert "will NOT be extended: not enough credit" in told, told
    assert f"lease {lid} has ended: its time ran out" in told, told
    assert told.index("will NOT be extended") < told.index("has ended")
    row = wait_for(lambda: _ls(c)[lid]["state"] == "ended" and _ls(c)[lid], what="the end")
    assert row["reason"] == "its time ran out"
    assert row["ends_at"] == pytest.approx(first_end + 10, abs=0.01)  # one step added, not two
    assert row["billed"] in ("19s", "20s") and row["cost_micro"] == pytest.approx(10_000 * 20, abs=10_000), row
    balance = json.loads(_ctl(c, "balance", "--json").stdout)
    assert balance["held_micro"] == 0 and balance["balance_micro"] == 250_000 - row["cost_micro"]
    wait_for(lambda: not c.containers(), what="the container to go")
