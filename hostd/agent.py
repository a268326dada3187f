"""hostd's agent: dials the broker, answers its control calls, reports inventory and lease events.

Lease enforcement lives in hostd.leases and runs whether or not the broker is reachable.
"""
import asyncio
import json
import logging
import os
import random
import time

import asyncssh

from shellrent.common import algorithms, flow, protocol
from shellrent.keys import material, tokens

from . import gpus as gpus_mod, limits as kernel_limits, metrics as hostd_metrics, offload, selfcheck, \
    settings as settings_mod, spawn
from .clock import Clock
from .config import Config
from .disk import Workspaces
from .diskwatch import DiskWatch
from .egress import EgressGuard
from .gpuwatch import GpuWatch
from .leases import Leases
from .outbox import Outbox
from .pulls import PullError, Pulls
from .procfs import pid_max
from .runtime import Runtime, RuntimeError_
from .sizing import default_limits
from .starts import Starts
from .status import StatusFile
from .sshserver import HostServer, SessionError
from .store import Store
from .watch import Watch

log = logging.getLogger("shellrent.agent")
VERSION = "0.2.0"
READY_EVERY = 10  # seconds between asking the engine which listed images are here
CIPHERS = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com"]


class JoinError(Exception):
    """Joining the broker failed; str() is the reason."""


