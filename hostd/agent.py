"""hostd's daemon: builds its parts (hostd's module map is in docs/architecture.md), runs their loops
and stays connected to the broker. Lease enforcement lives in hostd.leases and runs whether or not the
broker is reachable."""
import asyncio

from shellrent.keys import material

from . import gpus as gpus_mod, limits as kernel_limits, spawn, tunnel
from .clock import Clock
from .config import Config
from .control import Control
from .disk import Workspaces
from .diskwatch import DiskWatch
from .caps import Caps
from .egress import EgressGuard
from .gpuhealth import GpuHealth
from .inventory import Inventory
from .leases import Leases
from .outbox import Outbox
from .pacing import Pacing
from .pulls import Pulls
from .runtime import Runtime
from .runtime_spec import owner_of
from .sessionhost import SessionHost
from .settingswatch import SettingsWatch
from .sizing import default_limits
from .starts import Starts
from .status import StatusFile
from .store import Store
from .upkeep import Upkeep
from .watch import Watch


class Agent:
    """One hostd: its key, its broker pin, the control calls it answers; open_runtime() adds the
    parts that need the engine (a join needs none of them)."""

    def __init__(self, config: Config, broker_fingerprint: str, token: str | None = None):
        self.loop = asyncio.get_running_loop()
        self.config = config
        self.key = material.load_or_create(config.key_path)
        self.broker_fingerprint = broker_fingerprint
        self.owner = owner_of(self.key)
        self.clock = Clock(config.home / "clock.json")  # the broker's time, as the broker measured it
        self.settings_watch = SettingsWatch(
            config.home / "settings.json",
            lambda fake: gpus_mod.open_source(fake, self.owner, config.fake_gpu_state))
        self.settings = self.settings_watch.current
        self.outbox = Outbox()
        self.emit = self.outbox.emit
        self.status = StatusFile(config.status_path)
        self.egress = EgressGuard(self.settings)
        self.control = Control(self, token)
        self.store = self.runtime = self.leases = self.pulls = self.inventory = None
        self.health = self.sessionhost = self.starts = self.caps = None

    def open_runtime(self) -> None:
        """Settings, GPUs, Docker and the lease record; then reconcile and arm every lease."""
        config, settings = self.config, self.settings_watch
        settings.reload()
        self.store = Store(config.db_path)
        workspaces = Workspaces.open(config.home / "workspaces", config.disk_check)
        self.runtime = Runtime(self.owner, default_limits(), workspaces)
        kernel_limits.size()
        self.runtime.say_unenforced()
        self.health = GpuHealth(config, settings.gpu_source, self.settings, self.store, self.runtime, self.emit,
                                self.status, lambda lease_id: self.leases.end(lease_id, why="gpu"))
        self.inventory = Inventory(settings.gpu_source, self.settings, self.runtime, self.health)
        self.pulls = Pulls(self.runtime.pull, changed=self.inventory.images_changed)
        self.leases = Leases(config, self.runtime, self.store, self.settings, self.emit, self.clock)
        sessions = spawn.Sessions(self.runtime, self.leases.lease_dir)
        self.caps = Caps(self.settings, self.store, Pacing(), self.status)
        self.outbox.subscribe(lambda event: self._heard(event, sessions))
        self.sessionhost = SessionHost(self.store, self.runtime, self.leases, sessions, self.settings,
                                       self.caps.pacing)
        self.starts = Starts(self.store, self.runtime, self.leases, sessions, self.egress, self.health,
                             self.inventory, settings, self.clock, self.caps)
        self.leases.reconcile()

    def _heard(self, event: dict, sessions: spawn.Sessions) -> None:
        """What hostd itself does on its own events, before they are sent."""
        if event["type"] in ("lease.ended", "lease.purged"):
            sessions.forget(event["id"])
        if event["type"] == "lease.ended":
            self.health.wake()  # its GPUs' power limits back now

    def learn_brokers(self, raw) -> None:
        """Keep the brokers' tunnel addresses a welcome names (hostd dials the others when it loses one)."""
        brokers, pin = tunnel.brokers_from(raw), self.config.load_pin()
        if brokers and pin is not None and pin.get("brokers") != brokers:
            self.config.save_pin({**pin, "brokers": brokers})

    async def run_forever(self, host: str, port: int) -> None:
        """The loops (upkeep, disk and container watches, GPU health) and the tunnel, until cancelled."""
        upkeep = Upkeep(self.settings_watch, self.egress, self.health, self.inventory, self.pulls, self.status,
                        self.emit, lambda: self.control.host_name is not None, self.caps)
        loops = [self.loop.create_task(c) for c in (
            upkeep.run(), self.health.run(),
            DiskWatch(self.runtime, self.store, self.leases, self.config.disk_check).run(),
            Watch(self.runtime, self.store, self.leases, self.emit, self.config.container_check,
                  self.caps.revived).run())]
        try:
            await tunnel.stay_connected(self, host, port)
        finally:
            for task in loops:
                task.cancel()
