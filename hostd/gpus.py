"""GPU sources behind one small interface. The only module that imports pynvml.

NvmlSource reads the real GPUs; FakeSource serves machines without one (development, tests) from the
fake_gpus setting. Nothing else in hostd knows which one it has. The interface:

    gpus()                    every GPU: index, uuid, name, memory_gb, and where known memory_used_gb,
                              utilization (%), temperature (C), power_w, power_limit_w; error when the
                              GPU cannot be read (lost, no permission): such a GPU is never offered
    driver()                  driver_version, cuda_version
    device_ids(uuids)         what to ask Docker for
    processes(uuid)           host pids of the compute and graphics processes on the GPU
    power_range(uuid)         (min, max, default) watts
    power_limit(uuid)         the limit in force, watts
    set_power_limit(uuid, w)  GpuError with a clear message when refused
"""
import hashlib
import json
import logging
from pathlib import Path

log = logging.getLogger("shellrent.gpus")


class GpuError(Exception):
    """A GPU could not be read or set; str() says which and why."""


class FakeSource:
    """GPUs from a 'MODEL:GB,MODEL:GB' setting; no devices are handed to containers.

    What a real GPU would report that tests need to drive (processes on a GPU, a GPU lost, refused
    power limits) lives in an optional JSON state file that only they write: {"processes": {uuid:
    [pid]}, "lost": [uuid], "refuse_power": bool}. The power limits set are the source's own, in a
    file beside it (NAME-power.json, replaced whole): two writers of one file would lose updates."""

    kind = "fake"
    POWER = (100.0, 450.0, 300.0)  # min, max, default watts of every fake GPU

    def __init__(self, spec: str, seed: str, state: Path | None = None):
        self._gpus = []
        self._state = state
        for i, part in enumerate(p.strip() for p in spec.split(",") if p.strip()):
            name, _, mem = part.rpartition(":")
            uuid = "GPU-fake-" + hashlib.sha256(f"{seed}/{i}/{name}".encode()).hexdigest()[:24]
            self._gpus.append({"index": i, "uuid": uuid, "name": name, "memory_gb": float(mem)})

    def _read(self) -> dict:
        if self._state is None:
            return {}
        try:
            state = json.loads(self._state.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(state, dict):
            return {}
        procs, lost = state.get("processes"), state.get("lost")
        pids = {u: [p for p in v if type(p) is int and 0 < p < 1 << 22]
                for u, v in (procs.items() if isinstance(procs, dict) else ()) if isinstance(v, list)}
        return {"processes": pids,
                "lost": [u for u in lost if isinstance(u, str)] if isinstance(lost, list) else [],
                "refuse_power": state.get("refuse_power") is True}

    def _powers(self) -> dict:
        """{uuid: watts} set through this source."""
        if self._state is None:
            return {}
        try:
            power = json.loads(self._state.with_name(self._state.stem + "-power.json").read_text())
        except (OSError, ValueError):
            return {}
        return {u: float(w) for u, w in power.items() if isinstance(w, (int, float)) and not isinstance(w, bool)} \
            if isinstance(power, dict) else {}

    def _known(self, uuid: str) -> None:
        if uuid not in {g["uuid"] for g in self._gpus}:
            raise GpuError(f"no GPU {uuid}")
        if uuid in self._read().get("lost", ()):
            raise GpuError(f"GPU {uuid} is lost (it fell off the bus); it needs a reset or a reboot")

    def gpus(self) -> list[dict]:
        state = self._read()
        lost = set(state.get("lost", ()))
        power = self._powers()
        out = []
        for g in self._gpus:
            if g["uuid"] in lost:
                out.append({**g, "error": "GPU is lost (it fell off the bus); it needs a reset or a reboot",
                            "lost": True})
                continue
            out.append({**g, "memory_used_gb": 0.0, "utilization": 0, "temperature": 30,
                        "power_w": 20.0, "power_limit_w": power.get(g["uuid"], self.POWER[2]), "error": None})
        return out

    def driver(self) -> dict:
        return {"driver_version": "fake", "cuda_version": 0.0}

    def device_ids(self, uuids: list[str]) -> list[str]:
        return []

    def processes(self, uuid: str) -> list[int]:
        self._known(uuid)
        return [int(p) for p in self._read().get("processes", {}).get(uuid, ())]

    def power_range(self, uuid: str) -> tuple[float, float, float]:
        self._known(uuid)
        return self.POWER

    def power_limit(self, uuid: str) -> float:
        return self._powers().get(uuid, self.POWER[2])

    def set_power_limit(self, uuid: str, watts: float) -> None:
        self._known(uuid)
        state = self._read()
        if state.get("refuse_power"):
            raise GpuError(f"GPU {uuid}: setting the power limit: Insufficient Permissions (run hostd as root)")
        lo, hi, _ = self.POWER
        if not lo <= watts <= hi:
            raise GpuError(f"GPU {uuid}: {watts:g} W is outside {lo:g}-{hi:g} W")
        if self._state is not None:
            path = self._state.with_name(self._state.stem + "-power.json")
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({**self._powers(), uuid: float(watts)}))
            tmp.replace(path)


