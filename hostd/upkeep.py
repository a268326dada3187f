"""hostd's once-a-second upkeep: settings reread, the egress policy and the bandwidth caps kept in force, the required GPU
checks retried, the inventory reported when it changes, listed images pulled, the GPU self-check
started when due."""
import asyncio
import logging

from shellrent.common import protocol

from . import offload

log = logging.getLogger("shellrent.agent")
EGRESS_EVERY = 10  # turns between checks that the egress policy is in force
CHECKS_EVERY = 60  # turns between runs of the required GPU checks


class Upkeep:
    def __init__(self, settings, egress, health, inventory, pulls, status, emit, welcomed, caps=None):
        self._settings = settings  # hostd.settingswatch
        self._egress = egress
        self._health = health
        self._inventory = inventory
        self._pulls = pulls
        self._status = status
        self._emit = emit
        self._welcomed = welcomed  # () -> whether the broker has welcomed this host
        self._caps = caps  # hostd.caps

    async def run(self) -> None:
        tick = 0
        while True:
            await self.turn(tick)
            tick += 1
            await asyncio.sleep(1)

    async def turn(self, tick: int) -> None:
        egress = self._settings.values["egress_allow"]
        changed = self._settings.reload() and self._settings.values["egress_allow"] != egress
        if changed or tick % EGRESS_EVERY == 0:
            try:
                await offload.call(self._egress.install if changed else self._egress.in_force, timeout=60)
            except asyncio.TimeoutError:
                log.error("egress policy: iptables did not answer in time")
        if self._caps:
            try:
                await self._caps.turn()
            except Exception:  # never the end of this loop
                log.exception("bandwidth caps")
        if tick % CHECKS_EVERY == CHECKS_EVERY - 1:
            await self._health.recheck()
        try:
            inv = await offload.call(self._inventory.read, timeout=30)
        except asyncio.TimeoutError:
            log.warning("inventory: timed out")
            inv = self._inventory.last
        except Exception:  # never the end of this loop: settings, egress and inventory live here
            log.exception("inventory")
            inv = self._inventory.last
        if inv != self._inventory.last:
            self._inventory.last = inv
            self._emit({"type": "inventory", "inventory": inv})
        if inv:
            self._keep_images(inv)
            if self._welcomed():
                self._health.self_check(inv)

    def _keep_images(self, inv: dict) -> None:
        """Pull the listed images that are not here, in the background; show pulls in the status."""
        self._pulls.keep([i for i in protocol.image_list(inv["images"]) if i != "*" and i not in inv["ready"]])
        images = {"pulling": self._pulls.pulling(), "failed": self._pulls.failures()}
        if self._status.get("images") != images:
            self._status.set(images=images)
