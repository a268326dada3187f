"""What hostd offers the broker: its GPUs that pass every check, the shares per GPU, price, window,
images and bandwidth caps. `build` is the rule; `Inventory` reads this machine, its GPU source and its engine for it."""
import logging
import os
import time

from shellrent.common import protocol

from . import gpus as gpus_mod
from .runtime import RuntimeError_

log = logging.getLogger("shellrent.agent")
VERSION = "0.2.0"
READY_EVERY = 10  # seconds between asking the engine which listed images are here
NO_DRIVER = {"driver_version": "", "cuda_version": 0.0}


def build(s: dict, gpus: list[dict], driver: dict, *, failing: bool, withdrawn, checked: dict, source: str,
          cores: int, ram_gb: float, disk_gb: float, ready: list[str]) -> dict:
    """The inventory from settings `s` and readable `gpus`: a GPU is shared when the settings name it
    and it is not withdrawn, and none is while a required check fails."""
    wanted = None if s["gpus"] == "all" else {int(i) for i in s["gpus"].split(",")}
    shared = [] if failing else [
        g["uuid"] for g in gpus if (wanted is None or g["index"] in wanted) and g["uuid"] not in withdrawn]
    n = max(1, len(shared))
    return {"gpus": [{k: g[k] for k in ("index", "uuid", "name", "memory_gb")} for g in gpus],
            "shared": shared, "checked": checked, "gpu_source": source, **driver,
            "cpu_cores": cores, "ram_gb": round(ram_gb, 1), "disk_gb": round(disk_gb),
            "cpu_per_gpu": s["cpu_per_gpu"] or max(1, cores // n),
            "ram_per_gpu": s["ram_per_gpu"] or round(ram_gb * 0.8 / n, 1),
            "disk_per_gpu": s["disk_per_gpu"] or round(disk_gb / n),
            "price": int(round(s["price"] * 1_000_000)), "window": s["window"], "paused": s["paused"],
            "geolocation": s["geolocation"], "images": s["images"], "ready": ready, "version": VERSION,
            "retention": s["retention"], "bandwidth": s["bandwidth"], "bandwidth_total": s["bandwidth_total"]}


class Inventory:
    """Reads the inventory (in a thread: NVML and the engine may block); `last` is the one reported."""

    def __init__(self, gpus, settings, runtime, health):
        self._gpus = gpus  # () -> the GPU source
        self._settings = settings
        self._runtime = runtime
        self._health = health  # hostd.gpuhealth: the checks that fail, GPUs withdrawn, self-check results
        self.last: dict | None = None
        self._ready: tuple[float, str, list[str]] | None = None  # (when, images setting, those here)

    def read(self) -> dict:
        source = self._gpus()
        try:
            gpus = [g for g in source.gpus() if g.get("uuid") and not g.get("error")]
            driver = source.driver()
        except gpus_mod.GpuError as exc:  # the driver went away: offer no GPU until it is back
            log.error("offering no GPUs: %s", exc)
            gpus, driver = [], NO_DRIVER
        return build(self._settings(), gpus, driver, failing=bool(self._health.failures),
                     withdrawn=self._health.withdrawn(), checked=self._health.verified({g["uuid"] for g in gpus}),
                     source=source.kind, cores=os.cpu_count() or 1,
                     ram_gb=os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9,
                     disk_gb=self._runtime.disk_free_gb(), ready=self.ready_images())

    def images_changed(self) -> None:
        """A pull ended: ask the engine again which images are here."""
        self._ready = None

    def ready_images(self) -> list[str]:
        """The listed images present here: the ones offered (the others are pulled first). Asked of
        the engine every READY_EVERY seconds, at once when the setting changes or a pull ends."""
        listed, cached = self._settings()["images"], self._ready
        if cached and cached[1] == listed and time.monotonic() - cached[0] < READY_EVERY:
            return cached[2]
        try:
            ready = [i for i in protocol.image_list(listed) if i != "*" and self._runtime.has_image(i)]
        except RuntimeError_:  # the engine does not answer: none is known to be here
            return []
        self._ready = (time.monotonic(), listed, ready)
        return ready
