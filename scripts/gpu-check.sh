#!/usr/bin/env bash
# Check hostd's GPU edge on a machine with real NVIDIA GPUs, and print one table (check | result | detail):
#   NVML inventory and driver        hostd.gpus.NvmlSource().gpus() / .driver()
#   the watchdog's process listing   a small CUDA process is started (when torch is importable); NVML must
#                                    list its pid, and /proc/PID/cgroup is shown (how the watchdog maps it)
#   the power limit                  lowered by 50 W (not below the minimum), read back, restored, read back;
#                                    a refusal (not root) is the result, not a crash
#   the self-check                   hostd/gpu_check.py --json (what leases run), TFLOPS per GPU
# Results: ok, FAIL, SKIP (nothing to check it with), refused. Exit 1 when any row is FAIL, so a machine
# without GPUs prints FAIL rows and exits 1.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
    bash scripts/setup.sh || echo "gpu-check: scripts/setup.sh failed; trying the system python3" >&2
fi
python=.venv/bin/python
[ -x "$python" ] || python=python3
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # hostd, also for a python3 without the venv

exec "$python" - <<'PY'
"""The checks; each appends rows, and an unexpected exception in one becomes a FAIL row of its own."""
import json
import os
import shutil
import subprocess
import sys
import time

ROWS = []
HOLD = ("import sys, time, torch; x = torch.ones(1 << 20, device='cuda:0'); torch.cuda.synchronize(); "
        "print('ready', flush=True); time.sleep(20)")


def row(check, result, detail=""):
    ROWS.append((check, result, " ".join(str(detail).split())))


def torch_python():
    """The first of this python and the system python3 that can import torch; None when neither can."""
    for py in (sys.executable, shutil.which("python3")):
        if py and subprocess.run([py, "-c", "import torch"], capture_output=True).returncode == 0:
            return py
    return None


def inventory():
    """(source, the GPUs that read fine); the source is None when NVML cannot be opened."""
    try:
        from hostd.gpus import NvmlSource
        s = NvmlSource()
    except Exception as exc:  # no driver, no libnvidia-ml, no pynvml: a machine without NVIDIA GPUs
        row("NVML", "FAIL", f"{type(exc).__name__}: {exc}")
        return None, []
    d = s.driver()
    row("NVML driver", "ok", f"driver {d['driver_version']}, CUDA {d['cuda_version']}")
    gpus = s.gpus()
    if not gpus:
        row("NVML GPUs", "FAIL", "NVML lists no GPU")
    for g in gpus:
        if g.get("error"):
            row(f"GPU {g['index']}", "FAIL", f"{g['name']} {g['uuid']}: {g['error']}")
            continue
        row(f"GPU {g['index']}", "ok",
            f"{g['name']} {g['uuid']} {g['memory_gb']} GB ({g.get('memory_used_gb')} GB used), "
            f"util {g.get('utilization')}%, {g.get('temperature')} C, "
            f"{g.get('power_w')} W of {g.get('power_limit_w')} W")
    return s, [g for g in gpus if not g.get("error")]


def wait_listed(s, uuid, child, timeout=60.0):
    """NVML's pids on the GPU once the child's is among them; the last listing when it never shows."""
    deadline = time.monotonic() + timeout
    while True:
        pids = s.processes(uuid)
        if child.pid in pids or child.poll() is not None or time.monotonic() > deadline:
            return pids
        time.sleep(0.5)


