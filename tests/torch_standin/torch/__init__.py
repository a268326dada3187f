"""A stand-in for torch's GPU edge (torch.cuda) only, so hostd/gpu_check.py can be tested without a GPU.

It implements just what gpu_check.py uses, and no arithmetic: a tensor is a shape, a dtype, a device and
an identity for its contents (a copy keeps it, a new result gets a new one). The GPUs come from env vars:

    TORCH_STANDIN_GPUS  "NAME|UUID|GB|TFLOPS,..." (empty or unset: torch.cuda.is_available() is False)
    TORCH_STANDIN_FAIL  index of a GPU whose matmul raises "CUDA error: an illegal memory access ..."
    TORCH_STANDIN_NAN   index of a GPU whose matmul results are not finite

Like a real GPU, work is asynchronous: a matmul queues 2*n^3/(TFLOPS*1e12) seconds on its device and
returns; events are stamped when the queue reaches them; synchronize (and .cpu(), bool(), torch.equal)
sleeps until the queue drains. So the TFLOPS gpu_check.py measures come out near the stated ones, and
reading an event before its work finished fails as it would on a GPU.
"""
import contextlib
import itertools
import os
import time

__version__ = "2.4.0+standin"


class version:
    cuda = "12.4"


class dtype:
    """A torch dtype: only its name matters here."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return "torch." + self.name


float32 = dtype("float32")
float16 = dtype("float16")
bfloat16 = dtype("bfloat16")
bool_ = dtype("bool")
_contents = itertools.count(1)


def _spec() -> list:
    """The stated GPUs: [{name, uuid, gb, tflops}]."""
    gpus = []
    for part in (p.strip() for p in os.environ.get("TORCH_STANDIN_GPUS", "").split(",")):
        if part:
            name, uuid, gb, tflops = part.split("|")
            gpus.append({"name": name, "uuid": uuid, "gb": float(gb), "tflops": float(tflops)})
    return gpus


def _index(env: str):
    value = os.environ.get(env, "")
    return int(value) if value.strip() else None


class _Queue:
    """One device's stream: the wall-clock time its queued work finishes."""

    def __init__(self):
        self.busy_until = 0.0

    def now(self) -> float:
        """When work queued now would start: after everything already queued."""
        return max(time.perf_counter(), self.busy_until)

    def add(self, seconds: float) -> None:
        self.busy_until = self.now() + seconds

    def drain(self) -> None:
        wait = self.busy_until - time.perf_counter()
        if wait > 0:
            time.sleep(wait)


_queues = {}
_current = [0]


def _queue(device: str) -> _Queue:
    return _queues.setdefault(device, _Queue())


def _device(value) -> str:
    """'cpu' or 'cuda:N' from what torch accepts: None, 'cpu', 'cuda', 'cuda:N', N."""
    if value is None or value == "cpu":
        return "cpu"
    if isinstance(value, int):
        index = value
    elif value == "cuda":
        index = _current[0]
    elif isinstance(value, str) and value.startswith("cuda:"):
        index = int(value[5:])
    else:
        raise RuntimeError(f"Invalid device string: '{value}'")
    if not 0 <= index < len(_spec()):
        raise RuntimeError("CUDA error: invalid device ordinal")
    return f"cuda:{index}"


class Tensor:
    def __init__(self, shape: tuple, dtype_: dtype, device: str, contents=None, finite: bool = True):
        self.shape = tuple(shape)
        self.dtype = dtype_
        self.device = device
        self.contents = next(_contents) if contents is None else contents
        self.finite = finite

    def to(self, *args, **kwargs) -> "Tensor":
        device, dtype_ = kwargs.get("device", self.device), kwargs.get("dtype", self.dtype)
        for a in args:
            if isinstance(a, dtype):
                dtype_ = a
            else:
                device = a
        device = _device(device)
        for d in (self.device, device):
            if d != "cpu":
                _queue(d).drain()  # a copy to or from the host waits for the GPU
        contents = self.contents if dtype_ is self.dtype else None
        return Tensor(self.shape, dtype_, device, contents, self.finite)

    def cpu(self) -> "Tensor":
        return self.to("cpu")

    def __matmul__(self, other: "Tensor") -> "Tensor":
        return matmul(self, other)

    def all(self) -> "Tensor":
        return Tensor((), bool_, self.device, contents=self.finite)

    def item(self):
        if self.device != "cpu":
            _queue(self.device).drain()
        return self.contents

    def __bool__(self) -> bool:
        if self.shape != ():
            raise RuntimeError("Boolean value of Tensor with more than one value is ambiguous")
        return bool(self.item())


def _new(size: tuple, dtype_, device) -> Tensor:
    if len(size) == 1 and isinstance(size[0], (tuple, list)):
        size = tuple(size[0])
    return Tensor(size, dtype_ or float32, _device(device))


