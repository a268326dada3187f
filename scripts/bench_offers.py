"""Time the offer path over 10,000 offers: building the market from host inventories, parsing a
query, filtering and ordering, and rendering the `ctl offers` table. Prints a table of medians.

usage: .venv/bin/python scripts/bench_offers.py [N_OFFERS]
"""
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from shellrent.broker import offers, query, render
from shellrent.broker.commands import Commands
from shellrent.broker.config import Config
from shellrent.broker.service import Broker
from shellrent.broker.store import Store

MODELS = [("RTX 3060", 12, 100_000), ("RTX 4090", 24, 400_000), ("A100", 80, 1_500_000), ("H100", 80, 2_500_000)]


def inventories(n: int) -> list[dict]:
    rnd = random.Random(1)
    hosts = []
    for i in range(n):
        name, mem, price = rnd.choice(MODELS)
        gpus = [{"index": j, "uuid": f"GPU-{i}-{j}", "name": name, "memory_gb": mem} for j in range(rnd.randint(1, 8))]
        hosts.append({"name": f"h{i}", "joined": 0, "inventory": {  # as the store returns it: parsed
            "gpus": gpus, "shared": [g["uuid"] for g in gpus], "cpu_per_gpu": 8, "ram_per_gpu": 32,
            "disk_per_gpu": 200, "price": price + rnd.randint(0, 50_000), "window": "always", "paused": False,
            "geolocation": rnd.choice(["DE", "FR", "US"]), "cuda_version": 12.4, "driver_version": "550.54"}})
    return hosts


def timed(fn, runs=30):
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        result = fn()
        samples.append((time.perf_counter() - t) * 1000)
    return statistics.median(samples), result


async def _ctl(market: list[dict], line: str) -> float:
    """The ctl command as the broker runs it, with the market already built (as it is cached)."""
    with tempfile.TemporaryDirectory() as tmp:
        broker = Broker(Config(home=Path(tmp)), Store(Path(tmp) / "b.db"))
        m = broker.market  # as if built a moment ago
        m._cache, m._at, m._built = market, time.time(), m._gen
        cmds = Commands(broker, "bench")
        samples = []
        for _ in range(20):
            t = time.perf_counter()
            code, _ = await cmds.run(line)
            samples.append((time.perf_counter() - t) * 1000)
        assert code == 0
        broker.close()
    return statistics.median(samples)


def bench_query(n: int) -> float:
    """Median ms of one query (filter + order) over the offers of n hosts (for scripts/bench)."""
    hosts = inventories(n)
    market = offers.build(hosts, {h["name"] for h in hosts}, [], {}, time.time())[:n]
    filters = query.parse("gpu_ram>=24 num_gpus>=2 dph<=10 geolocation in [DE,FR]")
    return timed(lambda: query.select(market, filters, query.parse_order("dph,gpu_ram-")))[0]


def main(n: int) -> None:
    hosts = inventories(n)
    online = {h["name"] for h in hosts}
    texts = [json.dumps(h["inventory"]) for h in hosts]
    parse_inv_ms, _ = timed(lambda: [json.loads(t) for t in texts], runs=10)  # the store's, once per change
    build_ms, market = timed(lambda: offers.build(hosts, online, [], {}, time.time()), runs=10)
    text, order = "gpu_ram>=24 num_gpus>=2 dph<=10 geolocation in [DE,FR]", "dph,gpu_ram-"
    parse_ms, filters = timed(lambda: query.parse(text))
    select_ms, hits = timed(lambda: query.select(market, filters, query.parse_order(order)))
    choose_ms, _ = timed(lambda: offers.choose(market, text, 2))
    rows = [{**o, "dph": f"{o['dph']:.2f}"} for o in hits]
    render_ms, _ = timed(lambda: render.table(rows, ["id", "gpu_name", "num_gpus", "gpu_ram", "dph"]), runs=10)
    ctl_ms = asyncio.run(_ctl(market, f"offers {text} -o {order}"))
    print(f"{len(market)} offers, {len(hits)} match {text!r}")
    print(f"{'step':40} {'median ms':>10}")
    for step, ms in [("parse every host's inventory (JSON)", parse_inv_ms),
                     ("build offers from host inventories", build_ms), ("parse query", parse_ms),
                     ("filter + order (the query)", select_ms), ("scheduler choice (rent)", choose_ms),
                     ("render table of all matches", render_ms),
                     ("whole `ctl offers` command, no ssh", ctl_ms)]:
        print(f"{step:40} {ms:10.2f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000)
