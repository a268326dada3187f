"""Cluster cases of the benchmark (scripts/bench --cluster): two brokers of one throwaway PostgreSQL
(serve --peer), one host whose tunnel is on broker A, and one lease; side by side in one run:

- a peered session (renter -> broker B -> peer link -> broker A -> host) against a direct one
  (renter -> broker A -> host): `ssh true`, download, upload, keystroke round trip;
- the store's latency for a login (key lookup + the renter's leases), a rent (open_lease: locks, GPU
  check, insert, hold) and a settlement, on SQLite and on PostgreSQL, in-process;
- failover after kill -9 of the broker that holds the host: to the host reconnected to the other one,
  and to a new login through the survivor working (p50 and max over several kills);
- three brokers of one database, each with 1,000 light hosts and 1,000 open sessions (bench_scale's):
  each broker's RSS and CPU at rest.
"""
import asyncio
import json
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]
from bench import alternate, keystrokes, p99, timed  # noqa: E402
from tests.cluster import Cluster, wait_for  # noqa: E402
from tests.pg import PgServer  # noqa: E402

FAST = {"fake_gpus": "RTX 4090:24,RTX 4090:24", "price": "0.10", "grace": "2s"}


def _status(c, name):
    return json.loads(c.hostd(name, "status", "--json").stdout)


def _pair(url: str, work: Path) -> tuple[Cluster, Cluster]:
    a = Cluster(work / "a", env={"BROKER_DB": url})
    b = Cluster(work / "b", env={"BROKER_DB": url}, init=("--keys-from", a.bhome), renter=False)
    b.key = a.key
    for c in (a, b):
        c.start_broker("--peer", "127.0.0.1:0")
    return a, b


def store_latency(pg: PgServer, work: Path, n: int) -> dict:
    """Median ms of the store calls behind a login, a rent and a settlement, per backend."""
    from shellrent.broker import ledger
    from shellrent.broker.store import Store
    from shellrent.broker.store.postgres import Store as PgStore
    out = {}
    for name, store in (("sqlite", Store(work / "lat.db")), ("postgres", PgStore(pg.fresh_schema()))):
        store.add_renter("alice", "SHA256:alice", "ssh-ed25519 AAAA")
        store.post("deposit:x", "deposit", ledger.deposit("alice", 10**12), renter="alice")
        store.add_token("pc1", "h", time.time() + 3600)
        store.consume_token("h", "SHA256:pc1", "ssh-ed25519 BBBB", time.time())
        login, rent, settle = [], [], []
        for i in range(n):
            t = time.perf_counter()
            store.renter_by_key("SHA256:alice")
            store.leases("alice", True)
            login.append((time.perf_counter() - t) * 1000)
            lid = secrets.token_hex(4)
            t = time.perf_counter()
            with store.tx():
                store.lock(*sorted({ledger.hold_account("alice"), ledger.renter("alice"), "host:pc1"}))
                store.busy_gpus("pc1")
                store.live_count("alice")
                store.insert_lease({"id": lid, "renter": "alice", "host": "pc1", "image": "x", "state": "active",
                                    "created": time.time(), "ends_at": time.time() + 60, "gpus": [f"GPU-{lid}0000"],
                                    "held": 1000, "price": 1000})
                store.post(ledger.hold_key(lid), "hold", ledger.hold("alice", 1000), lease=lid, renter="alice")
            rent.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            with store.tx():
                store.lease(lid, for_update=True)
                store.update_lease(lid, expect_state="active", state="ended", ended=time.time())
                store.post(ledger.settle_key(lid), "settle", ledger.settle("alice", "pc1", 1000, 500, 10), lease=lid,
                           renter="alice")
            settle.append((time.perf_counter() - t) * 1000)
        store.close()
        out[name] = {k: round(statistics.median(v), 3) for k, v in
                     (("login_ms", login), ("rent_ms", rent), ("settle_ms", settle))}
    return out


