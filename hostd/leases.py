"""hostd's own enforcement of every lease it runs, whether or not the broker is reachable.

Each lease has one task that sleeps to its next moment: warnings (default T-15, T-5, T-1 min) on
every terminal in the container and on every open session without one; at the end SIGTERM to the
container's processes, SIGKILL after the grace; the workspace kept for the retention period, then
purged. An extension re-arms the task. Ending never runs a program inside the container (the
renter owns them): hostd signals the processes itself and the engine kills and removes the
container; every engine call has a deadline, and a warning that hangs never delays the end.
/etc/shellrent/lease in the container shows the end time and the time left.
"""
import asyncio
import json
import logging
import time
from pathlib import Path

from shellrent.common import faults, protocol

from . import offload, settings as settings_mod
from .clock import Clock
from .disk import DiskError
from .config import Config
from .runtime import Runtime, RuntimeError_
from .store import Store
from .watch import engine_state, open_down

log = logging.getLogger("shellrent.leases")


def _fmt(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m" if m and not s else (f"{m}m{s:02d}s" if m else f"{s}s"))


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


class Leases:
    """The leases on this host and their timers."""

    def __init__(self, config: Config, runtime: Runtime, store: Store, settings, emit, clock: Clock | None = None):
        self.config = config
        self.clock = clock or Clock()  # the broker's time: leases end at the broker's end
        self.runtime = runtime
        self.store = store
        self._settings = settings  # callable -> current settings dict
        self._emit = emit
        self._tasks: dict[str, asyncio.Task] = {}
        self._ending: dict[str, asyncio.Task] = {}
        self.sessions: dict[str, set] = {}  # lease id -> open sessions (for warnings without a pty)

    def track(self, lease_id: str, session) -> None:
        self.sessions.setdefault(lease_id, set()).add(session)

    def untrack(self, lease_id: str, session) -> None:
        open_ = self.sessions.get(lease_id)
        if open_ is not None:
            open_.discard(session)
            if not open_:
                del self.sessions[lease_id]

    def lease_dir(self, lease_id: str) -> Path:
        d = self.config.home / "leases" / protocol.lease_id(lease_id)
        d.mkdir(parents=True, exist_ok=True)
        return d

    def write_info(self, rec: dict) -> None:
        left = rec["ends_at"] - self.clock.now()
        text = (f"SHELLRENT_LEASE_ID={rec['id']}\nSHELLRENT_ENDS_AT={int(rec['ends_at'])}\n"
                f"SHELLRENT_ENDS_AT_UTC='{_utc(rec['ends_at'])}'\nSHELLRENT_REMAINING={_fmt(left)}\n"
                f"SHELLRENT_UPDATED={int(self.clock.now())}\n")
        path = self.lease_dir(rec["id"]) / "lease"
        path.write_text(text)
        path.chmod(0o644)

    # start-up
    def reconcile(self) -> None:
        """Match labelled containers with the record; re-arm every lease."""
        now = self.clock.now()
        seen = set()
        for c in self.runtime.containers():
            rec = self.store.get(c["lease"])
            seen.add(c["lease"])
            if rec is None and c["ends_at"] > now:
                log.warning("adopting container of unknown lease %s (GPUs %s)", c["lease"], ",".join(c["gpus"]) or "none")
                rec = {"id": c["lease"], "renter": c.get("renter") or "?", "image": c.get("image") or "?",
                       "ends_at": c["ends_at"], "state": "active", "container": c["id"], "shell": "/bin/sh",
                       "gpus": json.dumps(c.get("gpus") or []), "seen": now}
                self.store.put(rec)
            if rec is None or rec["state"] != "active":
                log.info("container of lease %s has no live lease: removing it", c["lease"])
                self.runtime.stop(c["lease"], 0)
                continue
            if c["status"] != "running":
                # Down while hostd was away: recorded now, so that the hello carries it even when the
                # lease is stopped before the watch looks (hostd.watch starts it again and closes it).
                down = open_down(self.store, rec, engine_state(self.runtime.state(c["lease"]), self.clock), now)
                if down:
                    log.warning("lease %s: its container went down at %s while hostd was away", c["lease"],
                                _utc(down[0]))
        for rec in self.store.all():
            if rec["state"] == "ending":  # hostd stopped during the grace: its container is gone now
                self.store.update(rec["id"], state="ended", ended_at=now)
                self._emit({"type": "lease.ended", "id": rec["id"], "at": now})
                rec = self.store.get(rec["id"])
            if rec["state"] == "active" and rec["id"] not in seen:
                log.warning("lease %s has no container any more", rec["id"])
                gone = min(now, rec.get("seen") or now)  # last seen running: it went after that
                self.store.update(rec["id"], state="lost", ended_at=gone)
            elif rec["state"] in ("active", "ended"):
                self.arm(rec)

    def clock_moved(self) -> None:
        """The broker's time moved against this machine's: every lease's timer sleeps to its moment anew."""
        for rec in self.store.all():
            if rec["id"] in self._tasks and rec["id"] not in self._ending:
                self.arm(rec)

    def arm(self, rec: dict) -> None:
        old = self._tasks.pop(rec["id"], None)
        if old:
            old.cancel()
        self._tasks[rec["id"]] = asyncio.get_running_loop().create_task(self._life(rec["id"]))

    async def _life(self, lease_id: str) -> None:
        warned: set[float] = set()
        while True:
            rec = self.store.get(lease_id)
            now = self.clock.now()
            cfg = self._settings()
            if rec["state"] == "active":
                self.write_info(rec)
                left = rec["ends_at"] - now
                if left <= 0:
                    await self.end(lease_id, cancel_task=False, why="time")
                    continue
                due = [w for w in settings_mod.warn_offsets(cfg) if w not in warned and w >= left - 0.5]
                if due:
                    warned.update(due)
                    if left > 0.5:
                        await self.warn(rec, left)
                    continue
                upcoming = [left - w for w in settings_mod.warn_offsets(cfg) if w not in warned and w < left]
                await asyncio.sleep(min([left, 30.0, *upcoming]))
            elif rec["state"] == "ended":
                left = rec["ended_at"] + cfg["retention"] - now
                if rec.get("ws_to"):  # a start is taking its workspace: it decides (gone, or given back)
                    await asyncio.sleep(30)
                    continue
                if left <= 0:
                    try:
                        await offload.call(self.runtime.purge, lease_id, timeout=offload.STOP)
                    except (RuntimeError_, asyncio.TimeoutError, OSError) as exc:
                        log.warning("lease %s: purge failed, trying again in a minute: %s", lease_id, exc)
                        await asyncio.sleep(60)
                        continue
                    self.store.update(lease_id, state="purged")
                    self._emit({"type": "lease.purged", "id": lease_id})
                    log.info("lease %s: workspace purged", lease_id)
                    return
                await asyncio.sleep(min(left, 3600))
            else:
                return

    async def warn(self, rec: dict, left: float) -> None:
        ends = f"*** shellrent: lease {rec['id']} ends in {_fmt(left)} (at {_utc(rec['ends_at'])})"
        if rec.get("auto") and rec.get("auto_note"):
            msg = f"{ends} and will NOT be extended: {rec['auto_note']}. Save your work to /workspace. ***"
        elif rec.get("auto"):
            msg = f"{ends} unless auto-extend extends it first (it is on). ***"
        else:
            msg = f"{ends}. Save your work to /workspace. ***"
        log.info("lease %s: warning, %s left", rec["id"], _fmt(left))
        for session in list(self.sessions.get(rec["id"], ())):
            session.warn(msg)
        try:
            await offload.call(self.runtime.broadcast, rec["id"], msg, timeout=offload.QUICK)
        except (RuntimeError_, asyncio.TimeoutError, OSError) as exc:
            log.info("lease %s: warning in the container failed: %s", rec["id"], exc or "timed out")

    async def end(self, lease_id: str, cancel_task: bool = True, dead_since: float | None = None,
                  freeze: bool = False, why: str | None = None) -> None:
        """End a lease now: SIGTERM to its processes, the engine's kill after the grace; keep the
        workspace. Callers that come while it is ending wait for the same ending. A lease whose
        container died (dead_since) ends at that moment, without a grace. freeze (a lease over its
        disk share): every process is frozen first (the cgroup freezer), so not one more byte is
        written, and the lease ends at once, without a grace. why (protocol.END_REASONS) is told to
        the lease's sessions first and sent with the lease.ended event."""
        if cancel_task:
            task = self._tasks.pop(lease_id, None)
            if task and task is not asyncio.current_task():
                task.cancel()
        ending = self._ending.get(lease_id)
        if ending is None:
            rec = self.store.get(lease_id)
            if not rec or rec["state"] != "active":
                return
            self.store.update(lease_id, state="ending")
            why = why or ("disk" if freeze else "lost" if dead_since else None)
            self.tell_end(lease_id, why)
            ending = self._ending[lease_id] = asyncio.get_running_loop().create_task(
                self._stop(lease_id, dead_since, freeze, why))
            ending.add_done_callback(lambda _: self._ending.pop(lease_id, None))
        await asyncio.shield(ending)
        if cancel_task and lease_id not in self._tasks:
            self.arm(self.store.get(lease_id))

    def tell_end(self, lease_id: str, why: str | None) -> None:
        """Every open session of the lease hears that it ends, and why, before it closes."""
        self.tell(lease_id, f"lease {lease_id} has ended" + (f": {protocol.END_REASONS[why]}" if why else ""))

    def tell(self, lease_id: str, text: str) -> None:
        for session in list(self.sessions.get(lease_id, ())):
            session.ended(text)

    async def _stop(self, lease_id: str, dead_since: float | None = None, freeze: bool = False,
                    why: str | None = None) -> None:
        grace = 0 if dead_since or freeze else self._settings()["grace"]
        if freeze:
            log.info("lease %s: ending (frozen, then removed)", lease_id)
            try:
                await offload.call(self.runtime.freeze, lease_id, timeout=offload.QUICK)
            except (RuntimeError_, asyncio.TimeoutError, OSError) as exc:
                log.warning("lease %s: freezing failed (%s); it is removed at once", lease_id, exc or "timed out")
        else:
            log.info("lease %s: ending (SIGTERM, SIGKILL after %.0fs)", lease_id, grace)
            try:
                await offload.call(self.runtime.signal_all, lease_id, "TERM", timeout=offload.QUICK)
            except (RuntimeError_, asyncio.TimeoutError, OSError) as exc:
                log.warning("lease %s: SIGTERM failed (%s); the engine kills it after the grace", lease_id,
                            exc or "timed out")
        await faults.point("hostd.stop.signalled")
        await asyncio.sleep(grace)
        now = dead_since or self.clock.now()  # the lease is over now, whatever the engine makes of the removal
        downs = json.loads((self.store.get(lease_id) or {}).get("downs") or "[]")
        if downs and downs[-1][1] is None:  # down when it ended: the down ends with the lease
            downs[-1][1] = max(now, downs[-1][0])
            self.store.update(lease_id, downs=json.dumps(downs))
        for attempt in range(3):
            try:
                await offload.call(self.runtime.stop, lease_id, 0, timeout=offload.STOP)
                break
            except (RuntimeError_, asyncio.TimeoutError, OSError) as exc:
                log.error("lease %s: removing its container failed (%s)%s", lease_id, exc or "timed out",
                          "; trying again" if attempt < 2 else "; it is removed at hostd's next start")
        self.store.update(lease_id, state="ended", ended_at=now)
        self.write_info(self.store.get(lease_id))
        self._emit({"type": "lease.ended", "id": lease_id, "at": now, **({"why": why} if why else {})})
        log.info("lease %s ended", lease_id)

    async def discard(self, lease_id: str) -> None:
        """Remove every trace of a lease that never became active for the broker."""
        task = self._tasks.pop(lease_id, None)
        if task:
            task.cancel()
        if (self.store.get(lease_id) or {}).get("state") == "active":
            self.store.update(lease_id, state="ending")  # its container goes on purpose: not revived
        try:
            if (self.store.get(lease_id) or {}).get("ws_from"):  # the workspace it took goes back first
                await offload.call(self.runtime.stop, lease_id, 0, timeout=offload.STOP)
                await self.give_back(lease_id)
            await offload.call(self.runtime.purge, lease_id, timeout=offload.STOP)
        except (RuntimeError_, asyncio.TimeoutError, OSError) as exc:
            log.warning("lease %s: discard failed: %s", lease_id, exc or "timed out")
            raise
        if self.store.get(lease_id):
            self.store.update(lease_id, state="purged")

    async def give_back(self, lease_id: str) -> None:
        """A lease that took an ended lease's workspace and did not become the renter's (its start
        failed, or the broker discards it): the workspace goes back to the ended lease, kept as before."""
        old = (self.store.get(lease_id) or {}).get("ws_from")
        if not old:
            return
        ws, was = self.runtime.workspaces, self.store.get(old) or {}
        kept = was.get("state") == "ended" and was["ended_at"] + self._settings()["retention"] > self.clock.now()
        if ws and ws.exists(lease_id) and not ws.exists(old):  # moved (not when it failed before the move)
            try:
                if kept:
                    await offload.call(self.runtime.move_workspace, lease_id, old, 0, timeout=offload.MOVE)
                else:  # its retention passed meanwhile: purged, as it would have been
                    await offload.call(ws.remove, lease_id, timeout=offload.STOP)
            except (RuntimeError_, asyncio.TimeoutError, OSError, DiskError) as exc:
                log.warning("lease %s: giving the workspace back to lease %s failed: %s", lease_id, old,
                            exc or "timed out")
                return
            log.info("lease %s: the workspace %s lease %s", lease_id,
                     "went back to" if kept else "was purged: past the retention of", old)
        self.store.update(lease_id, ws_from=None)
        if (self.store.get(old) or {}).get("ws_to") == lease_id:
            self.store.update(old, ws_to=None)

    def set_auto(self, lease_id: str, auto: bool, note: str) -> None:
        """The broker's word on auto-extend; a new reason it cannot extend is told at once."""
        rec = self.store.get(lease_id)
        if not rec or rec["state"] != "active":
            raise ValueError(f"lease {lease_id} is not active on this host")
        self.store.update(lease_id, auto=int(auto), auto_note=note or None)
        if auto and note and note != rec.get("auto_note"):
            rec = self.store.get(lease_id)
            asyncio.get_running_loop().create_task(self.warn(rec, rec["ends_at"] - self.clock.now()))

    def extend(self, lease_id: str, ends_at: float) -> None:
        rec = self.store.get(lease_id)
        if not rec or rec["state"] != "active":
            raise ValueError(f"lease {lease_id} is not active on this host")
        self.store.update(lease_id, ends_at=ends_at)
        self.arm(self.store.get(lease_id))