class NvmlSource:
    """The machine's NVIDIA GPUs through NVML (nvidia-ml-py; `nvml` is that module or a stand-in)."""

    kind = "nvml"

    def __init__(self, nvml=None):
        if nvml is None:
            import pynvml as nvml
        self._nvml = nvml
        nvml.nvmlInit()

    def _why(self, exc) -> str:
        n = self._nvml
        code = getattr(exc, "value", None)
        if code == n.NVML_ERROR_GPU_IS_LOST:
            return "GPU is lost (it fell off the bus); it needs a reset or a reboot"
        if code == n.NVML_ERROR_NO_PERMISSION:
            return "NVML: Insufficient Permissions (run hostd as root)"
        if code == n.NVML_ERROR_NOT_SUPPORTED:
            return "NVML: not supported on this GPU"
        return f"NVML: {exc}"

    def _optional(self, call, *args):
        """A reading some GPUs do not have (not supported, no permission): None then."""
        n = self._nvml
        try:
            return call(*args)
        except n.NVMLError as exc:
            if getattr(exc, "value", None) in (n.NVML_ERROR_NOT_SUPPORTED, n.NVML_ERROR_NO_PERMISSION):
                return None
            raise

    def gpus(self) -> list[dict]:
        n = self._nvml
        out = []
        try:
            count = n.nvmlDeviceGetCount()
        except n.NVMLError as exc:
            raise GpuError(f"cannot count the GPUs: {self._why(exc)}") from None
        for i in range(count):
            try:
                out.append(self._gpu(i))
            except n.NVMLError as exc:
                out.append({"index": i, "uuid": None, "name": "?", "memory_gb": 0.0, "error": self._why(exc),
                            "lost": getattr(exc, "value", None) == n.NVML_ERROR_GPU_IS_LOST})
        return out

    def _gpu(self, i: int) -> dict:
        n = self._nvml
        h = n.nvmlDeviceGetHandleByIndex(i)
        uuid, name = _text(n.nvmlDeviceGetUUID(h)), _text(n.nvmlDeviceGetName(h))
        g = {"index": i, "uuid": uuid, "name": name, "memory_gb": 0.0}
        try:
            mem = n.nvmlDeviceGetMemoryInfo(h)
            util = self._optional(n.nvmlDeviceGetUtilizationRates, h)
            temp = self._optional(n.nvmlDeviceGetTemperature, h, n.NVML_TEMPERATURE_GPU)
            draw = self._optional(n.nvmlDeviceGetPowerUsage, h)
            limit = self._optional(n.nvmlDeviceGetPowerManagementLimit, h)
        except n.NVMLError as exc:
            return {**g, "error": self._why(exc), "lost": getattr(exc, "value", None) == n.NVML_ERROR_GPU_IS_LOST}
        return {**g, "memory_gb": round(mem.total / 2**30, 1), "memory_used_gb": round(mem.used / 2**30, 2),
                "utilization": util.gpu if util is not None else None, "temperature": temp,
                "power_w": draw / 1000 if draw is not None else None,
                "power_limit_w": limit / 1000 if limit is not None else None, "error": None}

    def _handle(self, uuid: str):
        n = self._nvml
        try:
            return n.nvmlDeviceGetHandleByUUID(uuid)
        except n.NVMLError as exc:
            raise GpuError(f"GPU {uuid}: {self._why(exc)}") from None

    def driver(self) -> dict:
        n = self._nvml
        try:
            cuda = n.nvmlSystemGetCudaDriverVersion_v2()
            version = _text(n.nvmlSystemGetDriverVersion())
        except n.NVMLError as exc:
            raise GpuError(f"cannot read the driver version: {self._why(exc)}") from None
        return {"driver_version": version, "cuda_version": float(f"{cuda // 1000}.{cuda % 1000 // 10}")}

    def device_ids(self, uuids: list[str]) -> list[str]:
        return list(uuids)

    def processes(self, uuid: str) -> list[int]:
        n = self._nvml
        h = self._handle(uuid)
        pids = []
        for call in (n.nvmlDeviceGetComputeRunningProcesses, n.nvmlDeviceGetGraphicsRunningProcesses):
            try:
                pids += [p.pid for p in call(h)]
            except n.NVMLError as exc:
                if getattr(exc, "value", None) != n.NVML_ERROR_NOT_SUPPORTED:
                    raise GpuError(f"GPU {uuid}: listing its processes: {self._why(exc)}") from None
        return sorted(set(pids))

    def power_range(self, uuid: str) -> tuple[float, float, float]:
        n = self._nvml
        h = self._handle(uuid)
        try:
            lo, hi = n.nvmlDeviceGetPowerManagementLimitConstraints(h)
            default = n.nvmlDeviceGetPowerManagementDefaultLimit(h)
        except n.NVMLError as exc:
            raise GpuError(f"GPU {uuid}: reading its power limits: {self._why(exc)}") from None
        return lo / 1000, hi / 1000, default / 1000

    def power_limit(self, uuid: str) -> float:
        n = self._nvml
        try:
            return n.nvmlDeviceGetPowerManagementLimit(self._handle(uuid)) / 1000
        except n.NVMLError as exc:
            raise GpuError(f"GPU {uuid}: reading its power limit: {self._why(exc)}") from None

    def set_power_limit(self, uuid: str, watts: float) -> None:
        n = self._nvml
        try:
            n.nvmlDeviceSetPowerManagementLimit(self._handle(uuid), int(round(watts * 1000)))
        except n.NVMLError as exc:
            raise GpuError(f"GPU {uuid}: setting the power limit to {watts:g} W: {self._why(exc)}") from None


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def open_source(fake_spec: str, seed: str, state: Path | None = None):
    """The fake source when fake_gpus is set; NVML otherwise; no GPUs when NVML is missing."""
    if fake_spec:
        return FakeSource(fake_spec, seed, state)
    try:
        return NvmlSource()
    except Exception as exc:  # no driver, no library: a machine without NVIDIA GPUs
        log.warning("NVML unavailable (%s): sharing no GPUs", exc)
        return FakeSource("", seed)
