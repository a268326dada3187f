"""The broker's side of keeping each host's record in line with its own (docs/leases.md, "Reconciliation").

The broker's lease row is the decision (state, end time, money) and records what the host has
acknowledged (host_ends_at, host_ended). At every connect the host's list of leases is reconciled
with the broker's (reconcile.decide's rules, applied here); whatever the host has not acknowledged is
told again (sync) until it does.
"""
import asyncio
import logging
import time

from shellrent.common import protocol

from .errors import BrokerError, Refused, Unavailable
from .reconcile import Action, decide, next_push

log = logging.getLogger("shellrent.service")


class HostSync:
    def __init__(self, config, db, store, links, events, settlement, in_flight: set, tasks, now):
        self._config, self._db, self._store, self._links = config, db, store, links
        self._events, self._settlement, self._in_flight = events, settlement, in_flight
        self._tasks, self._now = tasks, now
        self._syncing: dict[str, asyncio.Task] = {}  # lease id -> the task telling its host what changed
        self._retry: dict[str, tuple[float, int]] = {}  # lease id -> (next try, tries) after a failed sync

    async def reconcile(self, link, theirs: dict) -> None:
        """Make the host's record and the broker's agree, lease by lease (reconcile.decide's rules).
        A step that fails skips the rest of that lease's steps, not the other leases'."""
        ours = {lease["id"]: lease for lease in await self._db(self._store.leases_on, link.name, False)}
        failed = set()
        for action in decide(ours, theirs, self._in_flight, link.hello_at):
            if action.lease in failed:
                continue
            try:
                await self._apply(link, action, ours.get(action.lease))
            except (BrokerError, protocol.WireError) as exc:
                failed.add(action.lease)
                log.warning("host %s, lease %s: reconcile failed: %s", link.name, action.lease, exc)
        self.sync(link.name)

    async def _apply(self, link, action: Action, lease: dict | None) -> None:
        lid = action.lease
        if action.kind == "malformed":
            log.warning("host %s: ignoring a malformed lease entry", link.name)
        elif action.kind == "discard":
            await link.call("lease.discard", id=lid)
        elif action.kind == "downs":
            await self._events.downs(lease, action.downs)
        elif action.kind == "ended":
            await self._events.host_ended(link.name, lid, action.at)
        elif action.kind == "retell_end":
            await self._db(lambda: self._store.update_lease(lid, host_ends_at=None))
        elif action.kind == "purged":
            await self._db(lambda: self._store.update_lease(lid, state="purged"))
        elif action.kind == "restop":
            await self._db(lambda: self._store.update_lease(lid, host_ended=None))
        elif action.kind == "missing":
            at = await self._db(self._store.last_down, link.name) or self._now()
            log.warning("host %s no longer knows lease %s: ending it at %s", link.name, lid, at)
            await self._settlement.end_lease(lid, at, "host")

    # telling hosts what the broker decided: retried until they acknowledge
    def sync(self, host: str | None = None) -> None:
        """Start telling hosts (one, or every connected one) what they have not acknowledged yet."""
        self._tasks.spawn(self.sync_all(host))

    async def sync_all(self, host: str | None) -> None:
        now = time.monotonic()
        links = self._links()
        for lease in await self._db(self._store.unsynced, host):
            if links and links.get(lease["host"]) and lease["id"] not in self._in_flight \
                    and (host or self._retry.get(lease["id"], (0, 0))[0] <= now):
                self.sync_lease(lease["id"])

    def sync_lease(self, lid: str) -> asyncio.Task:
        """The one task that brings this lease's host in line with the broker's record."""
        task = self._syncing.get(lid)
        if task is None or task.done():
            task = self._syncing[lid] = self._tasks.spawn(self._push(lid))
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
        lease = await self._db(self._store.lease, lid)
        links = self._links()
        link = links.get(lease["host"]) if links else None
        if not link:
            return False  # done when it reconnects
        op = next_push(lease)
        try:
            if op == "lease.extend":
                await link.call(op, id=lid, ends_at=lease["ends_at"])
                await self._db(self._store.acknowledged_end, lid, lease["ends_at"])
            elif op == "lease.stop":
                reply = await link.call(op, id=lid, timeout=self._config.stop_timeout,
                                        **({"why": lease["reason"]} if lease.get("reason") else {}))
                if reply.get("state") not in ("ended", "purged", "lost", "absent"):
                    return False
                await self._events.freed(lid)
            elif op == "lease.discard":
                await link.call(op, id=lid, timeout=self._config.stop_timeout)
                await self._events.freed(lid)
        except Refused as exc:
            log.warning("lease %s: host %s refused: %s", lid, lease["host"], exc)
            return False
        except Unavailable as exc:
            log.warning("lease %s: host %s did not acknowledge (%s); trying again", lid, lease["host"], exc)
            return False
        return True