def failover(pg: PgServer, work: Path, kills: int) -> dict:
    """Seconds from kill -9 of the host's broker to the host on the other one, and to a new login
    through the survivor working (the lease's shell)."""
    moved, login = [], []
    a, b = _pair(pg.fresh_schema(), work / "f")
    try:
        a.add_host("pc1", FAST)
        a.broker("renter", "credit", "alice", "100")
        wait_for(lambda: json.loads(b.ssh("offers", "--json", user="ctl").stdout or b"[]"), what="the offer")
        b.ssh("rent", "--hours", "1", "--yes", user="ctl", check=True)
        holder, other = a, b
        for _ in range(kills):
            since = _status(a, "pc1")["since"]
            t = time.perf_counter()
            holder.kill("broker", signal.SIGKILL)
            wait_for(lambda: (st := _status(a, "pc1"))["connected"] and st["since"] > since, timeout=30,
                     what="the host to move")
            moved.append(time.perf_counter() - t)
            wait_for(lambda: other.ssh("true").returncode == 0, timeout=30, what="a login through the survivor")
            login.append(time.perf_counter() - t)
            holder.start_broker("--peer", "127.0.0.1:0")  # back, for the next round the other way
            time.sleep(3)  # its heartbeat is in and the host has learned it again
            holder, other = other, holder
    finally:
        b.close()
        a.close()
    return {"failover_host_p50_s": round(statistics.median(moved), 2), "failover_host_max_s": round(max(moved), 2),
            "failover_login_p50_s": round(statistics.median(login), 2), "failover_login_max_s": round(max(login), 2)}


