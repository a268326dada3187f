"""The broker's periodic and start-up jobs: end leases whose time is over or whose host was banned,
fail starts that lost their caller, tell hosts what they have not acknowledged; after a restart,
finish every state a crash can leave."""
import asyncio
import logging

from .errors import Unavailable

log = logging.getLogger("shellrent.service")


class Jobs:
    def __init__(self, db, store, links, market, renting, settlement, sync_all, now, cluster, channels, config,
                 auto=None):
        self._db, self._store, self._links, self._market, self._config = db, store, links, market, config
        self._cluster, self._channels = cluster, channels
        self._renting, self._settlement, self._sync_all, self._now = renting, settlement, sync_all, now
        self._auto = auto  # broker.autoextend: more time before the end of auto-extended leases
        self._full_logged = False
        self._active: set[str] = set()  # the leases active at the last round
        self._expelling: set[str] = set()  # banned hosts being told before their tunnel closes

    async def housekeeping(self) -> None:
        """End leases whose time is over; fail starts that lost their caller; tell hosts what they
        have not acknowledged; keep host last-seen times fresh."""
        now = self._now()
        links = self._links()
        end_lease = self._settlement.end_lease
        try:
            for lease in await self._db(self._store.on_banned_hosts):  # banned: its leases end, refunded
                log.warning("lease %s ends: its host %s was banned", lease["id"], lease["host"])
                await end_lease(lease["id"], lease["banned_at"] if lease["banned_at"] > 1 else now, "banned")
            for name in (await self._db(self._store.banned)) & set(links.links if links else ()):
                if name not in self._expelling:
                    self._expelling.add(name)
                    self._market.changed()
                    asyncio.get_running_loop().create_task(self._expel(links.links[name]))
            if not self._cluster.fresh():  # paused or cut off: first learn what this broker still owns
                await self._cluster.beat()
            live = await self._db(self._store.live_leases)
            await self._end_lost(live, links, now)
            if self._auto and await self._auto.run(live, links, now):
                live = await self._db(self._store.live_leases)  # with the ends moved
            others = self._cluster.others  # as of the last heartbeat: a broker is gone after 10 s, not 2
            for lease in live:
                if lease["state"] == "active" and lease["ends_at"] <= now:
                    await end_lease(lease["id"], lease["ends_at"], "time")
                elif lease["state"] in ("pending", "starting") and lease["id"] not in self._renting.in_flight \
                        and now - lease["created"] > 5 and lease.get("broker") not in others:
                    await self._db(self._renting.fail, lease["id"], "the broker lost the start (restart or full disk)")
            active = {lease["id"] for lease in live if lease["state"] == "active"}
            for lid in self._channels.leases() & (self._active - active):  # ended by another broker
                self._channels.close_lease(lid, f"lease {lid} has ended (on another broker: ssh ctl@ show {lid})")
            self._active = active
            await self._db(self._store.expire_owners)  # hosts whose broker died and that came back nowhere
            if links:
                await self._sync_all(None)
                await self._db(self._store.touch_hosts, list(links.links), now)
            self._full_logged = False
        except Unavailable as exc:
            if not self._full_logged:
                log.error("housekeeping: %s", exc)
                self._full_logged = True

    async def _end_lost(self, live: list[dict], links, now: float) -> None:
        """Active leases whose host has been offline longer than BROKER_HOST_LOST end at the moment it
        went: the renter's hold is freed. A host that comes back is told to stop them."""
        hosts = {lease["host"] for lease in live if lease["state"] == "active"} \
            - set(links.links if links else ()) - set(self._cluster.owners)  # driven here, or elsewhere
        if not hosts:
            return
        lost = await self._db(self._store.lost_hosts, sorted(hosts), now - self._config.host_lost)
        for lease in live:
            went = lost.get(lease["host"])
            if lease["state"] == "active" and went is not None and lease["host"] in hosts:
                log.warning("lease %s ends: its host %s has been offline since %.0f", lease["id"], lease["host"], went)
                await self._settlement.end_lease(lease["id"], went, "offline")

    async def _expel(self, link) -> None:
        """A banned host is told first (it ends its leases itself: the renters' containers stop),
        then its tunnel is closed."""
        log.warning("host %s is banned: telling it, then closing its tunnel", link.name)
        try:
            await link.control.call("reject", timeout=10, error=f"host {link.name} is banned by the broker's operator",
                                    banned=True)
        except Unavailable as exc:
            log.warning("host %s did not take its ban: %s", link.name, exc)
        finally:
            link.conn.close()
            self._expelling.discard(link.name)

    async def recover(self) -> None:
        """After a restart, every state a crash can leave: leases caught mid-start (by this broker or
        one that is gone) fail and are refunded (their hosts discard them); ended or failed leases
        not yet settled are settled; what hosts were not told is told when they connect (sync)."""
        await self._db(self._store.close_uptimes, self._cluster.id)
        end_lease = self._settlement.end_lease
        others = self._cluster.others
        for lease in await self._db(self._store.to_recover):
            lid = lease["id"]
            if lease["state"] in ("pending", "starting") and lease.get("broker") in others:
                continue  # another broker's start, under way there
            if lease["state"] in ("pending", "starting"):
                log.warning("lease %s was %s when the broker stopped: failing it", lid, lease["state"])
                await self._db(self._renting.fail, lid, "broker restarted during start")
            elif lease["state"] == "ending":  # written by older brokers during a release
                await end_lease(lid, lease["ended"] or self._now())
            elif lease["state"] in ("ended", "purged"):
                await end_lease(lid, lease["ended"] or lease["ends_at"])
            elif lease["state"] == "failed":
                await self._db(self._renting.fail, lid, lease["error"] or "failed")
