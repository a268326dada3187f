#!/usr/bin/env python3
"""GPU self-check, run inside a lease's container: does torch see every GPU, and does each one compute?

hostd copies this file into the container at /etc/shellrent/gpu-check.py; a renter (or hostd) runs
`python3 /etc/shellrent/gpu-check.py [--json] [--quick]`. It is standalone on purpose: standard library
and torch only, Python >= 3.9 (Debian bookworm's python3, pytorch images), nothing from the repo.

Per GPU: name, total memory, a tensor copied to the GPU and back (checked equal), and an fp16 and a bf16
matmul (bf16 where the GPU has it natively) timed with CUDA events after a warm-up, reported as TFLOPS,
its result checked finite. A failure on one GPU is that GPU's error; the next GPU is still checked.

Exit status: 0 every GPU passed, 1 some GPU failed (or none was found), 2 torch is not installed,
3 torch sees no CUDA device.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

FULL = {"n": 8192, "seconds": 0.5}  # ~1.1 TFLOP per matmul: a few ms on an H100, ~50 ms on a T4
QUICK = {"n": 2048, "seconds": 0.05}  # tests and slow GPUs
MAX_REPS = 1000  # beyond this, launch overhead rather than the GPU is measured
NO_TORCH = "torch is not installed: pip install torch (or use an image with it)"


def parse_args(argv: list) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Check that torch sees every GPU and that each one computes.")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--quick", action="store_true", help="a smaller matrix (tests, slow GPUs)")
    return p.parse_args(argv)


def report(ok: bool, torch_version, cuda_version, gpus: list, error) -> dict:
    """The JSON object --json prints; also what the table is drawn from."""
    return {"ok": ok, "torch": torch_version, "cuda": cuda_version, "gpus": gpus, "error": error}


def no_cuda_message(torch) -> str:
    """Why torch sees no GPU, with the two facts that usually explain it."""
    built = torch.version.cuda
    build = f"built for CUDA {built}" if built else "a CPU-only build (torch.version.cuda is None)"
    visible = os.environ.get("NVIDIA_VISIBLE_DEVICES")
    devices = (f"NVIDIA_VISIBLE_DEVICES={visible}" if visible is not None
               else "NVIDIA_VISIBLE_DEVICES is not set (was the container started with GPUs?)")
    return f"torch.cuda.is_available() is False: torch {torch.__version__} is {build}; {devices}"


def device_uuid(props):
    """The UUID as NVML writes it ("GPU-...", "MIG-..."), so it matches hostd's inventory; None on old torch."""
    uuid = getattr(props, "uuid", None)
    if uuid is None:
        return None
    text = str(uuid)
    return text if text.startswith(("GPU-", "MIG-")) else "GPU-" + text


def bf16_supported(torch) -> bool:
    """Native bf16 on the current device; newer torch would otherwise count slow emulation as support."""
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # torch < 2.3 has no such argument and never counted emulation
        return bool(torch.cuda.is_bf16_supported())


def check_copy(torch, device: str) -> None:
    """A tensor to the GPU and back must come back unchanged."""
    x = torch.randn(1 << 20)
    back = x.to(device).cpu()
    if not torch.equal(x, back):
        raise RuntimeError("a tensor copied to the GPU and back came back different")


def timed_matmuls(torch, a, b, reps: int):
    """reps matmuls between two recorded CUDA events: (the last result, GPU seconds)."""
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        c = a @ b
    end.record()
    end.synchronize()
    return c, start.elapsed_time(end) / 1000


def matmul_tflops(torch, device: str, dtype, size: dict) -> float:
    """TFLOPS of n x n matmuls in dtype, repeated for about size["seconds"]; the result must be finite."""
    n = size["n"]
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    a @ b  # warm-up: cuBLAS handle, kernel selection
    torch.cuda.synchronize(device)
    _, one = timed_matmuls(torch, a, b, 1)
    reps = max(1, min(MAX_REPS, math.ceil(size["seconds"] / max(one, 1e-9))))
    c, seconds = timed_matmuls(torch, a, b, reps)
    if not bool(torch.isfinite(c).all()):
        raise RuntimeError(f"{n}x{n} {dtype} matmul gave non-finite values")
    return 2 * n ** 3 * reps / seconds / 1e12


def check_gpu(torch, index: int, size: dict) -> dict:
    """Everything about one GPU; an exception becomes its error (ok false) instead of ending the check."""
    gpu = {"index": index, "name": None, "uuid": None, "memory_gb": None, "tflops_fp16": None,
           "tflops_bf16": None, "ok": False, "error": None}
    device = f"cuda:{index}"
    step = "reading its properties"
    try:
        props = torch.cuda.get_device_properties(index)
        gpu.update(name=torch.cuda.get_device_name(index), uuid=device_uuid(props),
                   memory_gb=round(props.total_memory / 2 ** 30, 1))
        with torch.cuda.device(index):
            step = "copying a tensor to it and back"
            check_copy(torch, device)
            step = "fp16 matmul"
            gpu["tflops_fp16"] = round(matmul_tflops(torch, device, torch.float16, size), 1)
            if bf16_supported(torch):
                step = "bf16 matmul"
                gpu["tflops_bf16"] = round(matmul_tflops(torch, device, torch.bfloat16, size), 1)
        gpu["ok"] = True
    except Exception as exc:  # one GPU's fault (CUDA error, out of memory) must not hide the others
        gpu["error"] = f"{step}: {type(exc).__name__}: {exc}"
    finally:
        try:
            torch.cuda.empty_cache()
        except Exception:
            pass  # a broken CUDA context is already reported as this GPU's error
    return gpu


def run(size: dict) -> tuple:
    """(exit status, report) of the whole check."""
    try:
        import torch
    except ImportError:
        return 2, report(False, None, None, [], NO_TORCH)
    version, cuda = torch.__version__, torch.version.cuda
    if not torch.cuda.is_available():
        return 3, report(False, version, cuda, [], no_cuda_message(torch))
    count = torch.cuda.device_count()
    if count == 0:
        return 1, report(False, version, cuda, [], "torch.cuda.device_count() is 0")
    gpus = [check_gpu(torch, i, size) for i in range(count)]
    failed = [g for g in gpus if not g["ok"]]
    error = f"{len(failed)} of {count} GPUs failed" if failed else None
    return (1 if failed else 0), report(not failed, version, cuda, gpus, error)


def number(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def table(rep: dict) -> str:
    """The human form: one line per GPU."""
    lines = [f"torch {rep['torch']}, CUDA {rep['cuda']}"]
    header = ("GPU", "name", "uuid", "memory", "fp16 TFLOPS", "bf16 TFLOPS", "result")
    rows = [header]
    for g in rep["gpus"]:
        memory = "-" if g["memory_gb"] is None else f"{g['memory_gb']:.1f} GB"
        result = "ok" if g["ok"] else f"FAIL: {g['error']}"
        rows.append((str(g["index"]), g["name"] or "?", g["uuid"] or "-", memory, number(g["tflops_fp16"]),
                     number(g["tflops_bf16"]), result))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    for r in rows:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(r, widths)) + "  " + r[-1])
    lines.append("ok: every GPU passed" if rep["ok"] else f"FAILED: {rep['error']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    status, rep = run(QUICK if args.quick else FULL)
    if args.json:
        print(json.dumps(rep))
    if status in (2, 3):  # nothing was checked: the reason goes to stderr in both forms
        print(rep["error"], file=sys.stderr)
    elif not args.json:
        print(table(rep))
    return status


if __name__ == "__main__":
    sys.exit(main())
