"""hostd's Prometheus metrics (`hostd run --metrics 127.0.0.1:9465`): leases, container restarts, each
GPU's use, memory, power and temperature (from the GPU source), and the watchdog's kills."""
import asyncio
import json

from prometheus_client import CollectorRegistry, Counter, Gauge

from . import offload
from .gpus import GpuError

REGISTRY = CollectorRegistry()
KILLS = Counter("shellrent_hostd_watchdog_kills", "Processes the GPU watchdog killed", registry=REGISTRY)
LEASES = Gauge("shellrent_hostd_leases", "Leases on this host by state", ["state"], registry=REGISTRY)
RESTARTS = Gauge("shellrent_hostd_container_restarts", "Times lease containers went down and were revived "
                 "(leases on record)", registry=REGISTRY)
_GPU = ["gpu", "uuid", "name"]
UTIL = Gauge("shellrent_hostd_gpu_utilization_percent", "GPU utilisation", _GPU, registry=REGISTRY)
MEMORY = Gauge("shellrent_hostd_gpu_memory_used_bytes", "GPU memory in use", _GPU, registry=REGISTRY)
MEMORY_TOTAL = Gauge("shellrent_hostd_gpu_memory_total_bytes", "GPU memory", _GPU, registry=REGISTRY)
POWER = Gauge("shellrent_hostd_gpu_power_watts", "GPU power draw", _GPU, registry=REGISTRY)
POWER_LIMIT = Gauge("shellrent_hostd_gpu_power_limit_watts", "GPU power limit in force", _GPU, registry=REGISTRY)
TEMP = Gauge("shellrent_hostd_gpu_temperature_celsius", "GPU temperature", _GPU, registry=REGISTRY)
READABLE = Gauge("shellrent_hostd_gpu_readable", "1 when the GPU source could read the GPU", _GPU,
                 registry=REGISTRY)
STATES = ("starting", "active", "ending", "ended", "purged", "lost")
_last: list[dict] = []  # the GPUs of the last good read, shown unreadable when a read fails


async def refresh(agent) -> None:
    """Read the store and the GPU source (in a thread: NVML may block) into the gauges."""
    records = agent.store.all() if agent.store else []
    for state in STATES:
        LEASES.labels(state).set(sum(r["state"] == state for r in records))
    RESTARTS.set(sum(len(json.loads(r.get("downs") or "[]")) for r in records))
    try:
        gpus = await offload.call(agent.settings_watch.gpus.gpus, timeout=offload.QUICK)
    except (GpuError, asyncio.TimeoutError):  # the driver is gone or hangs: every GPU unreadable
        gpus = [{**g, "error": "unreadable"} for g in _last]
    _last[:] = gpus
    for gauge in (UTIL, MEMORY, MEMORY_TOTAL, POWER, POWER_LIMIT, TEMP, READABLE):
        gauge.clear()
    for g in gpus:
        labels = (str(g["index"]), g.get("uuid") or "?", g.get("name") or "?")
        READABLE.labels(*labels).set(0 if g.get("error") else 1)
        for gauge, key, scale in ((UTIL, "utilization", 1), (MEMORY, "memory_used_gb", 2**30),
                                  (MEMORY_TOTAL, "memory_gb", 2**30), (POWER, "power_w", 1),
                                  (POWER_LIMIT, "power_limit_w", 1), (TEMP, "temperature", 1)):
            if g.get(key) is not None and not g.get("error"):
                gauge.labels(*labels).set(g[key] * scale)
