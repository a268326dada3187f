"""Auto-extend (ctl rent --auto-extend, ctl extend LEASE --auto on): shortly before an auto-extended
lease's end the broker whose tunnel holds its host adds one step, while the renter's credit, the
operator's limits and the host's window allow. When it cannot, the renter is told why (ctl ls, the
banner, the warnings in the container) and it is tried again until the end."""
import logging

from .errors import BrokerError, Changed, Refused, Unavailable
from .extending import tell_auto

log = logging.getLogger("shellrent.service")

LEAD = 960.0  # seconds before the end: before hostd's first warning (15 minutes before)
RETRY = 15.0  # seconds between tries that failed
REFUSED_RETRY = 300.0  # after the host refused one (its records disagree): not every round


def lead(step: float) -> float:
    """How long before its end a lease is extended: LEAD, or half its step when that is shorter."""
    return min(LEAD, step / 2)


class AutoExtend:
    def __init__(self, db, store, extending):
        self._db, self._store, self._extending = db, store, extending
        self._next: dict[str, float] = {}  # lease -> when this broker tries again

    async def run(self, live: list[dict], links, now: float) -> bool:
        """One round over the live leases (housekeeping): those due are extended, or told why not;
        whether any was due."""
        here = links.links if links else {}
        due = [lease for lease in live if lease["state"] == "active" and lease.get("auto")
               and lease["host"] in here and lease["ends_at"] - now <= lead(lease["auto"])
               and now >= self._next.get(lease["id"], 0)]
        ids = {lease["id"] for lease in live}
        self._next = {lid: t for lid, t in self._next.items() if lid in ids}
        for lease in due:
            self._next[lease["id"]] = now + RETRY
            await self._one(lease, here[lease["host"]], now)
        return bool(due)

    async def _one(self, lease: dict, link, now: float) -> None:
        lid = lease["id"]
        try:
            await self._extending.auto(lease, link)
            note = None
            self._next.pop(lid, None)  # its end moved: due again before that end, however short the step
            log.info("lease %s auto-extended by %ds", lid, lease["auto"])
        except Changed:
            return  # extended meanwhile (by the renter, or another broker)
        except Refused as exc:  # undone already; the host would refuse it again at once
            note = f"its host refused the extension ({exc})"
            self._next[lid] = now + REFUSED_RETRY
        except Unavailable as exc:
            log.warning("lease %s: auto-extend: %s; trying again", lid, exc)
            return
        except BrokerError as exc:
            note = str(exc)
        if note != lease.get("auto_note"):
            if note:
                log.info("lease %s: auto-extend cannot extend it: %s", lid, note)
            await self._db(lambda: self._store.update_lease(lid, expect_state="active", auto_note=note))
            await tell_auto(link, lid, lease["auto"], note)
