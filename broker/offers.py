"""Offers and the scheduler, pure: free capacity of online, unpaused, in-window hosts.

One offer per host and GPU model: num_gpus is how many of them are free now; renting takes some or
all. dph is the price per hour of the whole offer, in credits.
"""

from . import query
from .errors import BrokerError, NoOffer
from .leases import MICRO, parse_window, window_end


def inet_mbit(inv: dict, leases: int) -> float | None:
    """The Mbit/s a new lease on this host may use each way (its `bandwidth`, and no more than an even
    share of `bandwidth_total` with `leases` others running); None: no cap."""
    caps = [inv["bandwidth"]] if inv.get("bandwidth") else []
    if inv.get("bandwidth_total"):
        caps.append(inv["bandwidth_total"] // (leases + 1))
    return round(min(caps) / 1e6, 3) if caps else None


def host_offers(name: str, inv: dict, used: set[str], reliability: float, now: float, leases: int = 0) -> list[dict]:
    """The offers of one connected host (empty when paused, outside its window, or full); leases: how
    many run on it now (bandwidth_total is shared among them)."""
    if inv.get("paused"):
        return []
    try:
        closes = window_end(now, parse_window(inv.get("window", "always")))
    except BrokerError:
        return []
    shared = set(inv.get("shared", ()))
    groups: dict[tuple, list[str]] = {}
    for g in inv.get("gpus", ()):
        if g["uuid"] in shared and g["uuid"] not in used:
            groups.setdefault((g["name"], g["memory_gb"]), []).append(g["uuid"])
    out = []
    checked = inv.get("checked") or {}
    inet = inet_mbit(inv, leases)
    for (model, mem), uuids in sorted(groups.items()):
        n = len(uuids)
        # Verified: every GPU of the offer passed the host's self-check; tflops: the slowest of them.
        verified = all(u in checked for u in uuids)
        tflops = min(checked[u] for u in uuids) if verified else 0.0
        out.append({
            "id": f"{name}/{model.replace(' ', '_')}", "host_id": name, "gpu_name": model, "num_gpus": n,
            "gpu_ram": mem, "gpu_total_ram": mem * n, "cpu_cores": inv["cpu_per_gpu"] * n,
            "cpu_ram": inv["ram_per_gpu"] * n, "disk_space": inv["disk_per_gpu"] * n,
            "price": inv["price"], "dph": inv["price"] * n / MICRO, "reliability": reliability,
            "cuda_vers": float(inv.get("cuda_version") or 0), "driver_version": str(inv.get("driver_version", "")),
            "geolocation": inv.get("geolocation", ""), "verified": verified, "tflops": tflops, "gpus": uuids,
            "window_end": closes, "images": inv.get("images", "*"),
            "ready": inv.get("ready", []), "inet_down": inet, "inet_up": inet})
    return out


def build(hosts: list[dict], online: set[str], live: list[dict], reliabilities: dict[str, float],
          now: float, memo: dict | None = None) -> list[dict]:
    """Every offer on the market now.

    memo (the caller's, kept between calls) holds each host's last inventory and offers: a host
    whose inventory, used GPUs and reliability are unchanged and whose window is always open gets
    the same offers without parsing or building them again."""
    used: dict[str, set] = {}
    running: dict[str, int] = {}
    for lease in live:
        used.setdefault(lease["host"], set()).update(lease.get("gpus") or ())
        running[lease["host"]] = running.get(lease["host"], 0) + 1
    memo = {} if memo is None else memo
    out = []
    for h in hosts:
        name, inv = h["name"], h.get("inventory")
        if name not in online or not inv:
            continue
        taken, rel, n = frozenset(used.get(name, ())), reliabilities.get(name, 1.0), running.get(name, 0)
        hit = memo.get(name)
        if hit and (hit["inv"] is inv or hit["inv"] == inv) and hit["taken"] == taken and hit["rel"] == rel \
                and hit["n"] == n and hit["always"]:
            out += hit["offers"]
            continue
        offers = host_offers(name, inv, taken, rel, now, n)
        memo[name] = {"inv": inv, "taken": taken, "rel": rel, "n": n, "offers": offers,
                      "always": inv.get("window", "always") == "always"}  # a window's offers depend on now
        out += offers
    for name in memo.keys() - online:
        del memo[name]
    return out


def schedule_key(offer: dict) -> tuple:
    """The scheduler's preference: the smallest GPU that fits, then the lowest price, then reliability."""
    return (offer["gpu_ram"], offer["price"], -offer["reliability"], offer["host_id"])


def choose(offers: list[dict], text: str, gpus: int) -> dict:
    """The offer a `rent` gets: matches the query, has gpus free, best by schedule_key."""
    filters = query.parse(text)
    fits = [o for o in query.select(offers, filters) if o["num_gpus"] >= gpus]
    if not fits:
        raise NoOffer(f"no offer matches {text!r} with {gpus} free GPU(s)" if text.strip()
                      else f"no offer has {gpus} free GPU(s) right now")
    return min(fits, key=schedule_key)
