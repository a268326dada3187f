"""The GPU watchdog and power limits: one pass every few seconds (the `watchdog` setting), in a thread.

Each pass maps every process the GPU source lists on each GPU to its container (host pid ->
/proc/PID/cgroup -> the container id in it) and:
- on a GPU a lease holds, kills (SIGKILL) every process that is not in that lease's container, and
  reports it (the audit log, the broker, `hostd status`);
- on a shared GPU no lease holds, kills a process of any lease's container (a lease that reached a
  GPU it does not hold); a process of the provider's own (on the host, or in a container that is not
  hostd's) withdraws the GPU from new offers until it is free, and `hostd status` says so;
- applies the provider's power_limit to every GPU a lease holds and restores the previous limit when
  no lease holds it any more. The limits to restore are written to disk before a limit is set, so a
  restart after a crash restores them too.
A GPU the source cannot read (lost, no permission) is withdrawn from offers with its error; a lease
holding a GPU that is lost is ended (its renter cannot use it).
"""
import json
import logging
import os
import re
import signal
import time
from pathlib import Path

from shellrent.common import protocol

from .config import write_private
from .gpus import GpuError

log = logging.getLogger("shellrent.gpuwatch")
audit = logging.getLogger("shellrent.audit")
_ID = re.compile(r"[0-9a-f]{64}")


