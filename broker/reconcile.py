"""Reconcile rules 1-8, pure: what the broker does when a host's list of leases meets its own record,
and which operation a lease's host must still be told (docs/leases.md, "Reconciliation").

The broker's lease row decides everything that touches money; the host's entry, what really ran.
decide() returns actions in the order they are to be applied; hostsync applies them.
"""
from dataclasses import dataclass

from shellrent.common import protocol

THEIR_STATES = ("starting", "active", "ending", "ended", "purged", "lost")
GONE = ("ended", "purged", "lost")      # the host has no running container for the lease
OVER = ("ended", "purged", "failed")    # the broker's lease is over


@dataclass(frozen=True)
class Action:
    """One step of a reconcile, about one lease.

    kind: "malformed" (an entry not to trust: logged), "discard" (rule 1: the host removes a lease the
    broker never made), "downs" (times its container was down, as the host stamped them), "ended"
    (rules 3 and 4: it ended there, at `at` when the host said), "retell_end" (rule 2: the host's end
    is not the broker's: tell it again), "purged" (rule 4: the host purged an ended lease), "restop"
    (rule 5: over here, running there: stop it again), "missing" (rule 7: active here, unknown
    there: it ends when the host was last seen down)."""

    kind: str
    lease: str
    at: float | None = None
    downs: object = None


def decide(ours: dict[str, dict], theirs: dict, in_flight: set[str], hello_at: float) -> list[Action]:
    """The actions that make the host's record (`theirs`: lease id -> its entry, unchecked) and the
    broker's (`ours`: lease id -> row, for this host) agree. Leases whose start is under way
    (`in_flight`) or that started after the host listed its leases (at `hello_at`) are not its to
    know yet."""
    actions = []
    for lid, st in theirs.items():
        if not (isinstance(lid, str) and protocol.LEASE_ID.fullmatch(lid) and isinstance(st, dict)
                and st.get("state") in THEIR_STATES):
            actions.append(Action("malformed", str(lid)[:16]))
            continue
        actions += _one(lid, ours.get(lid), st)
    for lid, lease in ours.items():
        if lid in theirs or lid in in_flight or (lease["started"] or lease["created"]) >= hello_at:
            continue
        if lease["state"] == "active":  # rule 7: the host has no record of it
            actions.append(Action("missing", lid))
        # rule 8: over here, unknown there: the sync's stop or discard hears "absent" and frees it
    return actions


def _one(lid: str, lease: dict | None, st: dict) -> list[Action]:
    state = st["state"]
    if lease is None:  # rule 1: a lease the broker never made: the host removes it
        return [] if state == "purged" else [Action("discard", lid)]
    actions = [Action("downs", lid, downs=st.get("downs"))]
    at = st.get("ended_at")
    at = at if isinstance(at, (int, float)) else None  # host_ended checks it as a timestamp
    gone = state in GONE
    if lease["state"] == "active":
        if gone:  # rule 3: it ended there (time up, lost, disk share): it ends here at that time
            actions.append(Action("ended", lid, at))
        elif state == "active" and st.get("ends_at") != lease["ends_at"]:
            actions.append(Action("retell_end", lid))  # rule 2: the end the broker holds wins
    elif lease["state"] in OVER and gone:  # rule 4: both sides agree it is over
        actions.append(Action("ended", lid, at))
        if lease["state"] == "ended" and state == "purged":
            actions.append(Action("purged", lid))
    elif lease["state"] in OVER:  # rule 5: over here, running there: stop it
        actions.append(Action("restop", lid))
    # rule 6: starting here: the start call under way decides (or recovery fails it)
    return actions


def next_push(lease: dict) -> str | None:
    """The operation the lease's host must still acknowledge: "lease.extend" (an end it was not
    told), "lease.stop" (an end whose container it has not confirmed gone), "lease.discard" (a
    failed start's leftovers), or None."""
    if lease["state"] == "active" and lease["host_ends_at"] != lease["ends_at"]:
        return "lease.extend"
    if lease["state"] in ("ended", "purged") and lease["host_ended"] is None:
        return "lease.stop"
    if lease["state"] == "failed" and lease["host_ended"] is None:
        return "lease.discard"
    return None