def scale(pg: PgServer, work: Path, n: int) -> dict:
    """Three brokers of one database, each with n light hosts (bench_scale's) and n renter sessions
    through it, all open at once: each broker's RSS and CPU at rest."""
    import bench_scale
    from shellrent.broker.store.postgres import Store as PgStore
    url = pg.fresh_schema()
    cs = []
    try:
        for i in range(3):
            extra = {"init": ("--keys-from", cs[0].bhome), "renter": False} if i else {}
            cs.append(Cluster(work / f"s{i}", env={"BROKER_DB": url, **bench_scale.ENV}, **extra))
            cs[-1].key = cs[0].key
            cs[-1].start_broker("--peer", "127.0.0.1:0")
        cs[0].broker("renter", "credit", "alice", "1000000", "--yes")

        async def measure() -> dict:
            scales = []
            try:
                for i, c in enumerate(cs):  # one broker at a time: the load generator is this one process
                    s = bench_scale.Scale(c, c.procs["broker"].pid, store=PgStore(url), prefix=f"s{i}h")
                    scales.append(s)
                    await s.add_hosts(n)
                    leases = await bench_scale._gather(s.rent(j) for j in range(max(1, n // 4)))
                    await s.open_sessions(leases, n)
                rest = [await s.at_rest(5) for s in scales]
            finally:
                for s in scales:
                    await s.close()
            return {"scale3_n": n, "scale3_rss_mb": [round(r[0], 1) for r in rest],
                    "scale3_cpu_pct": [round(r[1], 1) for r in rest]}
        return asyncio.run(measure())
    finally:
        for c in reversed(cs):
            c.close()


def run(quick: bool) -> tuple[list[tuple], dict]:
    size = 8 if quick else 512
    runs = 3 if quick else 8
    rows, out = [], {}
    work = Path(tempfile.mkdtemp(prefix="shellrent-bench-cluster-"))
    pg = PgServer()
    try:
        a, b = _pair(pg.fresh_schema(), work)
        try:
            a.add_host("pc1", FAST)
            a.broker("renter", "credit", "alice", "1000")
            wait_for(lambda: json.loads(b.ssh("offers", "--json", user="ctl").stdout or b"[]"), what="the offer")
            lid = json.loads(b.ssh("rent", "--hours", "2h", "--yes", "--json", user="ctl", check=True).stdout)["id"]
            direct, peered = a.ssh_cmd(f"rent+{lid}", "-F", "/dev/null"), b.ssh_cmd(f"rent+{lid}", "-F", "/dev/null")

            def pair(name, unit, x, y, key):
                mx, my = statistics.median(x), statistics.median(y)
                rows.append((name, f"{mx:.2f} ({min(x):.2f}-{max(x):.2f})", f"{my:.2f} ({min(y):.2f}-{max(y):.2f})",
                             f"{mx / my:.2f}" if my else "-", unit))
                out[f"peered_{key}"], out[f"direct_{key}"] = round(mx, 3), round(my, 3)

            x, y = alternate(runs * 3, lambda: timed(peered + ["true"]) * 1000, lambda: timed(direct + ["true"]) * 1000)
            pair("ssh ... true", "ms", x, y, "true_ms")
            down = f"head -c {size}M /dev/zero"
            x, y = alternate(runs, lambda: size / timed(peered + [down]), lambda: size / timed(direct + [down]))
            pair(f"download {size} MiB", "MiB/s", x, y, "download_mbps")

            def up(argv):
                with subprocess.Popen(["head", "-c", f"{size}M", "/dev/zero"], stdout=subprocess.PIPE) as src:
                    return size / timed(argv + ["cat > /dev/null"], stdin=src.stdout)
            x, y = alternate(runs, lambda: up(peered), lambda: up(direct))
            pair(f"upload {size} MiB", "MiB/s", x, y, "upload_mbps")
            n = 200 if quick else 1000
            x = asyncio.run(keystrokes(b.ssh_port, a.key, f"rent+{lid}", n))
            y = asyncio.run(keystrokes(a.ssh_port, a.key, f"rent+{lid}", n))
            pair("keystroke round trip, median", "ms", x, y, "rtt_ms")
            rows.append(("keystroke round trip, p99", f"{p99(x):.2f}", f"{p99(y):.2f}", f"{p99(x) / p99(y):.2f}", "ms"))
        finally:
            b.close()
            a.close()
        lat = store_latency(pg, work, 20 if quick else 200)
        for what in ("login_ms", "rent_ms", "settle_ms"):
            rows.append((f"store: {what[:-3]} (PostgreSQL vs SQLite)", f"{lat['postgres'][what]:.2f}",
                         f"{lat['sqlite'][what]:.2f}", f"{lat['postgres'][what] / lat['sqlite'][what]:.2f}", "ms"))
        out["store"] = lat
        out.update(failover(pg, work, 2 if quick else 5))
        out.update(scale(pg, work, 30 if quick else 1000))
        rows.append((f"3 brokers x {out['scale3_n']:,} hosts + {out['scale3_n']:,} sessions: RSS per broker",
                     " / ".join(f"{r:.0f}" for r in out["scale3_rss_mb"]), "-", "-", "MiB"))
        rows.append(("... their CPU at rest", " / ".join(f"{c:.1f}" for c in out["scale3_cpu_pct"]), "-", "-", "%"))
        rows.append(("failover after kill -9: host on the other broker, p50 / max",
                     f"{out['failover_host_p50_s']:.2f} / {out['failover_host_max_s']:.2f}", "-", "-", "s"))
        rows.append(("failover after kill -9: a login through the survivor works, p50 / max",
                     f"{out['failover_login_p50_s']:.2f} / {out['failover_login_max_s']:.2f}", "-", "-", "s"))
    finally:
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)
    return rows, out


def main(quick: bool, json_path: Path | None) -> int:
    rows, out = run(quick)
    head = ("cluster case", "peered / PostgreSQL (min-max)", "direct / SQLite (min-max)", "ratio", "unit")
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(5)]
    for r in [head] + rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip())
    if json_path:
        json_path.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main("--quick" in sys.argv, Path(sys.argv[sys.argv.index("--json") + 1]) if "--json" in sys.argv else None))