def randn(*size, dtype=None, device=None) -> Tensor:
    return _new(size, dtype, device)


def ones(*size, dtype=None, device=None) -> Tensor:
    return _new(size, dtype, device)


def tensor(data, dtype=None, device=None) -> Tensor:
    return Tensor((len(data),), dtype or float32, _device(device), contents=("data", repr(list(data))))


def matmul(a: Tensor, b: Tensor) -> Tensor:
    """Queues 2*n*k*m / (TFLOPS*1e12) seconds on the GPU; raises on the TORCH_STANDIN_FAIL GPU."""
    if a.device != b.device:
        raise RuntimeError(f"Expected all tensors to be on the same device, but found {a.device} and {b.device}")
    if a.dtype is not b.dtype:
        raise RuntimeError(f"expected both operands to have the same dtype, got {a.dtype} and {b.dtype}")
    if len(a.shape) != 2 or len(b.shape) != 2 or a.shape[1] != b.shape[0]:
        raise RuntimeError(f"mat1 and mat2 shapes cannot be multiplied ({a.shape} and {b.shape})")
    if a.device == "cpu":
        return Tensor((a.shape[0], b.shape[1]), a.dtype, "cpu")
    index = int(a.device[5:])
    if index == _index("TORCH_STANDIN_FAIL"):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")
    flops = 2 * a.shape[0] * a.shape[1] * b.shape[1]
    _queue(a.device).add(flops / (_spec()[index]["tflops"] * 1e12))
    return Tensor((a.shape[0], b.shape[1]), a.dtype, a.device, finite=index != _index("TORCH_STANDIN_NAN"))


def isfinite(t: Tensor) -> Tensor:
    return Tensor(t.shape, bool_, t.device, contents=t.finite, finite=t.finite)


def equal(a: Tensor, b: Tensor) -> bool:
    if a.device != b.device:
        raise RuntimeError(f"Expected all tensors to be on the same device, but found {a.device} and {b.device}")
    if a.device != "cpu":
        _queue(a.device).drain()
    return a.shape == b.shape and a.dtype is b.dtype and a.contents == b.contents


class _Uuid:
    """torch's _CUuuid: str() is the UUID without NVML's "GPU-" prefix."""

    def __init__(self, text: str):
        self.text = text[4:] if text.startswith("GPU-") else text

    def __str__(self) -> str:
        return self.text


class _Properties:
    def __init__(self, gpu: dict):
        self.name = gpu["name"]
        self.total_memory = int(gpu["gb"] * 2 ** 30)
        self.uuid = _Uuid(gpu["uuid"])
        self.major, self.minor = 8, 0


class _Event:
    """A CUDA event: stamped when its device's queue reaches it."""

    def __init__(self, enable_timing: bool = False):
        self.enable_timing = enable_timing
        self.device = None
        self.at = None

    def record(self, stream=None) -> None:
        self.device = f"cuda:{_current[0]}"
        self.at = _queue(self.device).now()

    def synchronize(self) -> None:
        wait = self.at - time.perf_counter()
        if wait > 0:
            time.sleep(wait)

    def elapsed_time(self, end: "_Event") -> float:
        """Milliseconds between the two events; both must have happened, as on a GPU."""
        if not (self.enable_timing and end.enable_timing):
            raise RuntimeError("Both events must be created with argument 'enable_timing=True'.")
        if self.at is None or end.at is None or end.at > time.perf_counter():
            raise RuntimeError("CUDA error: device not ready")
        return (end.at - self.at) * 1000


class cuda:
    """torch.cuda: the part gpu_check.py uses."""

    Event = _Event

    @staticmethod
    def is_available() -> bool:
        return bool(_spec())

    @staticmethod
    def device_count() -> int:
        return len(_spec())

    @staticmethod
    def _gpu(index) -> dict:
        return _spec()[int(_device(index)[5:])]

    @staticmethod
    def get_device_name(index=None) -> str:
        return cuda._gpu(_current[0] if index is None else index)["name"]

    @staticmethod
    def get_device_properties(index) -> _Properties:
        return _Properties(cuda._gpu(index))

    @staticmethod
    def is_bf16_supported(including_emulation: bool = True) -> bool:
        return True

    @staticmethod
    def synchronize(device=None) -> None:
        _queue(_device(_current[0] if device is None else device)).drain()

    @staticmethod
    def current_device() -> int:
        return _current[0]

    @staticmethod
    @contextlib.contextmanager
    def device(index):
        previous, _current[0] = _current[0], int(_device(index)[5:])
        try:
            yield
        finally:
            _current[0] = previous

    @staticmethod
    def empty_cache() -> None:
        pass
