"""What ctl shows of a lease: its view (time left, price, end and reason, cost, billed time) and
what each lease cost, from the renter's journal."""
import math
import time

from shellrent.common import protocol

from . import ledger
from .leases import credits, format_duration


def costs(txs: list[dict]) -> dict[str, int]:
    """What each lease has cost its renter so far (the provider's and the platform's shares of its
    settlement and corrections), from the renter's journal."""
    out: dict[str, int] = {}
    for t in txs:
        if t["lease"]:
            paid = sum(e["amount"] for e in t["entries"]
                       if e["account"].startswith(ledger.PROVIDERS) or e["account"] == ledger.FEES)
            out[t["lease"]] = out.get(t["lease"], 0) + paid
    return out


def when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t)) if t else "-"


def auto_text(lease: dict) -> str:
    """Auto-extend as ctl shows it: off, on (by its step), or on but stopping, and why."""
    if not lease.get("auto"):
        return "off"
    step = f"on, by {format_duration(lease['auto'])}"
    return f"{step}; not extending: {lease['auto_note']}" if lease.get("auto_note") else step


def lease_view(lease: dict, now: float, cost: int | None = None) -> dict:
    gpus = lease.get("gpus") or []
    left = lease["ends_at"] - now if lease["state"] == "active" else 0
    rate = lease["price"] * len(gpus)
    view = {"id": lease["id"], "state": lease["state"], "host": lease["host"], "gpus": len(gpus),
            "gpu_name": lease.get("gpu_name"), "image": lease["image"], "ends_at": lease["ends_at"],
            "left": format_duration(math.ceil(left)) if left > 0 else "-",
            "price_per_hour": credits(rate), "held": credits(lease["held"]), "held_micro": lease["held"]}
    if lease["state"] in ("pending", "starting", "active"):
        view["auto_extend"] = auto_text(lease)
    if lease["state"] in ("ended", "purged", "failed"):
        why = protocol.END_REASONS.get(lease.get("reason") or "", "")
        if lease.get("reason") == "offline":
            why = f"its host went offline at {when(lease.get('ended'))} and did not come back"
        view.update(ended=lease.get("ended"), ended_at=when(lease.get("ended")),
                    reason=why or (lease.get("error") if lease["state"] == "failed" else "") or "-")
    if cost is not None:
        view.update(cost=credits(cost), cost_micro=cost,
                    billed=format_duration(cost * 3600 // rate) if rate and cost else "0s")
    return view
