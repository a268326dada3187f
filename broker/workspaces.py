"""Kept workspaces: a renter's ended leases whose /workspace their host still keeps (for the host's
retention), listed by `ctl workspaces` and taken by a new lease with `ctl rent --workspace LEASE`."""
from .errors import BrokerError, NotFound
from .inventory import RETENTION


def until(lease: dict, host: dict | None) -> float:
    """When the host purges an ended lease's workspace."""
    retention = ((host or {}).get("inventory") or {}).get("retention", RETENTION)
    return (lease["ended"] or lease["ends_at"]) + retention


def kept(leases: list[dict], hosts: dict[str, dict], now: float) -> list[dict]:
    """The ended leases among leases whose workspace is still kept, oldest first: what `ctl
    workspaces` lists (size: the lease's disk share, as its host said, or its host's share per GPU)."""
    rows = []
    for lease in leases:
        host = hosts.get(lease["host"])
        if lease["state"] != "ended" or until(lease, host) <= now:
            continue
        per_gpu = ((host or {}).get("inventory") or {}).get("disk_per_gpu", 0)
        rows.append({"lease": lease["id"], "host": lease["host"], "gpu_name": lease["gpu_name"],
                     "size_gb": round(lease.get("disk_gb") or per_gpu * max(1, len(lease["gpus"])), 1),
                     "ended": lease["ended"], "until": until(lease, host)})
    return sorted(rows, key=lambda r: r["until"])


def usable(old: dict | None, renter: str, host: dict | None, now: float, lease_id: str) -> dict:
    """The ended lease whose workspace renter may take now; a one-line BrokerError if none."""
    if old is None or old["renter"] != renter:  # the same words whether it exists or not
        raise BrokerError(f"no lease {lease_id!r} for renter {renter}")
    if old["state"] == "purged":
        raise BrokerError(f"the workspace of lease {old['id']} is no longer kept (purged, or taken by a later lease)")
    if old["state"] != "ended":
        raise BrokerError(f"lease {old['id']} is {old['state']}: only an ended lease's workspace can be taken")
    if until(old, host) <= now:
        raise BrokerError(f"the workspace of lease {old['id']} is past its host's retention")
    return old


def check_kept(store, lease: dict) -> None:
    """Inside the transaction that opens lease: its workspace's lease is the renter's, ended, kept,
    and no other live lease is taking it."""
    ws = lease["workspace"]
    try:
        old = store.lease(ws, for_update=True)
    except NotFound:  # the same words as another renter's lease
        old = None
    try:
        host = store.host(old["host"]) if old else None
    except NotFound:
        host = None
    usable(old, lease["renter"], host, lease["created"], ws)
    if old["host"] != lease["host"]:
        raise BrokerError(f"the workspace of lease {ws} is on host {old['host']}, not {lease['host']}")
    taking = [other["id"] for other in store.leases(lease["renter"], live_only=True) if other.get("workspace") == ws]
    if taking:
        raise BrokerError(f"lease {taking[0]} is taking the workspace of lease {ws} already")
