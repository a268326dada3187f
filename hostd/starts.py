"""lease.start on hostd: whether this host takes the lease (admit: the image, the GPUs), what share of
the machine it gets (shares, pick_cores), and the start itself (egress check, lease files, the
container, its timer and session helper); idempotent, with the starts under way kept for stop and
discard to wait on."""
import asyncio
import json
import logging
import math
import os
import shutil

from shellrent.common import faults, protocol

from . import gpus as gpus_mod, offload, selfcheck
from .procfs import pid_max
from .runtime import RuntimeError_
from .sizing import pids_per_gpu

log = logging.getLogger("shellrent.agent")


def admit(lease: dict, images: str, known: set[str], withdrawn: set[str], failing: bool, busy: set[str]) -> str | None:
    """Why this host refuses the lease, or None: the image must be allowed, and its GPUs this host's,
    each once, offered now (not withdrawn by the watchdog, the GPU checks passing) and free."""
    if not protocol.image_allowed(images, lease["image"]):
        return f"image {lease['image']!r} is not allowed on this host (allowed: {images})"
    gpus = lease["gpus"]
    if not set(gpus) <= known or len(set(gpus)) != len(gpus):
        return "asked for GPUs this host does not have"
    if set(gpus) & withdrawn or (gpus and failing):
        return "asked for GPUs this host does not offer now"
    if busy & set(gpus):
        return "asked for GPUs that another lease holds"
    return None


def shares(inv: dict, gpus: int, host_pid_max: int) -> tuple[float, dict]:
    """(disk GB, limits) of a lease of `gpus` GPUs: the inventory's per-GPU shares (a lease without
    GPUs gets one GPU's disk and the default CPU and memory), and its pids as a share of pid_max."""
    disk_gb = float(inv["disk_per_gpu"] * max(1, gpus))
    pids = pids_per_gpu(host_pid_max, len(inv.get("shared") or ())) * max(1, gpus)
    limits = {"disk": int(disk_gb * 1e9), "pids": pids}
    if gpus:
        limits.update(cpus=float(inv["cpu_per_gpu"] * gpus), memory=int(inv["ram_per_gpu"] * gpus * 1e9))
    return disk_gb, limits


def pick_cores(cpus: float, mine: list[int], taken: list[str]) -> str:
    """The least used of this machine's cores (`mine`; `taken`: the cpusets of the leases running) for
    a lease's share, so that nproc and thread pools inside the container see the share."""
    use = {c: 0 for c in mine}
    for cpuset in taken:
        for c in map(int, filter(None, (cpuset or "").split(","))):
            use[c] = use.get(c, 0) + 1
    want = max(1, min(len(mine), math.ceil(cpus)))
    return ",".join(map(str, sorted(sorted(mine, key=lambda c: (use[c], c))[:want])))


