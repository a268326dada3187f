"""The broker's side of keeping each host's record in line with its own (README, "Leases").

The broker's lease row is the decision (state, end time, money) and records what the host has
acknowledged (host_ends_at, host_ended). At every connect the host's list of leases is reconciled
with the broker's, rule by rule; whatever the host has not acknowledged is told again (sync) until
it does. A mixin of service.Broker: it uses the broker's store, tunnels and settling.
"""
import asyncio
import json
import logging
import time

from shellrent.common import protocol

from . import reconcile
from .errors import BrokerError, NotFound, Unavailable
from .progress import check_view
from .tunnels import HostLink, Refused

log = logging.getLogger("shellrent.service")
audit = logging.getLogger("shellrent.audit")
STRAYS_PER_MINUTE = 60
LINES_PER_MINUTE = 60  # log lines about one host's bad events: a host cannot flood the log


class HostSync:
    """Reconcile and sync, for service.Broker."""

    def __init__(self):
        self._recent: dict[tuple[str, str], list[float]] = {}  # (what, host) -> times, for the rate limits

    async def _reconcile(self, link: HostLink, theirs: dict) -> None:
        """Make the host's record and the broker's agree, lease by lease (reconcile.decide's rules).
        A step that fails skips the rest of that lease's steps, not the other leases'."""
        ours = {lease["id"]: lease for lease in await self.db(self.store.leases_on, link.name, False)}
        failed = set()
        for action in reconcile.decide(ours, theirs, self._launching, link.hello_at):
            if action.lease in failed:
                continue
            try:
                await self._apply(link, action, ours.get(action.lease))
            except (BrokerError, protocol.WireError) as exc:
                failed.add(action.lease)
                log.warning("host %s, lease %s: reconcile failed: %s", link.name, action.lease, exc)
        self.sync(link.name)

    async def _apply(self, link: HostLink, action: reconcile.Action, lease: dict | None) -> None:
        lid = action.lease
        if action.kind == "malformed":
            log.warning("host %s: ignoring a malformed lease entry", link.name)
        elif action.kind == "discard":
            await link.call("lease.discard", id=lid)
        elif action.kind == "downs":
            await self._downs(lease, action.downs)
        elif action.kind == "ended":
            await self.host_ended(link.name, lid, action.at)
        elif action.kind == "retell_end":
            await self.db(lambda: self.store.update_lease(lid, host_ends_at=None))
        elif action.kind == "purged":
            await self.db(lambda: self.store.update_lease(lid, state="purged"))
        elif action.kind == "restop":
            await self.db(lambda: self.store.update_lease(lid, host_ended=None))
        elif action.kind == "missing":
            at = await self.db(self.store.last_down, link.name) or self.now()
            log.warning("host %s no longer knows lease %s: ending it at %s", link.name, lid, at)
            await self.end_lease(lid, at)

    async def _downs(self, lease: dict, downs) -> None:
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
            new = await self.db(self.store.set_down, lease["id"], down, up) or new
        if new and lease["state"] in ("ended", "purged"):
            await self.db(self._reprice, lease["id"])

    async def event(self, host: str, event: dict) -> None:
        """One event from a host's control channel: only about that host's own leases."""
        kind = event.get("type")
        try:
            if kind == "inventory":
                await self._set_inventory(host, event.get("inventory"))
                return
            if kind == "pull.progress":
                view = check_view(event)
                self.pull_progress(host, view)
                return
            if kind == "gpu.stray":
                lid = event.get("lease")
                if lid is not None and (await self.db(self.store.lease, protocol.lease_id(lid)))["host"] != host:
                    self._complain(host, "reported a GPU stray in lease %s of another host: refused", lid)
                    return
                self._stray(host, event, time.monotonic())
                return
            if kind not in ("lease.ended", "lease.purged", "lease.down", "lease.up"):
                self._complain(host, "ignoring an event of unknown type")
                return
            lid = protocol.lease_id(event.get("id"))
            lease = await self.db(self.store.lease, lid)
            if lease["host"] != host:
                self._complain(host, "claimed lease %s of host %s: refused", lid, lease["host"])
            elif kind == "lease.ended":
                await self.host_ended(host, lid, protocol.timestamp(event.get("at")))
            elif kind == "lease.purged":
                if lease["state"] == "ended":
                    await self.db(lambda: self.store.update_lease(lid, state="purged"))
            else:
                await self._downs(lease, [event.get("down")])
                log.info("host %s: lease %s container %s", host, lid, "down" if kind == "lease.down" else "up again")
        except (protocol.WireError, NotFound) as exc:
            self._complain(host, "ignoring a bad event: %s", exc)

    def _within(self, what: str, host: str, now: float, most: int) -> bool:
        """Whether one more `what` of this host fits in `most` a minute (said once when it does not)."""
        key = (what, host)
        recent = [t for t in self._recent.get(key, []) if t > now - 60]
        self._recent[key] = recent if len(recent) > most else recent + [now]
        if len(recent) == most:
            log.warning("host %s: more than %d %s a minute: not logging the rest", host, most, what)
        return len(recent) < most

    def _complain(self, host: str, text: str, *args) -> None:
        if self._within("bad events", host, time.monotonic(), LINES_PER_MINUTE):
            log.warning("host %s: " + text, host, *args)

    def _stray(self, host: str, event: dict, now: float) -> None:
        """A host's watchdog killed a process on a rented GPU that was not the lease's: audit it (at
        most STRAYS_PER_MINUTE lines a host: a host cannot flood the audit log)."""
        if not self._within("GPU stray reports", host, now, STRAYS_PER_MINUTE):
            return
        lid, pid = event.get("lease"), event.get("pid")
        if not protocol.number_in(pid, 1, 1 << 22, True) or not isinstance(event.get("where"), str) \
                or not isinstance(event.get("command"), str):
            raise protocol.WireError("bad gpu.stray report")
        audit.info("gpu-stray host=%s gpu=%s lease=%s pid=%d where=%s command=%s", host,
                   protocol.gpu_uuid(event.get("gpu")), protocol.lease_id(lid) if lid is not None else "-", pid,
                   json.dumps(event["where"][:80]), json.dumps(event["command"][:32]))  # one quoted field each

    async def host_ended(self, host: str, lid: str, at: float | None) -> None:
        """A host says one of its leases has ended (at `at`): settle it, never past what really
        passed, and free its GPUs. Claims about other hosts' leases are refused."""
        lease = await self.db(self.store.lease, lid)
        if lease["host"] != host:
            log.warning("host %s claimed lease %s of host %s: refused", host, lid, lease["host"])
            return
        if lease["state"] in ("active", "ending"):
            await self.end_lease(lid, protocol.timestamp(at) if at is not None else self.now())
        elif lease["state"] in ("ended", "purged") and at is not None \
                and protocol.timestamp(at) < (lease["ended"] or lease["ends_at"]):
            await self.db(self._end_earlier, lid, protocol.timestamp(at))  # it stopped before the broker's end
        if lease["host_ended"] is None and lease["state"] != "starting":
            await self._freed(lid)

    async def _freed(self, lid: str) -> None:
        """The host has no container for this lease any more: its GPUs may be offered again."""
        await self.db(lambda: self.store.update_lease(lid, host_ended=self.now()))
        self.market_changed()

    # telling hosts what the broker decided: retried until they acknowledge
    def sync(self, host: str | None = None) -> None:
        """Start telling hosts (one, or every connected one) what they have not acknowledged yet."""
        self._background(self._sync_all(host))

    async def _sync_all(self, host: str | None) -> None:
        now = time.monotonic()
        for lease in await self.db(self.store.unsynced, host):
            if self.tunnels and self.tunnels.get(lease["host"]) and lease["id"] not in self._launching \
                    and (host or self._retry.get(lease["id"], (0, 0))[0] <= now):
                self.sync_lease(lease["id"])

    def sync_lease(self, lid: str) -> asyncio.Task:
        """The one task that brings this lease's host in line with the broker's record."""
        task = self._syncing.get(lid)
        if task is None or task.done():
            task = self._syncing[lid] = self._background(self._push(lid))
            task.add_done_callback(lambda t: self._syncing.pop(lid, None) if self._syncing.get(lid) is t else None)
        return task

    async def _push(self, lid: str) -> bool:
        """One round of telling the host; True once it has acknowledged everything about the lease.
        After a failure the next round waits longer (2 s doubling to a minute), or for a reconnect."""
        done = await self._push_once(lid)
        if done:
            self._retry.pop(lid, None)
        else:
            tries = self._retry.get(lid, (0, 0))[1] + 1
            self._retry[lid] = (time.monotonic() + min(60, 2 ** tries), tries)
        return done

    async def _push_once(self, lid: str) -> bool:
        lease = await self.db(self.store.lease, lid)
        link = self.tunnels.get(lease["host"]) if self.tunnels else None
        if not link:
            return False  # done when it reconnects
        op = reconcile.next_push(lease)
        try:
            if op == "lease.extend":
                await link.call(op, id=lid, ends_at=lease["ends_at"])
                await self.db(self.store.acknowledged_end, lid, lease["ends_at"])
            elif op == "lease.stop":
                reply = await link.call(op, id=lid, timeout=self.config.stop_timeout)
                if reply.get("state") not in ("ended", "purged", "lost", "absent"):
                    return False
                await self._freed(lid)
            elif op == "lease.discard":
                await link.call(op, id=lid, timeout=self.config.stop_timeout)
                await self._freed(lid)
        except Refused as exc:
            log.warning("lease %s: host %s refused: %s", lid, lease["host"], exc)
            return False
        except Unavailable as exc:
            log.warning("lease %s: host %s did not acknowledge (%s); trying again", lid, lease["host"], exc)
            return False
        return True
