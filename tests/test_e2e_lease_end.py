"""The end of a lease is told, with its reason, on every open session before it closes, and `ctl ls`,
`ctl show` and `ctl release` give the end, the reason and the cost. Real broker, hostd, Docker and
OpenSSH."""
import json
import subprocess
import time

import pytest

from .cluster import BIN, Cluster, run, wait_for

pytestmark = pytest.mark.docker


def _sessions(c: Cluster, lid: str) -> list[subprocess.Popen]:
    """A plain command and a terminal session, both open in the lease."""
    out = []
    for extra in ([], ["-tt"]):
        out.append(subprocess.Popen(c.ssh_cmd(f"rent+{lid}", *extra) + ["sleep 300"], stdin=subprocess.PIPE,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    wait_for(lambda: c.ssh("ps -eo args", user=f"rent+{lid}", check=True).stdout.decode().count("sleep 300") == 2,
             what="both sessions")
    return out


def _told(sessions: list[subprocess.Popen]) -> list[str]:
    return [s.communicate(timeout=60)[1].decode(errors="replace") for s in sessions]


def _ls(c: Cluster) -> dict:
    return {row["id"]: row for row in json.loads(c.ssh("ls", "--json", user="ctl", check=True).stdout)}


def test_time_up_a_lost_container_and_a_release_are_each_told_with_their_reason(fresh_cluster):
    c = fresh_cluster
    c.add_host("pc1", {"fake_gpus": "RTX 4090:24,RTX 4090:24,RTX 4090:24", "grace": "1s"})
    c.broker("renter", "credit", "alice", "10")
    wait_for(lambda: c.ssh("offers", "--json", user="ctl", check=True).stdout != b"[]\n", what="the offer")
    rent = lambda hours: json.loads(c.ssh("rent", "--hours", hours, "--yes", "--json", user="ctl",  # noqa: E731
                                          check=True).stdout)["id"]
    short, lost, released = rent("25s"), rent("1"), rent("1")

    timed, gone, freed = _sessions(c, short), _sessions(c, lost), _sessions(c, released)
    run("docker", "rm", "-f", f"shellrent-{lost}")  # the container goes from under the lease
    r = c.ssh("release", released, user="ctl", check=True)
    assert r.stdout.decode().startswith(f"lease {released} released after ")
    assert " billed: cost 0.0" in r.stdout.decode() and " refunded" in r.stdout.decode()
    for told in _told(freed):
        assert f"shellrent: lease {released} has ended: it was released" in told, told
    for told in _told(gone):
        assert f"shellrent: lease {lost} has ended: its container stopped" in told, told
    for told in _told(timed):
        assert f"shellrent: lease {short} has ended: its time ran out" in told, told

    wait_for(lambda: all(_ls(c)[lid]["state"] == "ended" for lid in (short, lost, released)), what="the ends")
    rows = _ls(c)
    assert rows[short]["reason"] == "its time ran out"
    assert rows[lost]["reason"] == "its container stopped and could not be started again"
    assert rows[released]["reason"] == "it was released"
    for lid in (short, lost, released):
        row = rows[lid]
        assert row["ended"] and row["cost_micro"] >= 0 and row["cost"] == f"{row['cost_micro'] / 1e6:.2f}"
    assert rows[short]["cost_micro"] > 0 and rows[short]["billed"] in {f"{n}s" for n in range(20, 26)}
    show = c.ssh("show", short, user="ctl", check=True).stdout.decode()
    assert "reason          its time ran out" in show and "cost            " in show
    table = c.ssh("ls", user="ctl", check=True).stdout.decode()
    assert "ENDED BECAUSE" in table.upper() and "it was released" in table
    # the ledger balances: what each lease cost went to the provider and the platform
    ledger = json.loads(c.broker("ledger", "--json").stdout)
    assert sum(ledger["balances"].values()) == 0 and ledger["balances"].get("hold:alice", 0) == 0
    wait_for(lambda: not c.containers(), what="the containers to go")


def test_a_ban_stops_the_banned_hosts_containers_whether_it_is_connected_or_comes_back(fresh_cluster):
    c = fresh_cluster
    c.add_host("pc1", {"grace": "1s"})
    c.add_host("pc2", {"grace": "1s"})
    on1, on2 = c.create_lease("pc1"), c.create_lease("pc2")
    session = _sessions(c, on1)
    c.kill("hostd-pc2")  # pc2 is away when it is banned; its container runs on
    assert c.broker("host", "ban", "pc1").returncode == 0 and c.broker("host", "ban", "pc2").returncode == 0
    for told in _told(session):
        assert f"shellrent: lease {on1} has ended: the operator removed its host" in told, told
    wait_for(lambda: len(c.containers()) == 1, what="the connected banned host to stop its lease's container")
    status = lambda: json.loads(c.hostd("pc1", "status", "--json").stdout)  # noqa: E731
    wait_for(lambda: "banned" in (status().get("error") or ""), what="hostd to say it is banned")
    c._spawn("hostd-pc2", [BIN / "hostd", "--home", c.hostd_homes["pc2"], "run"])  # refused: it ends its lease
    wait_for(lambda: not c.containers(), what="the banned host to end its lease itself when it comes back")
    assert "banned" in (json.loads(c.hostd("pc2", "status", "--json").stdout).get("error") or "")
    rows = {lease["id"]: lease for lease in json.loads(c.broker("lease", "list", "--json").stdout)}
    assert rows[on1]["state"] == rows[on2]["state"] == "ended"
    assert rows[on1]["reason"] == rows[on2]["reason"] == "banned"
    ledger = json.loads(c.broker("ledger", "--json").stdout)
    assert sum(ledger["balances"].values()) == 0 and ledger["balances"].get("hold:alice", 0) == 0


def test_a_lease_whose_host_stays_away_ends_when_the_host_went_and_frees_the_hold(tmp_path):
    c = Cluster(tmp_path, env={"BROKER_HOST_LOST": "4"})
    try:
        c.start_broker()
        c.add_host("pc1", {"fake_gpus": "RTX 4090:24", "grace": "1s"})
        c.broker("renter", "credit", "alice", "10")
        wait_for(lambda: c.ssh("offers", "--json", user="ctl", check=True).stdout != b"[]\n", what="the offer")
        lid = json.loads(c.ssh("rent", "--hours", "2", "--yes", "--json", user="ctl", check=True).stdout)["id"]
        c.ssh("echo kept > /workspace/f", check=True)
        c.kill("hostd-pc1")  # -9: the host goes, its container runs on
        went = time.time()
        wait_for(lambda: _ls(c)[lid]["state"] == "ended", timeout=30, what="the lease to end once its host is lost")
        row = _ls(c)[lid]
        assert time.time() - went >= 4 and row["ended"] <= went + 1
        assert row["reason"].startswith("its host went offline at ") and row["reason"].endswith("did not come back")
        balance = json.loads(c.ssh("balance", "--json", user="ctl", check=True).stdout)
        assert balance["held_micro"] == 0 and balance["balance_micro"] == 10_000_000 - row["cost_micro"]
        assert row["cost_micro"] < 10_000  # a few seconds at 0.40 an hour: billed to the moment it went
        assert len(c.containers()) == 1
        c.start_hostd("pc1")  # it comes back: told to stop the lease; the workspace stays for its retention
        wait_for(lambda: not c.containers(), what="the returned host to stop the ended lease's container")
        got = subprocess.run(["sftp", "-P", str(c.ssh_port), *c.ssh_opts(), f"rent+{lid}@127.0.0.1"],
                             input=b"get /workspace/f " + str(tmp_path / "f").encode() + b"\n",
                             capture_output=True, timeout=60)
        assert got.returncode == 0 and (tmp_path / "f").read_text() == "kept\n", got.stderr
        ledger = json.loads(c.broker("ledger", "--json").stdout)["balances"]
        assert sum(ledger.values()) == 0 and ledger.get("hold:alice", 0) == 0
    finally:
        c.close()
