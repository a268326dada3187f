"""A stand-in for the pynvml module (nvidia-ml-py), for machines without an NVIDIA GPU.

It keeps the real module's constants and error classes (NVMLError and its per-code subclasses) and
replaces only the calls into the driver with readings recorded from real cards:

- RTX 4090: an RTX 4090 Founders Edition on driver 535.104.05 as `nvidia-smi -q` shows it (24564 MiB;
  power limit 450 W, min 150 W, max 600 W, which is NVIDIA's board power for the card).
- A100: an A100-SXM4-80GB as `nvidia-smi -q` shows it in NVIDIA/nvidia-docker issue #1648 (81920 MiB;
  power limit 400 W, min 100 W, max 400 W, 37 C idle).

A test makes faults with fail(index, call, code): the next and later calls raise that NVML error.
"""
import types

import pynvml as real

MiB = 2**20

CARDS = {
    "RTX 4090": {"name": "NVIDIA GeForce RTX 4090", "memory": 24564 * MiB, "used": 1582 * MiB, "util": 21,
                 "temp": 50, "draw": 12_000, "limit": 450_000, "min": 150_000, "max": 600_000,
                 "default": 450_000},
    "A100": {"name": "NVIDIA A100-SXM4-80GB", "memory": 81920 * MiB, "used": 4 * MiB, "util": 0,
             "temp": 37, "draw": 61_000, "limit": 400_000, "min": 100_000, "max": 400_000, "default": 400_000},
}
DRIVER = "535.104.05"
CUDA = 12020  # what nvmlSystemGetCudaDriverVersion_v2 returns for CUDA 12.2


class _Proc:
    def __init__(self, pid: int, used: int):
        self.pid = pid
        self.usedGpuMemory = used


def make(*cards: str, driver: str = DRIVER, cuda: int = CUDA):
    """A module-like object serving the named cards (keys of CARDS), in order, as GPUs 0, 1, ..."""
    gpus = [dict(CARDS[c], uuid=f"GPU-{0x5a7a6b90 + i:08x}-4a1b-9c2d-77e1-{sum(map(ord, c)):012x}")
            for i, c in enumerate(cards)]
    faults: dict[tuple, int] = {}
    procs: dict[int, list] = {}
    m = types.SimpleNamespace(**{k: getattr(real, k) for k in dir(real) if k.startswith("NVML_")})
    m.NVMLError = real.NVMLError
    m.set_calls = []
    m.initialised = False

    def check(index, call):
        code = faults.get((index, call)) or faults.get((index, "*"))
        if code is not None:
            raise real.NVMLError(code)

    def handle(i):
        if not 0 <= i < len(gpus):
            raise real.NVMLError(real.NVML_ERROR_INVALID_ARGUMENT)
        check(i, "handle")
        return i

    def by_uuid(uuid):
        for i, g in enumerate(gpus):
            if g["uuid"] == (uuid.decode() if isinstance(uuid, bytes) else uuid):
                return handle(i)
        raise real.NVMLError(real.NVML_ERROR_NOT_FOUND)

    def reading(call, key):
        def get(h, *args):
            check(h, call)
            return gpus[h][key]
        return get

    def init():
        if (None, "init") in faults:
            raise real.NVMLError(faults[(None, "init")])
        m.initialised = True

    def memory(h):
        check(h, "memory")
        g = gpus[h]
        return types.SimpleNamespace(total=g["memory"], used=g["used"], free=g["memory"] - g["used"])

    def utilization(h):
        check(h, "utilization")
        return types.SimpleNamespace(gpu=gpus[h]["util"], memory=3)

    def constraints(h):
        check(h, "power_limit")
        return [gpus[h]["min"], gpus[h]["max"]]

    def set_limit(h, mw):
        check(h, "set_power")
        if not gpus[h]["min"] <= mw <= gpus[h]["max"]:
            raise real.NVMLError(real.NVML_ERROR_INVALID_ARGUMENT)
        gpus[h]["limit"] = mw
        m.set_calls.append((h, mw))

    def processes(call):
        def get(h):
            check(h, call)
            return [_Proc(p, 300 * MiB) for p in procs.get(h, ())] if call == "compute" else []
        return get

    m.nvmlInit = init
    m.nvmlShutdown = lambda: None
    m.nvmlDeviceGetCount = lambda: len(gpus)
    m.nvmlDeviceGetHandleByIndex = handle
    m.nvmlDeviceGetHandleByUUID = by_uuid
    m.nvmlDeviceGetName = reading("name", "name")
    m.nvmlDeviceGetUUID = reading("uuid", "uuid")
    m.nvmlDeviceGetMemoryInfo = memory
    m.nvmlDeviceGetUtilizationRates = utilization
    m.nvmlDeviceGetTemperature = reading("temperature", "temp")
    m.nvmlDeviceGetPowerUsage = reading("power", "draw")
    m.nvmlDeviceGetPowerManagementLimit = reading("power_limit", "limit")
    m.nvmlDeviceGetPowerManagementDefaultLimit = reading("power_limit", "default")
    m.nvmlDeviceGetPowerManagementLimitConstraints = constraints
    m.nvmlDeviceSetPowerManagementLimit = set_limit
    m.nvmlDeviceGetComputeRunningProcesses = processes("compute")
    m.nvmlDeviceGetGraphicsRunningProcesses = processes("graphics")
    m.nvmlSystemGetDriverVersion = lambda: driver
    m.nvmlSystemGetCudaDriverVersion_v2 = lambda: cuda
    m.fail = lambda index, call, code: faults.__setitem__((index, call), code)
    m.run = lambda index, *pids: procs.__setitem__(index, list(pids))
    m.gpus = gpus
    return m
