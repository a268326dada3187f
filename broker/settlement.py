"""Settlement: a lease's end (released, time up, ended on its host) and its money, settled once in
the same transaction as the end; corrections that only ever refund; the renters' channels closed."""
import asyncio
import logging

from shellrent.common import faults, protocol

from . import billing, ledger
from .errors import BrokerError, changed
from .leases import credits, format_duration

log = logging.getLogger("shellrent.service")


class Settlement:
    def __init__(self, config, db, store, logins, pulls, channels, market, tasks, now, earnings, sync_lease):
        self._config, self._db, self._store = config, db, store
        self._logins, self._pulls, self._channels, self._market, self._tasks = logins, pulls, channels, market, tasks
        self._now = now
        self._earnings = earnings      # tell a host what it has earned (hosts)
        self._sync_lease = sync_lease  # bring a lease's host in line (hostsync)

    async def release(self, renter: str | None, lease_id: str | None) -> dict:
        """End a lease now: billing stops at this moment (settled in the same transaction as the
        end); the host then stops the container, told until it acknowledges."""
        if renter and lease_id and self._pulls.waiting(lease_id):
            lease = await self._db(self._store.lease, lease_id)
            if lease["renter"] == renter:
                return await self._pulls.cancel(lease_id)
        if renter:
            lease = await self._logins.own_lease(renter, lease_id)
        else:
            lease = await self._db(self._store.lease, lease_id)
            if lease["state"] in ("pending", "starting"):
                raise BrokerError(f"lease {lease_id} is starting; stop it once it is active")
            if lease["state"] != "active":
                raise BrokerError(f"lease {lease_id} is already {lease['state']}")
        why = "released" if renter else "stopped"
        return await asyncio.shield(self._tasks.spawn(self._release(lease["id"], self._now(), why)))

    async def _release(self, lid: str, at: float, why: str) -> dict:
        await self.end_lease(lid, at, why)
        await faults.point("release.settled")
        try:
            async with asyncio.timeout(self._config.stop_timeout):
                # a push already under way (an extension being told) may come first: then the stop
                for _ in range(2):
                    if await asyncio.shield(self._sync_lease(lid)) and \
                            (await self._db(self._store.lease, lid))["host_ended"] is not None:
                        break
        except TimeoutError:
            log.warning("lease %s: host has not confirmed the stop yet; it is told until it does", lid)
        return await self._db(self._store.lease, lid)

    async def end_lease(self, lid: str, at: float, why: str | None = None) -> None:
        """Mark a lease ended at `at` (never before its start nor after now) and settle it, in one
        transaction; settling twice charges once. The renters' channels to it are told why
        (protocol.END_REASONS) and closed."""
        charged = await self._db(self.end, lid, at, why)
        self._channels.close_lease(lid, f"lease {lid} has ended" + (f": {protocol.END_REASONS[why]}" if why else ""))
        if charged is not None:
            lease = await self._db(self._store.lease, lid)
            log.info("lease %s ended; charged %s", lid, credits(charged))
            self._tasks.spawn(self._earnings(lease["host"]))

    def end(self, lid: str, at: float, why: str | None = None) -> int | None:
        """The end and its settlement, one transaction (store thread); the charge, or None when it
        was settled before."""
        self._market.changed()
        store = self._store
        with store.tx():
            lease = store.lease(lid, for_update=True)
            if lease["state"] in ("active", "ending"):
                end = min(max(at, lease["started"] or lease["created"]), lease["ends_at"], self._now())
                changed(store.update_lease(lid, expect_state=lease["state"], state="ended", ended=end,
                                           reason=why or lease.get("reason")), f"lease {lid}")
            elif lease["state"] in ("ended", "purged"):
                end = lease["ended"] or lease["ends_at"]
            else:
                return None
            start = lease["started"] or end
            seconds, charge = self._charge(lease, start, end)
            posted = store.post(
                ledger.settle_key(lid), "settle",
                ledger.settle(lease["renter"], lease["host"], lease["held"], charge, lease["fee_percent"]),
                lease=lid, renter=lease["renter"],
                memo=f"{format_duration(seconds)} billed of {format_duration(end - start)}")
        return charge if posted else None

    def _charge(self, lease: dict, start: float, end: float) -> tuple[int, int]:
        """(billable seconds, charge) of a lease that ran from start to end (store thread)."""
        return billing.charge(lease["held"], lease["price"], len(lease["gpus"]), start, end,
                              self._store.uptimes(start - 1).get(lease["host"], []), self._store.downs(lease["id"]),
                              self._config.offline_grace)

    def end_earlier(self, lid: str, at: float) -> None:
        """The host says a settled lease's container stopped before the broker's end (store thread)."""
        with self._store.tx():
            lease = self._store.lease(lid, for_update=True)
            end = max(at, lease["started"] or lease["created"])
            if lease["state"] in ("ended", "purged") and end < (lease["ended"] or lease["ends_at"]):
                changed(self._store.update_lease(lid, expect_state=("ended", "purged"), ended=end), f"lease {lid}")
                self.reprice(lid)

    def reprice(self, lid: str) -> None:
        """Charge a settled lease again with what is known now (down times or an earlier end the host
        reported late); refund what was charged too much, in one transaction keyed by the new charge.
        A charge never goes up after settling (store thread)."""
        store = self._store
        with store.tx():
            lease = store.lease(lid, for_update=True)
            if lease["state"] not in ("ended", "purged") or not lease["started"]:
                return
            charged = store.charged(lid)
            seconds, charge = self._charge(lease, lease["started"], lease["ended"])
            if billing.correction(charged, charge):
                try:
                    store.post(ledger.adjust_key(lid, charge), "refund",
                               ledger.adjust(lease["renter"], lease["host"], charged, charge, lease["fee_percent"]),
                               lease=lid, renter=lease["renter"],
                               memo=f"corrected: {format_duration(seconds)} billed of "
                                    f"{format_duration(lease['ended'] - lease['started'])}")
                except ledger.LedgerError as exc:  # a renter's own host whose earnings were paid out
                    log.warning("lease %s: correction refused (%s)", lid, exc)
