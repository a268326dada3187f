"""Both sides' records, the engine's containers and the ledger, read as they are on disk, and the
check that they agree (the convergence rules in README's "Leases")."""
import json
import sqlite3
import subprocess
from contextlib import contextmanager
from pathlib import Path

from ..cluster import Cluster, wait_for

FAST = {"fake_gpus": "RTX 4090:24,RTX 4090:24", "price": "3.60", "grace": "2s", "retention": "1h"}
PRICE = 3_600_000  # micro-credits per GPU-hour: 1,000 per GPU-second, easy to read


def _rows(path, sql, args=()) -> list[dict]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql, args)]
    finally:
        conn.close()


def broker_leases(c: Cluster) -> dict[str, dict]:
    return {r["id"]: r for r in _rows(c.bhome / "broker.db", "SELECT * FROM leases")}


def host_leases(c: Cluster, host: str = "pc1") -> dict[str, dict]:
    return {r["id"]: r for r in _rows(c.hostd_homes[host] / "hostd.db", "SELECT * FROM leases")}


def balances(c: Cluster) -> dict[str, int]:
    return dict((r["account"], r["s"]) for r in _rows(
        c.bhome / "broker.db", "SELECT account, SUM(amount) AS s FROM entries GROUP BY account"))


def settles(c: Cluster, lid: str) -> list[dict]:
    return _rows(c.bhome / "broker.db", "SELECT t.key, t.memo, e.account, e.amount FROM txs t JOIN entries e "
                 "ON e.tx = t.id WHERE t.key = ?", [f"settle:{lid}"])


def charged(c: Cluster, lid: str) -> int:
    """What the provider and the platform got for a lease (0 when it was refunded in full): its
    settlement less the corrections after it."""
    rows = _rows(c.bhome / "broker.db", "SELECT e.account, e.amount FROM txs t JOIN entries e ON e.tx = t.id "
                 "WHERE t.lease = ? AND (t.key = ? OR t.key LIKE ?)", [lid, f"settle:{lid}", f"adjust:{lid}:%"])
    return sum(e["amount"] for e in rows if e["account"] in ("provider:pc1", "platform:fees"))


def running(c: Cluster, host: str = "pc1") -> dict[str, str]:
    """lease id -> status of this hostd's lease containers, as the engine says."""
    out = subprocess.run(["docker", "ps", "-a", "--filter", f"label=shellrent.hostd={c.owner(host)}",
                          "--format", '{{.Label "shellrent.lease"}} {{.State}} {{.Names}}'],
                         capture_output=True, text=True, check=True).stdout
    return {lid: state for lid, state, name in (line.split() for line in out.splitlines())
            if not name.endswith("-files")}


def disagreements(c: Cluster, host: str = "pc1") -> list[str]:
    """Everything on which broker, hostd, the engine and the ledger do not agree; [] when they do."""
    ours, theirs, engine, bal = broker_leases(c), host_leases(c, host), running(c, host), balances(c)
    out = []
    for lid, lease in ours.items():
        rec = theirs.get(lid)
        if lease["state"] == "active":
            if not rec or rec["state"] != "active":
                out.append(f"{lid}: active at the broker, {rec and rec['state']} on the host")
            elif abs(rec["ends_at"] - lease["ends_at"]) > 0.001:
                out.append(f"{lid}: ends at {lease['ends_at']} at the broker, {rec['ends_at']} on the host")
            if engine.get(lid) != "running":
                out.append(f"{lid}: active, but its container is {engine.get(lid)}")
        elif lid in engine:
            out.append(f"{lid}: {lease['state']} at the broker, but its container is {engine[lid]}")
        if lease["state"] in ("ended", "purged", "failed") and lease["host_ended"] is None:
            out.append(f"{lid}: {lease['state']}, its host has not confirmed it gone")
        if (lease["state"] in ("pending", "starting", "active")) == bool(settles(c, lid)):
            out.append(f"{lid}: {lease['state']} and {'settled' if settles(c, lid) else 'not settled'}")
    for lid, rec in theirs.items():
        if rec["state"] == "active" and ours.get(lid, {}).get("state") != "active":
            out.append(f"{lid}: active on the host, {ours.get(lid, {}).get('state')} at the broker")
    for lid in engine:
        if theirs.get(lid, {}).get("state") not in ("active", "ending"):
            out.append(f"{lid}: a container with no live lease on the host")
    if sum(bal.values()):
        out.append(f"the ledger does not sum to zero: {bal}")
    live_held = sum(x["held"] for x in ours.values() if x["state"] in ("pending", "starting", "active"))
    if bal.get("hold:alice", 0) != live_held:
        out.append(f"held {bal.get('hold:alice', 0)} but live leases hold {live_held}")
    return out


def wait_agree(c: Cluster, timeout: float = 60, host: str = "pc1") -> None:
    last = []

    def agree():
        last[:] = disagreements(c, host)
        return not last
    try:
        wait_for(agree, timeout=timeout, what="broker, hostd, the engine and the ledger to agree")
    except AssertionError:
        raise AssertionError(f"they still disagree: {last}") from None


def ctl(c: Cluster, *args, **kw):
    return c.ssh(*args, user="ctl", **kw)


def ctl_json(c: Cluster, *args):
    r = ctl(c, *args, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def market(c: Cluster, settings: dict | None = None) -> None:
    c.add_host("pc1", {**FAST, **(settings or {})})
    c.broker("renter", "credit", "alice", "100")
    wait_for(lambda: ctl_json(c, "offers"), what="the host's offer")


def restart_broker(c: Cluster, faults: str = "") -> None:
    """Start the broker again (after a kill) with these fault points armed (none by default)."""
    reap(c, "broker")
    c.env["SHELLRENT_FAULTS"] = faults
    c.start_broker()
    c.wait_connected("pc1")


def reap(c: Cluster, key: str) -> None:
    """Forget a process that died (killed itself at a fault point), once it has."""
    proc = c.procs.pop(key, None)
    if proc:
        proc.wait(timeout=30)


@contextmanager
def own_cluster(root: Path, env: dict | None = None, with_market: bool = True):
    """A cluster with settings of its own: broker running, and (by default) pc1 offering two GPUs."""
    from ..conftest import _require_docker
    _require_docker()
    c = Cluster(root, env=env)
    try:
        c.start_broker()
        if with_market:
            market(c)
        yield c
    finally:
        c.close()