class Starts:
    """The starts of one hostd, with the parts they drive given in the constructor."""

    def __init__(self, store, runtime, leases, sessions, egress, health, inventory, settings, clock, caps=None):
        self._store = store
        self._runtime = runtime
        self._leases = leases
        self._sessions = sessions  # hostd.spawn.Sessions: the lease's session helper
        self._egress = egress
        self._health = health  # hostd.gpuhealth: checks that fail, GPUs withdrawn
        self._inventory = inventory
        self._settings = settings  # hostd.settingswatch: the settings and the GPU source
        self._clock = clock
        self._caps = caps  # hostd.caps: a lease's bandwidth cap, in place before its container starts
        self.under_way: dict[str, asyncio.Future] = {}  # lease id -> done when its start call ends
        self._cleaning: set[str] = set()  # starts that timed out: removed once the engine answers

    async def wait(self, lease_id: str) -> None:
        """Until the start of this lease under way, if any, has ended (a stop or discard then acts)."""
        if lease_id in self.under_way:
            await asyncio.shield(self.under_way[lease_id])

    async def start(self, req: dict) -> dict:
        """Start a lease; asked again for the same lease, the same answer (idempotent)."""
        lease = protocol.lease_start(req.get("lease"))
        if lease["id"] in self.under_way:  # the same start is under way: its answer is this one's
            return await asyncio.shield(self.under_way[lease["id"]])
        rec = self._store.get(lease["id"])
        if rec and rec["state"] == "active":
            return {"ok": True, "container": rec["container"], "disk_gb": rec.get("disk_gb") or 0}
        if rec:
            return {"ok": False, "error": f"lease {lease['id']} is {rec['state']} on this host"}
        images = self._settings.values["images"]
        try:
            known = {g["uuid"] for g in self._settings.gpus.gpus() if not g.get("error")} \
                if protocol.image_allowed(images, lease["image"]) else set()
        except gpus_mod.GpuError as exc:
            return {"ok": False, "error": f"this host cannot read its GPUs now: {exc}"}
        busy = {u for r in self._store.holding() for u in json.loads(r["gpus"] or "[]")}
        why = admit(lease, images, known, set(self._health.withdrawn()), bool(self._health.failures), busy)
        if why:
            return {"ok": False, "error": why}
        # Recorded before the container is made, so that a broker that loses the reply (a cut
        # connection, a restart) hears of it at the next hello and can have it discarded.
        why = lease.get("workspace") and self._kept(lease["workspace"], lease["renter"])
        if why:
            return {"ok": False, "error": why}
        rec = {**{k: lease[k] for k in ("id", "renter", "image", "ends_at")}, "state": "starting",
               "gpus": json.dumps(lease["gpus"]), "auto": int(lease["auto"]), "ws_from": lease.get("workspace")}
        self._store.put(rec)
        if rec["ws_from"]:
            self._store.update(rec["ws_from"], ws_to=lease["id"])  # claimed: no other start takes it
        done = self.under_way[lease["id"]] = asyncio.get_running_loop().create_future()
        reply = {"ok": False, "error": "the start was interrupted"}
        try:
            reply = await self._start(lease, rec)
            return reply
        finally:
            if not reply.get("ok") and rec["ws_from"] and lease["id"] not in self._cleaning:
                await self._leases.give_back(lease["id"])  # the workspace stays the ended lease's
            self.under_way.pop(lease["id"], None)
            done.set_result(reply)

    async def _start(self, lease: dict, rec: dict) -> dict:
        gpus, store, leases = lease["gpus"], self._store, self._leases
        try:
            why = await offload.call(self._egress.in_force, timeout=60)
        except asyncio.TimeoutError:
            why = "iptables did not answer in time"
        if why:  # fail closed: a container without the egress policy could reach the provider's LAN
            store.update(lease["id"], state="purged")
            return {"ok": False, "error": f"this host cannot enforce its egress policy now: {why}"}
        leases.write_info(rec)
        shutil.copyfile(selfcheck.SCRIPT, leases.lease_dir(lease["id"]) / "gpu-check.py")  # `gpu-check`
        inv = self._inventory.last or await offload.call(self._inventory.read, timeout=30)
        rec["disk_gb"], limits = shares(inv, len(gpus), pid_max())
        if gpus:
            rec["cpuset"] = limits["cpuset"] = pick_cores(limits["cpus"], sorted(os.sched_getaffinity(0)),
                                                          [r.get("cpuset") for r in store.holding()])
        if rec["ws_from"]:
            why = await self._take(rec, limits)
            if why:
                store.update(lease["id"], state="purged")
                return {"ok": False, "error": why}
        store.update(lease["id"], cpuset=rec.get("cpuset"), disk_gb=rec["disk_gb"])
        try:
            container, shell = await offload.call(
                self._runtime.start, lease, self._settings.gpus.device_ids(gpus), str(leases.lease_dir(lease["id"])),
                limits, self._caps and self._caps.before_start, timeout=offload.START)
        except (RuntimeError_, asyncio.TimeoutError) as exc:
            store.update(lease["id"], state="purged")
            if isinstance(exc, asyncio.TimeoutError):
                # The engine may still make it: remove whatever it made once it answers again.
                self._cleaning.add(lease["id"])
                asyncio.get_running_loop().create_task(self._clean_up(lease["id"]))
            return {"ok": False, "error": str(exc) or "the Docker engine did not answer in time"}
        await faults.point("hostd.start.created")
        rec.update(container=container, shell=shell, state="active", seen=self._clock.now())
        store.put(rec)
        leases.arm(rec)
        self._sessions.start_helper(rec)
        self._health.wake()  # the power limit on its GPUs now
        log.info("lease %s started for %s (container %s, %d GPU)", lease["id"], lease["renter"], container[:12],
                 len(gpus))
        return {"ok": True, "container": container, "disk_gb": rec["disk_gb"]}

    async def _take(self, rec: dict, limits: dict) -> str | None:
        """Move the ended lease's workspace to this one (why not, or None). The lease's disk share is
        then the workspace's size where that is larger: its size share as before. The move is never
        given up half way (each of its steps has a limit of its own)."""
        old = rec["ws_from"]
        self._leases.tell(old, f"the files of lease {old} moved to lease {rec['id']}")  # its open files view
        try:
            size = await offload.call(self._runtime.move_workspace, old, rec["id"], int(limits["disk"]),
                                      timeout=offload.MOVE)
        except (RuntimeError_, asyncio.TimeoutError) as exc:
            return str(exc) or "moving the workspace did not finish in time"
        if size > limits["disk"]:
            limits["disk"], rec["disk_gb"] = size, size / 1e9
        log.info("lease %s takes the workspace of lease %s (%.1f GB)", rec["id"], old, size / 1e9)
        return None

    def _kept(self, old: str, renter: str) -> str | None:
        """Why lease old's workspace cannot be taken by a new lease of renter (None when it can)."""
        rec = self._store.get(old)
        if not rec or rec["renter"] != renter:  # the same words whether it exists or not
            return f"this host keeps no workspace of lease {old} for {renter}"
        if rec["state"] != "ended":
            return f"lease {old} is {rec['state']} on this host: its workspace cannot be taken"
        if rec.get("ws_to"):
            return f"the workspace of lease {old} moved to lease {rec['ws_to']}"
        if rec["ended_at"] + self._settings.values["retention"] <= self._clock.now():
            return f"the workspace of lease {old} is past its retention"
        return None

    async def _clean_up(self, lease_id: str) -> None:
        try:
            if (self._store.get(lease_id) or {}).get("ws_from"):
                await offload.call(self._runtime.stop, lease_id, 0, timeout=offload.START)
                await self._leases.give_back(lease_id)
            await offload.call(self._runtime.purge, lease_id, timeout=offload.START)
        except (RuntimeError_, asyncio.TimeoutError, OSError) as exc:
            log.warning("lease %s: cleaning up a start that timed out failed: %s", lease_id, exc)
        finally:
            self._cleaning.discard(lease_id)