def processes(s, gpu, py):
    """The watchdog's view: a CUDA process we start must be listed on its GPU, and its cgroup readable."""
    uuid = gpu["uuid"]
    if py is None:
        row("processes", "SKIP", f"torch not installed, no CUDA process started; NVML lists {s.processes(uuid)}")
        return
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": uuid}  # cuda:0 in the child is this GPU
    child = subprocess.Popen([py, "-c", HOLD], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        pids = wait_listed(s, uuid, child)
        if child.pid not in pids and child.poll():
            row("processes", "FAIL", f"the CUDA process exited {child.returncode}: {child.stderr.read()[-300:]}")
            return
        listed = child.pid in pids
        row("processes", "ok" if listed else "FAIL",
            f"CUDA process {child.pid} {'is' if listed else 'is NOT'} listed on GPU {gpu['index']}: {pids}")
        if child.poll() is not None:
            return  # it ran its 20 s out unlisted: no cgroup to read
        with open(f"/proc/{child.pid}/cgroup") as f:
            row("cgroup", "ok", f"/proc/{child.pid}/cgroup: " + "; ".join(f.read().split()))
    finally:
        child.kill()
        child.wait()


def power(s, gpu):
    """Lower the limit by 50 W (not below the minimum), read back, and always put the original back."""
    from hostd.gpus import GpuError
    uuid = gpu["uuid"]
    lo, hi, default = s.power_range(uuid)
    original = s.power_limit(uuid)
    row("power range", "ok", f"GPU {gpu['index']}: min {lo:g} W, max {hi:g} W, default {default:g} W, "
        f"in force {original:g} W")
    target = max(lo, original - 50)
    changed = False
    try:
        try:
            s.set_power_limit(uuid, target)
        except GpuError as exc:
            row("set power limit", "refused", exc)
            return
        changed = True
        now = s.power_limit(uuid)
        row("set power limit", "ok" if abs(now - target) < 1 else "FAIL", f"asked {target:g} W, reads {now:g} W")
    finally:
        if changed:
            restore(s, uuid, original)


def restore(s, uuid, original):
    from hostd.gpus import GpuError
    try:
        s.set_power_limit(uuid, original)
        back = s.power_limit(uuid)
    except GpuError as exc:
        row("restore power limit", "FAIL", exc)
        return
    row("restore power limit", "ok" if abs(back - original) < 1 else "FAIL",
        f"asked {original:g} W, reads {back:g} W")


def self_check(py, gpus):
    """hostd/gpu_check.py --json, as a lease runs it; its UUIDs must be NVML's (hostd maps one to the other)."""
    if py is None:
        row("self-check", "SKIP", "torch not installed (neither this python nor python3 imports torch)")
        return
    out = subprocess.run([py, "hostd/gpu_check.py", "--json"], capture_output=True, text=True, timeout=600)
    try:
        rep = json.loads(out.stdout)
    except ValueError:
        row("self-check", "FAIL", f"exit {out.returncode}, no JSON: {(out.stderr or out.stdout)[-300:]}")
        return
    row("self-check", "ok" if rep["ok"] and out.returncode == 0 else "FAIL",
        f"{py}: torch {rep['torch']}, CUDA {rep['cuda']}, exit {out.returncode}"
        + (f": {rep['error']}" if rep["error"] else ""))
    known = {g["uuid"] for g in gpus}
    for g in rep["gpus"]:
        match = g["uuid"] in known
        result = "ok" if g["ok"] and (match or not known) else "FAIL"
        detail = (f"fp16 {g['tflops_fp16']} TFLOPS, bf16 {g['tflops_bf16']} TFLOPS" if g["ok"] else g["error"])
        where = "" if match or not known else " (not an NVML UUID)"
        row(f"self-check GPU {g['index']}", result, f"{g['name']} {g['uuid']}{where}: {detail}")


def section(name, fn, *args):
    try:
        fn(*args)
    except Exception as exc:
        row(name, "FAIL", f"{type(exc).__name__}: {exc}")


def table():
    head = ("check", "result", "detail")
    widths = [max(len(r[i]) for r in [head, *ROWS]) for i in range(2)]
    lines = ["| " + " | ".join((head[0].ljust(widths[0]), head[1].ljust(widths[1]), head[2])) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|--------|"]
    for check, result, detail in ROWS:
        lines.append(f"| {check.ljust(widths[0])} | {result.ljust(widths[1])} | {detail} |")
    return "\n".join(lines)


def main():
    s, gpus = inventory()
    py = torch_python()
    if s is None or not gpus:
        row("processes", "SKIP", "no GPU to check")
        row("power limit", "SKIP", "no GPU to check")
    else:
        section("processes", processes, s, gpus[0], py)
        section("power limit", power, s, gpus[0])
    section("self-check", self_check, py, gpus)
    print(table())
    return 1 if any(r[1] == "FAIL" for r in ROWS) else 0


sys.exit(main())
PY
