"""The end of a lease is told, with its reason, on every open session before it closes, and `ctl ls`,
`ctl show` and `ctl release` give the end, the reason and the cost. Real broker, hostd, Docker and
OpenSSH."""
import json
import subprocess

import pytest

from .cluster import Cluster, run, wait_for

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
