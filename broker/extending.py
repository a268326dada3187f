"""Extending: more time on an active lease when the host's window and the renter's credit allow; the
new end and its hold are one transaction, the host is told, and a host that refuses undoes it."""
import asyncio
import logging
import time

from shellrent.common import faults

from . import ledger
from .errors import BrokerError, Changed, Refused, Unavailable, changed
from .leases import auto_step, format_duration, hold_for, parse_window, window_end
from .renting import check_length

log = logging.getLogger("shellrent.service")


class Extending:
    def __init__(self, config, db, store, reach, logins, tasks, now):
        self._config, self._db, self._store, self._reach = config, db, store, reach
        self._logins, self._tasks, self._now = logins, tasks, now

    async def extend(self, renter: str, lease_id: str | None, seconds: int) -> dict:
        """More time on an active lease, if the host has it and the credit covers it. The new end
        and its hold are one transaction; telling the host runs as its own task (a cut connection
        does not stop it). A host that refuses undoes it; one that does not answer is told later."""
        lease = await self._logins.own_lease(renter, lease_id)
        lid = lease["id"]
        link = await self._reach.link(lease["host"])  # here, or the broker that holds its tunnel
        if not link:
            raise Unavailable(f"host {lease['host']!r} is offline; cannot extend now")
        host = await self._db(self._store.host, lease["host"])
        window = (host.get("inventory") or {}).get("window", "always")
        closes = window_end(self._now(), parse_window(window))
        added, n = await self._db(self.add_time, lid, seconds, closes)
        await faults.point("extend.held")
        return await asyncio.shield(self._tasks.spawn(self._tell(link, lid, seconds, added, n)))

    async def _tell(self, link, lid: str, seconds: int, added: int, n: int) -> dict:
        lease = await self._db(self._store.lease, lid)
        try:
            await link.call("lease.extend", id=lid, ends_at=lease["ends_at"])
        except Refused:
            await self._db(self.undo_time, lid, seconds, added, n)
            raise
        except Unavailable as exc:
            log.warning("lease %s: host did not confirm the extension (%s); it is told when it answers", lid, exc)
            return lease
        await self._db(self._store.acknowledged_end, lid, lease["ends_at"])
        return await self._db(self._store.lease, lid)

    async def auto(self, lease: dict, link) -> None:
        """Auto-extend: one step more on a lease that still ends when lease says (so that two
        brokers, or a retry after a cut, never add it twice). BrokerError says why it cannot."""
        host = await self._db(self._store.host, lease["host"])
        closes = window_end(self._now(), parse_window((host.get("inventory") or {}).get("window", "always")))
        added, n = await self._db(self.add_time, lease["id"], lease["auto"], closes, lease["ends_at"])
        await asyncio.shield(self._tasks.spawn(self._tell(link, lease["id"], lease["auto"], added, n)))

    async def set_auto(self, renter: str, lease_id: str | None, on: bool) -> dict:
        """ctl extend LEASE --auto on|off: the step is an hour, or the lease's length if shorter."""
        lease = await self._logins.own_lease(renter, lease_id)
        length = lease["ends_at"] - (lease["started"] or lease["created"])
        step = auto_step(round(length / 60) * 60 if length >= 60 else length) if on else 0  # 1h, not 59m59s
        changed(await self._db(lambda: self._store.update_lease(lease["id"], expect_state="active", auto=step,
                                                                auto_note=None)), f"lease {lease['id']}")
        link = await self._reach.link(lease["host"])
        if link:
            await tell_auto(link, lease["id"], step, None)
        return await self._db(self._store.lease, lease["id"])

    def add_time(self, lid: str, seconds: int, closes: float | None = None,
                 expect_end: float | None = None) -> tuple[int, int]:
        """Hold credit for more time and move the end (store thread); returns the amount held and
        the extension's number. The limits are checked again here, on the row as it is now, so that
        concurrent extensions cannot pass them together. expect_end: only if it still ends then
        (Changed otherwise)."""
        store = self._store
        with store.tx():
            lease = store.lease(lid, for_update=True)
            if expect_end is not None and lease["ends_at"] != expect_end:
                raise Changed(f"lease {lid} was extended meanwhile")
            if lease["state"] != "active":
                raise BrokerError(f"lease {lid} is {lease['state']}; only active leases can be extended")
            check_length(self._config, lease["ends_at"] + seconds - (lease["started"] or lease["created"]))
            if closes and lease["ends_at"] + seconds > closes:
                raise BrokerError(f"host {lease['host']} is available only until "
                                  f"{time.strftime('%H:%M UTC', time.gmtime(closes))}")
            n = lease["extensions"] + 1
            amount = hold_for(lease["price"], len(lease["gpus"]), seconds)
            if amount:
                store.post(ledger.extend_key(lid, n), "hold", ledger.hold(lease["renter"], amount), lease=lid,
                           renter=lease["renter"], memo=f"extend {format_duration(seconds)}")
            changed(store.update_lease(lid, expect_state="active", ends_at=lease["ends_at"] + seconds,
                                       held=lease["held"] + amount, extensions=n), f"lease {lid}")
        return amount, n

    def undo_time(self, lid: str, seconds: int, amount: int, n: int) -> None:
        """Take back extension n that the host refused (store thread). Once the lease is settled
        there is nothing to take back: settling returned all that was held."""
        store = self._store
        with store.tx():
            lease = store.lease(lid, for_update=True)
            if store.posted(ledger.settle_key(lid)) or lease["state"] != "active":
                log.warning("lease %s: extension %d refused after the lease ended; nothing to undo", lid, n)
                return
            if amount and not store.post(ledger.undo_key(lid, n), "refund", ledger.release(lease["renter"], amount),
                                         lease=lid, renter=lease["renter"], memo="extension refused by the host"):
                return  # undone before
            changed(store.update_lease(lid, expect_state="active", ends_at=lease["ends_at"] - seconds,
                                       held=lease["held"] - amount, host_ends_at=None), f"lease {lid}")


async def tell_auto(link, lid: str, step: int, note: str | None) -> None:
    """Tell the host whether the lease auto-extends and, when it cannot, why: its warnings say so. A
    host that does not know the call (an older hostd) warns as before."""
    try:
        await link.call("lease.auto", id=lid, auto=bool(step), note=note or "")
    except Unavailable as exc:
        log.info("lease %s: the host was not told of auto-extend (%s)", lid, exc)