class Agent:
    """One hostd: its key, its broker pin, its settings, GPUs and leases, its connection state."""

    def __init__(self, config: Config, broker_fingerprint: str, token: str | None = None):
        self.config = config
        self.key = material.load_or_create(config.key_path)
        self.broker_fingerprint = broker_fingerprint
        self._token = token
        self.host_name: str | None = None
        self.joined = asyncio.get_running_loop().create_future()
        self.runtime: Runtime | None = None
        self.store: Store | None = None
        self.leases: Leases | None = None
        self.clock = Clock(config.home / "clock.json")  # the broker's time, as the broker measured it
        self.sessions: spawn.Sessions | None = None
        self._settings = settings_mod.defaults()
        self._settings_mtime = None
        self._gpus = None
        self.gpuwatch: GpuWatch | None = None
        self._gpu_failures: list[str] = []  # required GPU checks that fail: no GPU is offered
        self._gpu_wake = asyncio.Event()
        self._kills: list[dict] = []
        self._check_task: asyncio.Task | None = None
        self._selfcheck: dict = {}  # the last self-check's result (selfcheck.json, read once at start)
        self._inventory: dict | None = None
        self.pulls: Pulls | None = None
        self._ready: tuple[float, str, list[str]] | None = None  # (when, images setting, those here)
        self.outbox = Outbox()
        self.outbox.subscribe(self._heard)
        self._rejected: str | None = None  # why the broker refused the last connection
        self.starts = Starts(self)
        self.egress = EgressGuard(self.settings)
        self.status = StatusFile(config.status_path)

    @property
    def owner(self) -> str:
        return material.fingerprint(self.key).removeprefix("SHA256:")[:16]

    @property
    def settings_path(self):
        return self.config.home / "settings.json"

    def settings(self) -> dict:
        return self._settings

    # what the parts read of the daemon (hostd.starts)
    def gpu_source(self):
        return self._gpus

    def gpu_failures(self) -> list[str]:
        return self._gpu_failures

    def current_inventory(self) -> dict | None:
        return self._inventory

    def wake_gpus(self) -> None:
        self._gpu_wake.set()

    @staticmethod
    def cores() -> list[int]:
        return sorted(os.sched_getaffinity(0))

    @staticmethod
    def pid_max() -> int:
        return pid_max()

    def open_runtime(self) -> None:
        """Settings, GPUs, Docker and the lease record; then reconcile and arm every lease."""
        self._reload_settings()
        self.store = Store(self.config.db_path)
        ws_root = self.config.home / "workspaces"
        why = Workspaces.check(ws_root)
        if why:
            log.warning("disk shares NOT enforced for /workspace (%s): it is an engine volume", why)
        else:
            log.info("disk shares: /workspace is a filesystem of the lease's size (ENOSPC past it); "
                     "the writable layer is watched every %.0fs", self.config.disk_check)
        self.runtime = Runtime(self.owner, default_limits(), None if why else Workspaces(ws_root))
        kernel_limits.size()
        self.pulls = Pulls(self.runtime.pull, changed=lambda: setattr(self, "_ready", None))
        for what in self.runtime.unenforced_limits():
            log.warning("the Docker engine cannot enforce: %s", what)
        # The egress policy is installed by the watch loop's first turn, in a thread (iptables may
        # wait up to 20 s for its lock while the engine holds it; connecting does not wait for that),
        # and before any lease starts (_egress_in_force).
        self._selfcheck = selfcheck.load(self.config.home / "selfcheck.json")
        self.gpuwatch = GpuWatch(lambda: self._gpus, self.store, self.settings, self.config.power_path)
        self._gpu_failures = self._gpu_checks()
        self.leases = Leases(self.config, self.runtime, self.store, self.settings, self.emit, self.clock)
        self.sessions = spawn.Sessions(self.runtime, self.leases.lease_dir)
        self.leases.reconcile()

    def _gpu_checks(self) -> list[str]:
        """The required GPU checks of `hostd doctor` (driver, container toolkit and its config); while
        one fails, no GPU is offered."""
        from .doctor import gpu_failures
        try:
            failures = gpu_failures(self._gpus, self.runtime.client.info())
        except Exception as exc:  # the checks themselves broke: say so, offer nothing
            failures = [f"the GPU checks could not run: {exc}"]
        for why in set(failures) - set(self._gpu_failures):
            log.error("offering no GPUs until this is fixed (see `hostd doctor`): %s", why)
        if self._gpu_failures and not failures:
            log.info("the required GPU checks pass now: offering GPUs")
        return failures

    def _reload_settings(self) -> bool:
        try:
            mtime = self.settings_path.stat().st_mtime_ns
        except FileNotFoundError:
            mtime = None
        if mtime == self._settings_mtime and self._gpus is not None:
            return False
        try:
            new = settings_mod.load(self.settings_path)
        except settings_mod.SettingsError as exc:
            log.error("keeping the old settings: %s", exc)
            self._settings_mtime = mtime
            return False
        if self._gpus is None or new["fake_gpus"] != self._settings["fake_gpus"]:
            self._gpus = gpus_mod.open_source(new["fake_gpus"], self.owner, self.config.fake_gpu_state)
        self._settings, self._settings_mtime = new, mtime
        return True

    async def watch(self) -> None:
        """Notice settings changes and inventory drift; report them to the broker."""
        tick = 0
        while True:
            egress = self._settings["egress_allow"]
            changed = self._reload_settings() and self._settings["egress_allow"] != egress
            if self.runtime and (changed or tick % 10 == 0):
                try:
                    await offload.call(self.egress.install if changed else self.egress.in_force, timeout=60)
                except asyncio.TimeoutError:
                    log.error("egress policy: iptables did not answer in time")
            if self.runtime and tick % 60 == 59:  # a provider who fixed the driver or toolkit: no restart needed
                try:
                    self._gpu_failures = await offload.call(self._gpu_checks, timeout=30)
                except asyncio.TimeoutError:
                    log.warning("the GPU checks did not finish in time")
            tick += 1
            try:
                inv = await offload.call(self.inventory, timeout=30)
            except asyncio.TimeoutError:
                log.warning("inventory: timed out")
                inv = self._inventory
            except Exception:  # never the end of this loop: settings, egress and inventory live here
                log.exception("inventory")
                inv = self._inventory
            if inv != self._inventory:
                self._inventory = inv
                self.emit({"type": "inventory", "inventory": inv})
            if self.pulls and inv:
                self._keep_images(inv)
            if self.runtime and self.host_name and inv:
                self._check_gpus()
            await asyncio.sleep(1)

    def _keep_images(self, inv: dict) -> None:
        """Pull the listed images that are not here, in the background; show pulls in the status."""
        self.pulls.keep([i for i in protocol.image_list(inv["images"]) if i != "*" and i not in inv["ready"]])
        images = {"pulling": self.pulls.pulling(), "failed": self.pulls.failures()}
        if self.status.get("images") != images:
            self.status.set(images=images)

    async def watch_gpus(self) -> None:
        """The GPU watchdog and power limits (hostd.gpuwatch), every `watchdog` seconds and at once
        after a lease starts or ends."""
        while True:
            try:
                result = await offload.call(self.gpuwatch.pass_once, timeout=60)
            except Exception as exc:  # a GPU source that hangs or breaks: say so, try again
                log.error("GPU watchdog: %s", exc or "timed out")
            else:
                for report in result["killed"]:
                    self.emit(report)
                for lid, uuid in result["lost"].items():
                    log.error("lease %s: its GPU %s is lost: ending the lease", lid, uuid)
                    asyncio.get_running_loop().create_task(self.leases.end(lid))
                hostd_metrics.KILLS.inc(len(result["killed"]))
                self._kills = (self._kills + result["killed"])[-20:]
                status = {"gpu_problems": result["problems"], "gpu_kills": self._kills,
                          "gpu_failures": self._gpu_failures}
                if any(self.status.get(k) != v for k, v in status.items()):
                    self.status.set(**status)
            try:
                await asyncio.wait_for(self._gpu_wake.wait(), self._settings["watchdog"])
            except asyncio.TimeoutError:
                pass
            self._gpu_wake.clear()

    def _check_gpus(self) -> None:
        """Start the GPU self-check when it is due (never run, a new driver, a new GPU)."""
        if self._check_task and not self._check_task.done():
            return
        inv = self._inventory or {}
        held = {u for r in self.store.holding() for u in json.loads(r["gpus"] or "[]")}
        uuids = [u for u in inv.get("shared", []) if u not in held]
        driver = inv.get("driver_version", "")
        if not selfcheck.due(self._selfcheck, driver, uuids, time.time()):
            return
        s = self._settings
        if self._gpus.kind == "fake" and not s["check_image"]:
            return  # fake GPUs are checked only in an image made for them (tests)
        image = s["check_image"] or next((i for i in protocol.image_list(s["images"]) if i != "*"), "")
        if not image:
            log.warning("GPU self-check: set check_image to an image with torch")
            return
        log.info("GPU self-check of %d GPU(s) in %s", len(uuids), image)
        self._check_task = asyncio.get_running_loop().create_task(self._run_check(image, uuids, driver))

    async def _run_check(self, image: str, uuids: list[str], driver: str) -> None:
        try:
            self._selfcheck = await offload.call(
                selfcheck.run, self.runtime, image, uuids, self._gpus.device_ids(uuids), driver,
                self.config.home / "selfcheck.json", self.gpuwatch.checking.add, timeout=900)
        except asyncio.TimeoutError:
            log.error("GPU self-check did not finish in 15 minutes")
        except Exception:  # a bug: say it once, and do not run it again until the next start
            log.exception("GPU self-check failed")
            self._check_task = asyncio.get_running_loop().create_future()  # never done: no new check
        self._inventory = None  # report the result

    def inventory(self) -> dict:
        s = self._settings
        try:
            gpus = [g for g in self._gpus.gpus() if g.get("uuid") and not g.get("error")]
            driver = self._gpus.driver()
        except gpus_mod.GpuError as exc:  # the driver went away: offer no GPU until it is back
            log.error("offering no GPUs: %s", exc)
            gpus, driver = [], {"driver_version": "", "cuda_version": 0.0}
        wanted = None if s["gpus"] == "all" else {int(i) for i in s["gpus"].split(",")}
        withdrawn = self.gpuwatch.withdrawn if self.gpuwatch else {}
        shared = [] if self._gpu_failures else [
            g["uuid"] for g in gpus if (wanted is None or g["index"] in wanted) and g["uuid"] not in withdrawn]
        checked = selfcheck.verified(self._selfcheck, {g["uuid"] for g in gpus})
        gpus = [{k: g[k] for k in ("index", "uuid", "name", "memory_gb")} for g in gpus]
        n = max(1, len(shared))
        cores = os.cpu_count() or 1
        ram_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
        disk_gb = self.runtime.disk_free_gb() if self.runtime else 0.0
        return {"gpus": gpus, "shared": shared, "checked": checked, "gpu_source": self._gpus.kind,
                **driver,
                "cpu_cores": cores, "ram_gb": round(ram_gb, 1), "disk_gb": round(disk_gb),
                "cpu_per_gpu": s["cpu_per_gpu"] or max(1, cores // n),
                "ram_per_gpu": s["ram_per_gpu"] or round(ram_gb * 0.8 / n, 1),
                "disk_per_gpu": s["disk_per_gpu"] or round(disk_gb / n),
                "price": int(round(s["price"] * 1_000_000)), "window": s["window"], "paused": s["paused"],
                "geolocation": s["geolocation"], "images": s["images"], "ready": self._ready_images(),
                "version": VERSION}

    def _ready_images(self) -> list[str]:
        """The listed images present here: the ones offered (the others are pulled first). Asked of
        the engine every READY_EVERY seconds, at once when the setting changes or a pull ends."""
        if not self.runtime:
            return []
        listed, cached = self._settings["images"], self._ready
        if cached and cached[1] == listed and time.monotonic() - cached[0] < READY_EVERY:
            return cached[2]
        try:
            ready = [i for i in protocol.image_list(listed) if i != "*" and self.runtime.has_image(i)]
        except RuntimeError_:  # the engine does not answer: none is known to be here
            return []
        self._ready = (time.monotonic(), listed, ready)
        return ready

    # events to the broker
    def attach_sink(self, session) -> None:
        self.outbox.attach(session)

    def detach_sink(self, session) -> None:
        self.outbox.detach(session)

    def emit(self, event: dict) -> None:
        self.outbox.emit(event)

    def _heard(self, event: dict) -> None:
        """What hostd itself does on its own events, before they are sent."""
        if event["type"] in ("lease.ended", "lease.purged") and self.sessions:
            self.sessions.forget(event["id"])
        if event["type"] == "lease.ended":
            self._gpu_wake.set()  # its GPUs' power limits back now

    # what sessions need
    async def session_lease(self, lease_id: str | None, files_only: bool = False) -> dict:
        """The lease record a session runs in; an ended lease serves its files during retention."""
        try:
            rec = self.store.get(protocol.lease_id(lease_id))
        except protocol.WireError:
            raise SessionError("this session names no valid lease") from None
        deadline = time.monotonic() + self._settings["grace"] + 30
        while files_only and rec and rec["state"] == "ending" and time.monotonic() < deadline:
            await asyncio.sleep(0.1)  # its processes are being stopped; the files come right after
            rec = self.store.get(lease_id)
        if rec and rec["state"] == "active":
            return rec
        if rec and rec["state"] == "ended" and files_only:
            try:
                container = await offload.call(self.runtime.files_container, rec, timeout=offload.START)
            except (RuntimeError_, asyncio.TimeoutError) as exc:
                raise SessionError(f"the lease's files cannot be served now: {exc or 'timed out'}") from None
            return {**rec, "container": container, "shell": "/bin/sh"}
        state = rec["state"] if rec else "unknown"
        raise SessionError(f"lease {lease_id} is {state} on this host")

    async def container_pid(self, lease_id: str) -> int:
        rec = await self.session_lease(lease_id)
        try:
            return await offload.call(self.runtime.pid, rec["container"], timeout=offload.QUICK)
        except (RuntimeError_, asyncio.TimeoutError) as exc:
            raise SessionError(f"the container did not answer: {exc or 'timed out'}") from None

    # control calls from the broker, on the control channel only (hostd.sshserver)
    async def control(self, req: dict, channel=None) -> dict:
        op = req.get("op")
        handler = _OPS.get(op) if isinstance(op, str) else None
        if handler is None:
            return {"ok": False, "error": f"unknown op {protocol.printable(str(op))[:40]!r}"}
        if op not in ("hello", "welcome", "reject") and self.host_name is None:
            return {"ok": False, "error": f"{op} before welcome"}
        reply = await handler(self, req)
        if op == "welcome" and channel is not None:
            self.attach_sink(channel)
        return reply

    async def _op_hello(self, req):
        leases = {r["id"]: {"state": r["state"], "ended_at": r.get("ended_at"), "ends_at": r.get("ends_at"),
                            "downs": json.loads(r.get("downs") or "[]")[-100:]}
                  for r in self.store.all()} if self.store else {}
        inv = await offload.call(self.inventory, timeout=30) if self.runtime else None
        self._inventory = inv
        return {"ok": True, "proto": protocol.PROTO, "version": VERSION, "token": self._token, "leases": leases,
                "inventory": inv, "time": self.clock.host()}

    async def _op_welcome(self, req):
        self.host_name = protocol.name(req.get("host"), "host name")
        self._clock_from(req)
        self.status.set(connected=True, host=self.host_name, since=time.time(), error=None)
        if not self.joined.done():
            self.joined.set_result(self.host_name)
        return {"ok": True}

    async def _op_clock(self, req):
        """The broker measures this machine's clock (the reply's time) and says what it measured before."""
        self._clock_from(req)
        return {"ok": True, "time": self.clock.host()}

    def _clock_from(self, req: dict) -> None:
        if req.get("offset") is None:
            return
        try:
            moved = self.clock.set(req["offset"])
        except ValueError as exc:
            raise protocol.WireError(str(exc)) from None
        if moved and self.leases:
            self.leases.clock_moved()

    async def _op_reject(self, req):
        error = protocol.printable(str(req.get("error") or "the broker refused this host"))[:300]
        self._rejected = error
        self.status.set(connected=False, error=error)
        if not self.joined.done():
            self.joined.set_exception(JoinError(error))
        return {"ok": True}

    async def _op_earnings(self, req):
        earned = req.get("earned", 0)
        if isinstance(earned, bool) or not isinstance(earned, int):
            raise protocol.WireError("bad earnings")
        self.status.set(earned=earned)
        return {"ok": True}

    async def _op_image_pull(self, req):
        """Pull a listed image for a rent, sending its progress as pull.progress events; answered
        when it is here. Only listed images: a renter never has a provider pull an image of its own."""
        image = protocol.image(req.get("image"))
        if image not in protocol.image_list(self._settings["images"]):
            return {"ok": False, "error": f"image {image!r} is not listed on this host "
                                          f"(listed: {self._settings['images']})"}
        try:
            await self.pulls.pull(image, self._relay_pull)  # one relay per pull, however many rents wait
        except PullError as exc:
            return {"ok": False, "error": f"pulling {image} failed: {exc}"}
        return {"ok": True}

    def _relay_pull(self, view: dict) -> None:
        self.emit({"type": "pull.progress", **view})

    async def _op_lease_start(self, req):
        return await self.starts.start(req)

    async def _op_lease_stop(self, req):
        lease_id = protocol.lease_id(req.get("id"))
        await self.starts.wait(lease_id)  # stopped while its container is being made: stop it once made
        rec = self.store.get(lease_id)
        if not rec:
            return {"ok": True, "state": "absent"}
        await self.leases.end(lease_id)
        rec = self.store.get(lease_id)
        return {"ok": True, "state": rec["state"], "ended_at": rec.get("ended_at")}

    async def _op_lease_extend(self, req):
        try:
            self.leases.extend(protocol.lease_id(req.get("id")), protocol.timestamp(req.get("ends_at"), "end time"))
        except ValueError as exc:
            return {"ok": False, "error": str(exc)}
        return {"ok": True}

    async def _op_lease_discard(self, req):
        lease_id = protocol.lease_id(req.get("id"))
        await self.starts.wait(lease_id)  # its container is being made: discard it once it is
        await self.leases.discard(lease_id)
        return {"ok": True}

    # connection
    async def connect(self, host: str, port: int) -> asyncssh.SSHServerConnection:
        flow.mend_windows()
        return await asyncio.wait_for(asyncssh.connect_reverse(host, port, **algorithms.server(
            server_factory=lambda: HostServer(self), server_host_keys=[self.key], signature_algs=algorithms.HOST_KEYS,
            encoding=None, line_editor=False, encryption_algs=CIPHERS, x11_forwarding=False,
            agent_forwarding=False, allow_scp=False, keepalive_interval=self.config.keepalive,
            keepalive_count_max=3, login_timeout=30, server_version="shellrent-hostd")), 30)

    async def run_forever(self, host: str, port: int) -> None:
        """Stay connected: reconnect after any drop, exponential backoff with full jitter."""
        watcher = asyncio.get_running_loop().create_task(self.watch())
        disk = asyncio.get_running_loop().create_task(
            DiskWatch(self.runtime, self.store, self.leases, self.config.disk_check).run())
        containers = asyncio.get_running_loop().create_task(
            Watch(self.runtime, self.store, self.leases, self.emit, self.config.container_check).run())
        gpu_watch = asyncio.get_running_loop().create_task(self.watch_gpus())
        attempt = 0
        try:
            while True:
                self._rejected = None
                try:
                    conn = await self.connect(host, port)
                except (OSError, asyncssh.Error, asyncio.TimeoutError) as exc:
                    self.status.set(connected=False, error=f"connect failed: {exc or type(exc).__name__}")
                else:
                    await conn.wait_closed()
                    if self.status.get("connected"):
                        attempt = 0
                    self.status.set(connected=False, error=self._rejected or "connection closed")
                delay = random.uniform(0, min(self.config.backoff_max, self.config.backoff_base * 2 ** attempt))
                attempt = min(attempt + 1, 30)
                log.info("reconnecting to %s:%d in %.1fs", host, port, delay)
                await asyncio.sleep(delay)
        finally:
            for task in (watcher, disk, containers, gpu_watch, self._check_task):
                if task:
                    task.cancel()


_OPS = {"hello": Agent._op_hello, "welcome": Agent._op_welcome, "reject": Agent._op_reject,
        "clock": Agent._op_clock, "earnings": Agent._op_earnings, "lease.start": Agent._op_lease_start,
        "image.pull": Agent._op_image_pull, "lease.stop": Agent._op_lease_stop,
        "lease.extend": Agent._op_lease_extend, "lease.discard": Agent._op_lease_discard}


async def join(config: Config, host: str, port: int, token: str) -> str:
    """Register this machine with the broker once; returns the host name the broker gave it."""
    try:
        secret, fpr = tokens.split(token)
    except tokens.TokenError as exc:
        raise JoinError(str(exc)) from None
    if config.load_pin():
        raise JoinError(f"{config.home} has already joined a broker; use a new --home to join again")
    agent = Agent(config, fpr, token=secret)
    try:
        conn = await agent.connect(host, port)
    except asyncio.TimeoutError:
        raise JoinError(f"no broker answered at {host}:{port} (timed out)") from None
    except (OSError, asyncssh.Error) as exc:
        raise JoinError(f"cannot join the broker at {host}:{port}: {exc}") from None
    try:
        name = await asyncio.wait_for(asyncio.shield(agent.joined), 30)
    except asyncio.TimeoutError:
        raise JoinError(f"the server at {host}:{port} did not complete the join (is it a shellrent broker?)") from None
    finally:
        conn.close()
    config.save_pin({"addr": [host, port], "fingerprint": fpr, "host": name})
    return name