def containers_of(pid: int) -> set[str] | None:
    """The container ids in a process's cgroup path (empty: a host process); None when it is gone."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            return set(_ID.findall(f.read()))
    except (FileNotFoundError, ProcessLookupError):
        return None


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return protocol.one_line(f.read().strip())[:32]
    except OSError:
        return "?"


class GpuWatch:
    """One pass at a time (pass_once), called by hostd's agent from a worker thread."""

    def __init__(self, source, store, settings, power_path: Path):
        self.source = source  # callable -> the current GPU source
        self.store = store
        self._settings = settings  # callable -> the current settings
        self.power_path = power_path
        self.checking: set[str] = set()  # ids of hostd's self-check containers, allowed on free GPUs
        self.withdrawn: dict[str, str] = {}  # uuid -> why it is not offered now
        self.problems: list[str] = []  # what the provider should know (hostd status)
        self._said: set[str] = set()

    def _saved(self) -> dict:
        """{uuid: watts to restore}; GpuError when the file is there but unreadable (it is never
        overwritten then: the limits it holds would be lost)."""
        try:
            saved = json.loads(self.power_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise GpuError(f"{self.power_path} cannot be read ({exc}): power limits are left as they are "
                           "until it is fixed or removed") from None
        if not isinstance(saved, dict) or not all(protocol.number_in(w, 0, 100_000) for w in saved.values()):
            raise GpuError(f"{self.power_path} is not {{uuid: watts}}: power limits are left as they are "
                           "until it is fixed or removed")
        return saved

    def _save(self, saved: dict) -> None:
        try:
            write_private(self.power_path, json.dumps(saved))
        except OSError as exc:
            raise GpuError(f"cannot write {self.power_path} ({exc}): power limits are left as they are") from None

    def pass_once(self) -> dict:
        """One look at every GPU; returns {"withdrawn": {uuid: why}, "killed": [reports], "problems": [...],
        "lost": {lease id: uuid of a GPU it holds that is lost}}."""
        source = self.source()
        problems, withdrawn, killed, lost = [], {}, [], {}
        held = {}
        for rec in self.store.holding():
            for uuid in json.loads(rec.get("gpus") or "[]"):
                held[uuid] = rec
        mine = {r["container"]: r["id"] for r in self.store.all() if r.get("container")}
        s = self._settings()
        shared = None if s["gpus"] == "all" else {int(i) for i in s["gpus"].split(",")}
        for g in source.gpus():
            if g.get("error"):
                key = g.get("uuid") or f"index {g['index']}"
                withdrawn[key] = g["error"]
                problems.append(f"GPU {g['index']}: {g['error']}")
                if g.get("lost") and key in held and held[key]["state"] == "active":
                    lost[held[key]["id"]] = key  # its renter cannot use it: the lease ends
                continue
            uuid = g["uuid"]
            if uuid not in held and shared is not None and g["index"] not in shared:
                continue  # not the market's: the provider's own
            try:
                pids = source.processes(uuid)
            except GpuError as exc:
                withdrawn[uuid] = str(exc)
                problems.append(str(exc))
                continue
            try:
                busy = self._look(source, g, held.get(uuid), pids, mine, killed)
            except GpuError as exc:
                withdrawn[uuid] = str(exc)
                problems.append(str(exc))
                continue
            if busy:
                withdrawn[uuid] = f"in use by the provider's own process(es) {', '.join(map(str, busy))}"
                problems.append(f"GPU {g['index']} ({uuid}) is in use by pid {', '.join(map(str, busy))} "
                                "outside hostd's leases: withdrawn from offers until it is free")
        try:
            problems += self._power(source, held, s["power_limit"])
        except GpuError as exc:
            problems.append(str(exc))
        for p in problems:
            if p not in self._said:
                log.warning("%s", p)
        self._said = set(problems)
        self.withdrawn, self.problems = withdrawn, problems
        return {"withdrawn": withdrawn, "killed": killed, "problems": problems, "lost": lost}

    def _look(self, source, g: dict, rec: dict | None, pids: list[int], mine: dict, killed: list) -> list[int]:
        """Kill the strays among a GPU's processes; returns the pids of the provider's own on a free GPU.

        Each pid is pinned with a pidfd before its cgroup is read, and a stray is killed only if the
        GPU still lists it after that: a pid that NVML listed and another process took since is never hit."""
        busy, strays, fds = [], [], {}
        try:
            for pid in pids:
                try:
                    fds[pid] = os.pidfd_open(pid)
                except (OSError, OverflowError, TypeError):
                    continue  # gone (or not a pid)
                ids = containers_of(pid)
                if ids is None:
                    continue
                if rec is not None:
                    if rec["state"] == "starting" or not rec.get("container"):
                        continue  # its container is being made: nothing to tell apart yet
                    if rec["container"] in ids:
                        continue
                elif ids & self.checking or not ids & mine.keys():
                    if not ids & self.checking:
                        busy.append(pid)
                    continue
                where = (f"lease {mine[next(iter(ids & mine.keys()))]}'s container" if ids & mine.keys()
                         else f"container {sorted(ids)[0][:12]}" if ids else "the host")
                strays.append((pid, where, _comm(pid)))
            still = set(source.processes(g["uuid"])) if strays else set()
            for pid, where, command in strays:
                if pid in still and self._kill(fds[pid]):
                    self._report(g, rec, pid, where, command, killed)
        finally:
            for fd in fds.values():
                os.close(fd)
        return busy

    @staticmethod
    def _report(g: dict, rec: dict | None, pid: int, where: str, command: str, killed: list) -> None:
        report = {"type": "gpu.stray", "gpu": g["uuid"], "index": g["index"], "pid": pid, "command": command,
                  "where": where, "lease": rec["id"] if rec else None, "at": time.time()}
        killed.append(report)
        audit.info("gpu-stray-killed gpu=%s pid=%d where=%s lease=%s command=%s", g["uuid"], pid,
                   json.dumps(where), report["lease"], json.dumps(command))
        log.warning("killed pid %d (%s) on GPU %d: %s is not %s", pid, command, g["index"], where,
                    f"lease {rec['id']}'s container" if rec else "allowed on a GPU no lease holds")

    @staticmethod
    def _kill(fd: int) -> bool:
        try:
            signal.pidfd_send_signal(fd, signal.SIGKILL)
            return True
        except ProcessLookupError:
            return False

    def _power(self, source, held: dict, watts: float) -> list[str]:
        """Held GPUs at the provider's limit; the others back at what they had. Problems, if any."""
        problems = []
        saved = self._saved()
        for uuid in held if watts else ():
            try:
                current = source.power_limit(uuid)
                if uuid not in saved:
                    self._save({**saved, uuid: current})  # on disk before it changes
                    saved[uuid] = current
                if abs(current - watts) >= 0.5:
                    lo, hi, _ = source.power_range(uuid)
                    if not lo <= watts <= hi:
                        raise GpuError(f"GPU {uuid}: power_limit {watts:g} W is outside its {lo:g}-{hi:g} W")
                    source.set_power_limit(uuid, watts)
                    log.info("GPU %s: power limit %g W while rented (was %g W)", uuid, watts, saved[uuid])
            except GpuError as exc:
                problems.append(f"power limit not applied: {exc}")
        for uuid in [u for u in saved if u not in held or not watts]:
            try:
                if abs(source.power_limit(uuid) - saved[uuid]) >= 0.5:
                    source.set_power_limit(uuid, saved[uuid])
                    log.info("GPU %s: power limit restored to %g W", uuid, saved[uuid])
                del saved[uuid]
            except GpuError as exc:
                problems.append(f"power limit not restored: {exc}")
        if saved != self._saved():
            self._save(saved)
        return problems
