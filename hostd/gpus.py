"""GPU sources behind one small interface. The only module that imports pynvml.

NvmlSource reads the real GPUs; FakeSource serves machines without one (development, tests) from the
fake_gpus setting. Nothing else in hostd knows which one it has.
"""
import hashlib
import logging

log = logging.getLogger("shellrent.gpus")


class FakeSource:
    """GPUs from a 'MODEL:GB,MODEL:GB' setting; no devices are handed to containers."""

    kind = "fake"

    def __init__(self, spec: str, seed: str):
        self._gpus = []
        for i, part in enumerate(p.strip() for p in spec.split(",") if p.strip()):
            name, _, mem = part.rpartition(":")
            uuid = "GPU-fake-" + hashlib.sha256(f"{seed}/{i}/{name}".encode()).hexdigest()[:24]
            self._gpus.append({"index": i, "uuid": uuid, "name": name, "memory_gb": float(mem)})

    def gpus(self) -> list[dict]:
        return list(self._gpus)

    def driver(self) -> dict:
        return {"driver_version": "fake", "cuda_version": 0.0}

    def device_ids(self, uuids: list[str]) -> list[str]:
        return []


class NvmlSource:
    """The machine's NVIDIA GPUs through NVML."""

    kind = "nvml"

    def __init__(self):
        import pynvml
        self._nvml = pynvml
        pynvml.nvmlInit()

    def gpus(self) -> list[dict]:
        n = self._nvml
        out = []
        for i in range(n.nvmlDeviceGetCount()):
            h = n.nvmlDeviceGetHandleByIndex(i)
            name = n.nvmlDeviceGetName(h)
            out.append({"index": i, "uuid": _text(n.nvmlDeviceGetUUID(h)), "name": _text(name),
                        "memory_gb": round(n.nvmlDeviceGetMemoryInfo(h).total / 2**30, 1)})
        return out

    def driver(self) -> dict:
        n = self._nvml
        cuda = n.nvmlSystemGetCudaDriverVersion_v2()
        return {"driver_version": _text(n.nvmlSystemGetDriverVersion()),
                "cuda_version": float(f"{cuda // 1000}.{cuda % 1000 // 10}")}

    def device_ids(self, uuids: list[str]) -> list[str]:
        return list(uuids)


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def open_source(fake_spec: str, seed: str):
    """The fake source when fake_gpus is set; NVML otherwise; no GPUs when NVML is missing."""
    if fake_spec:
        return FakeSource(fake_spec, seed)
    try:
        return NvmlSource()
    except Exception as exc:  # no driver, no library: a machine without NVIDIA GPUs
        log.warning("NVML unavailable (%s): sharing no GPUs", exc)
        return FakeSource("", seed)
