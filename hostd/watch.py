"""Keeps each active lease's container running.

The engine's event stream wakes the check at once when one of hostd's containers dies, stops,
pauses or is removed; a periodic check is the backstop for events missed. A container that stopped
(killed, stopped, exited, OOM) is started again, a paused one unpaused, with the same /workspace;
the time it was down is recorded on the lease (hostd's store and an event to the broker), which
bills none of it. Each check stores when it last saw the container running, so a container paused
or removed while hostd itself was away counts as down from then, not from hostd's return. A lease whose container is gone, cannot be started, or went down more than
MAX_RESTARTS times in RESTART_WINDOW is ended at the moment it went down.
"""
import asyncio
import json
import logging
import threading
import time

from . import offload
from .runtime import RuntimeError_

log = logging.getLogger("shellrent.watch")
MAX_RESTARTS = 3
RESTART_WINDOW = 600.0


def engine_state(state: dict | None, clock) -> dict | None:
    """A container's state with the engine's stop time in the broker's time."""
    return state and {**state, "finished": clock.engine(state.get("finished"))}


def went_down(rec: dict, state: dict | None, now: float) -> float:
    """When a lease's container went down: the engine's stop time if it stopped since hostd last saw it
    running, else that last sighting (a pause or a removal leaves no time of its own)."""
    seen = rec.get("seen") or now
    finished = (state or {}).get("finished") if (state or {}).get("status") != "paused" else None
    return min(now, max(seen, finished or 0))


def open_down(store, rec: dict, state: dict | None, now: float) -> list | None:
    """Record that a lease's container is down since went_down (unless a down is open already);
    returns the new down, or None."""
    downs = json.loads(rec.get("downs") or "[]")
    if downs and downs[-1][1] is None:
        return None
    downs.append([went_down(rec, state, now), None])
    store.update(rec["id"], downs=json.dumps(downs))
    return downs[-1]


class Watch:
    def __init__(self, runtime, store, leases, emit, interval: float = 5.0, revived=None):
        self.runtime = runtime
        self.clock = leases.clock
        self.store = store
        self.leases = leases
        self._emit = emit
        self._revived = revived  # async (lease id): hostd.caps puts the cap on the new veth
        self.interval = interval
        self._wake = asyncio.Event()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        threading.Thread(target=self.runtime.follow_events, args=(lambda: loop.call_soon_threadsafe(self._wake.set),),
                         name="engine-events", daemon=True).start()
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.check()
            except Exception:
                log.exception("container check failed")

    async def check(self) -> None:
        for rec in self.store.active():
            try:
                state = engine_state(await offload.call(self.runtime.state, rec["id"], timeout=offload.QUICK),
                                     self.clock)
            except (RuntimeError_, asyncio.TimeoutError) as exc:
                log.info("lease %s: cannot read its container's state now: %s", rec["id"], exc or "timed out")
                continue
            rec = self.store.get(rec["id"])
            if rec["state"] != "active":
                continue  # it is being ended: its container stops on purpose
            if state is not None and state["status"] == "running":
                self.store.update(rec["id"], seen=self.clock.now())
                self._up(rec)
            else:
                await self._revive(rec, state)

    def _downs(self, rec: dict) -> list[list]:
        return json.loads(rec.get("downs") or "[]")

    def _up(self, rec: dict) -> None:
        downs = self._downs(rec)
        if downs and downs[-1][1] is None:
            downs[-1][1] = self.clock.now()
            self.store.update(rec["id"], downs=json.dumps(downs))
            self._emit({"type": "lease.up", "id": rec["id"], "down": downs[-1]})
            log.info("lease %s: its container runs again (down %.1fs)", rec["id"], downs[-1][1] - downs[-1][0])

    async def _revive(self, rec: dict, state: dict | None) -> None:
        lid, now = rec["id"], self.clock.now()
        down = open_down(self.store, rec, state, now)
        if down:
            self._emit({"type": "lease.down", "id": lid, "down": down})
            log.warning("lease %s: its container is %s", lid, state["status"] if state else "gone")
        downs = self._downs(self.store.get(lid))
        since = downs[-1][0]
        recent = [d for d in downs if d[0] > now - RESTART_WINDOW]
        why = None
        if state is None:
            why = "its container was removed"
        elif len(recent) > MAX_RESTARTS:
            why = f"its container went down {len(recent)} times in {RESTART_WINDOW / 60:.0f} minutes"
        else:
            try:
                await offload.call(self.runtime.revive, lid, timeout=offload.STOP)
            except (RuntimeError_, asyncio.TimeoutError) as exc:
                why = f"its container cannot be started again: {exc or 'timed out'}"
        if why:
            log.error("lease %s: %s; ending it as of %s", lid, why, time.strftime("%H:%M:%S", time.gmtime(since)))
            await self.leases.end(lid, dead_since=since, why="lost")
            return
        if self._revived:
            await self._revived(lid)
        rec = self.store.get(lid)
        self._up(rec)
