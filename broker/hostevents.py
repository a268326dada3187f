"""One host's events on its control channel (inventory, pull progress, GPU strays, a lease ended,
purged, down or up), each only about that host's own leases, and rate-limited logging of bad ones."""
import json
import logging
import time

from shellrent.common import protocol

from .errors import NotFound
from .progress import check_view

log = logging.getLogger("shellrent.service")
audit = logging.getLogger("shellrent.audit")
STRAYS_PER_MINUTE = 60
LINES_PER_MINUTE = 60  # log lines about one host's bad events: a host cannot flood the log


class PerMinute:
    """At most `most` of a kind a minute for each (what, host); says once when one does not fit."""

    def __init__(self):
        self.recent: dict[tuple[str, str], list[float]] = {}

    def within(self, what: str, host: str, now: float, most: int) -> bool:
        key = (what, host)
        recent = [t for t in self.recent.get(key, []) if t > now - 60]
        self.recent[key] = recent if len(recent) > most else recent + [now]
        if len(recent) == most:
            log.warning("host %s: more than %d %s a minute: not logging the rest", host, most, what)
        return len(recent) < most


class HostEvents:
    def __init__(self, db, store, market, hosts, pulls, settlement, now):
        self._db, self._store, self._market, self._hosts = db, store, market, hosts
        self._pulls, self._settlement, self._now = pulls, settlement, now
        self.limits = PerMinute()

    async def event(self, host: str, event: dict) -> None:
        """One event from a host's control channel: only about that host's own leases."""
        kind = event.get("type")
        try:
            if kind == "inventory":
                await self._hosts.set_inventory(host, event.get("inventory"))
                return
            if kind == "pull.progress":
                view = check_view(event)
                self._pulls.progress(host, view)
                return
            if kind == "gpu.stray":
                lid = event.get("lease")
                if lid is not None and (await self._db(self._store.lease, protocol.lease_id(lid)))["host"] != host:
                    self._complain(host, "reported a GPU stray in lease %s of another host: refused", lid)
                    return
                self.stray(host, event, time.monotonic())
                return
            if kind not in ("lease.ended", "lease.purged", "lease.down", "lease.up"):
                self._complain(host, "ignoring an event of unknown type")
                return
            lid = protocol.lease_id(event.get("id"))
            lease = await self._db(self._store.lease, lid)
            if lease["host"] != host:
                self._complain(host, "claimed lease %s of host %s: refused", lid, lease["host"])
            elif kind == "lease.ended":
                await self.host_ended(host, lid, protocol.timestamp(event.get("at")), protocol.end_reason(event.get("why"), protocol.HOST_REASONS))
            elif kind == "lease.purged":
                if lease["state"] == "ended":
                    await self._db(lambda: self._store.update_lease(lid, state="purged"))
            else:
                await self.downs(lease, [event.get("down")])
                log.info("host %s: lease %s container %s", host, lid, "down" if kind == "lease.down" else "up again")
        except (protocol.WireError, NotFound) as exc:
            self._complain(host, "ignoring a bad event: %s", exc)

    def _complain(self, host: str, text: str, *args) -> None:
        if self.limits.within("bad events", host, time.monotonic(), LINES_PER_MINUTE):
            log.warning("host %s: " + text, host, *args)

    def stray(self, host: str, event: dict, now: float) -> None:
        """A host's watchdog killed a process on a rented GPU that was not the lease's: audit it (at
        most STRAYS_PER_MINUTE lines a host: a host cannot flood the audit log)."""
        if not self.limits.within("GPU stray reports", host, now, STRAYS_PER_MINUTE):
            return
        lid, pid = event.get("lease"), event.get("pid")
        if not protocol.number_in(pid, 1, 1 << 22, True) or not isinstance(event.get("where"), str) \
                or not isinstance(event.get("command"), str):
            raise protocol.WireError("bad gpu.stray report")
        audit.info("gpu-stray host=%s gpu=%s lease=%s pid=%d where=%s command=%s", host,
                   protocol.gpu_uuid(event.get("gpu")), protocol.lease_id(lid) if lid is not None else "-", pid,
                   json.dumps(event["where"][:80]), json.dumps(event["command"][:32]))  # one quoted field each

    async def downs(self, lease: dict, downs) -> None:
        """Times the host says a lease's container was down, kept as the host stamped them (a down
        and its up must meet on the same key, whatever the clocks' skew); billing clips them to the
        lease. Learned after the lease settled, they refund what they cover."""
        if not isinstance(downs, list):
            return
        new = False
        for item in downs[-100:]:
            try:
                down = protocol.timestamp(item[0])
                up = None if item[1] is None else max(protocol.timestamp(item[1]), down)
            except (protocol.WireError, TypeError, IndexError, KeyError):
                log.warning("host %s, lease %s: ignoring a malformed down time", lease["host"], lease["id"])
                continue
            new = await self._db(self._store.set_down, lease["id"], down, up) or new
        if new and lease["state"] in ("ended", "purged"):
            await self._db(self._settlement.reprice, lease["id"])

    async def host_ended(self, host: str, lid: str, at: float | None, why: str | None = None) -> None:
        """A host says one of its leases has ended (at `at`): settle it, never past what really
        passed, and free its GPUs. Claims about other hosts' leases are refused."""
        lease = await self._db(self._store.lease, lid)
        if lease["host"] != host:
            log.warning("host %s claimed lease %s of host %s: refused", host, lid, lease["host"])
            return
        if lease["state"] in ("active", "ending"):
            await self._settlement.end_lease(lid, protocol.timestamp(at) if at is not None else self._now(), why)
        elif lease["state"] in ("ended", "purged") and at is not None \
                and protocol.timestamp(at) < (lease["ended"] or lease["ends_at"]):
            await self._db(self._settlement.end_earlier, lid, protocol.timestamp(at))  # it stopped before the end
        if lease["host_ended"] is None and lease["state"] != "starting":
            await self.freed(lid)

    async def freed(self, lid: str) -> None:
        """The host has no container for this lease any more: its GPUs may be offered again."""
        await self._db(lambda: self._store.update_lease(lid, host_ended=self._now()))
        self._market.changed()
