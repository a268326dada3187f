"""hostd/gpu_check.py, the self-check run inside a lease's container, against a torch stand-in.

The stand-in (tests/torch_standin) replaces torch's GPU edge only: its GPUs come from env vars and its
matmuls take the time their stated TFLOPS imply, so what the script measures can be checked. The script
runs as a subprocess, as it does in a container. The docker test runs it in the real lease image."""
import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .cluster import IMAGE

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "hostd" / "gpu_check.py"
STANDIN = ROOT / "tests" / "torch_standin"
A100 = ("NVIDIA A100-SXM4-80GB", "GPU-4c2a8f3e-1d6b-4e0a-9b7f-2a5c8e1d3f60", 80, 250)
RTX = ("NVIDIA GeForce RTX 4090", "GPU-9e1b7d2c-5a3f-4c8e-b6d0-7f2e4a9c1b85", 24, 150)
NO_TORCH = "torch is not installed: pip install torch (or use an image with it)"


def gpu_check(*args, gpus=(A100, RTX), fail=None, nan=None, torch=True) -> subprocess.CompletedProcess:
    """Run the script with the stand-in serving `gpus` (NAME, UUID, GB, TFLOPS); torch=False: no torch at all."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TORCH_STANDIN_", "NVIDIA_", "PYTHON"))}
    env["TORCH_STANDIN_GPUS"] = ",".join("|".join(str(f) for f in g) for g in gpus)
    if fail is not None:
        env["TORCH_STANDIN_FAIL"] = str(fail)
    if nan is not None:
        env["TORCH_STANDIN_NAN"] = str(nan)
    python = [sys.executable]
    if torch:
        env["PYTHONPATH"] = str(STANDIN)
    else:
        python.append("-S")  # no site-packages: no torch even where a real one is installed
    return subprocess.run([*python, str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=30)


def test_two_gpus_pass_with_their_names_uuids_and_tflops():
    out = gpu_check("--json", "--quick")
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    assert rep["ok"] is True and rep["error"] is None
    assert rep["torch"] == "2.4.0+standin" and rep["cuda"] == "12.4"
    assert [(g["index"], g["name"], g["uuid"], g["memory_gb"], g["ok"], g["error"]) for g in rep["gpus"]] == [
        (0, A100[0], A100[1], 80.0, True, None), (1, RTX[0], RTX[1], 24.0, True, None)]
    for g, stated in zip(rep["gpus"], (A100[3], RTX[3])):
        for key in ("tflops_fp16", "tflops_bf16"):
            assert stated * 0.7 <= g[key] <= stated * 1.3, (g["name"], key, g[key], stated)


def test_table_is_the_default_output():
    out = gpu_check("--quick")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "fp16 TFLOPS" in lines[1] and "bf16 TFLOPS" in lines[1]
    assert A100[0] in lines[2] and A100[1] in lines[2] and lines[2].endswith("ok")
    assert RTX[0] in lines[3] and lines[3].endswith("ok")
    assert lines[-1] == "ok: every GPU passed"


def test_a_failing_gpu_is_reported_and_the_other_still_checked():
    out = gpu_check("--json", "--quick", fail=0)
    assert out.returncode == 1
    rep = json.loads(out.stdout)
    bad, good = rep["gpus"]
    assert rep["ok"] is False and rep["error"] == "1 of 2 GPUs failed"
    assert bad["ok"] is False and bad["tflops_fp16"] is None and bad["name"] == A100[0]
    assert bad["error"] == "fp16 matmul: RuntimeError: CUDA error: an illegal memory access was encountered"
    assert good["ok"] is True and good["error"] is None and good["tflops_fp16"] > 0


def test_a_gpu_computing_non_finite_values_fails():
    out = gpu_check("--json", "--quick", gpus=(RTX,), nan=0)
    assert out.returncode == 1
    (gpu,) = json.loads(out.stdout)["gpus"]
    assert gpu["ok"] is False and "non-finite" in gpu["error"]


def test_no_cuda_exits_3_and_says_why():
    out = gpu_check("--json", "--quick", gpus=())
    assert out.returncode == 3
    rep = json.loads(out.stdout)
    assert rep["ok"] is False and rep["gpus"] == []
    assert rep["error"].startswith("torch.cuda.is_available() is False: torch 2.4.0+standin is built for CUDA 12.4")
    assert "NVIDIA_VISIBLE_DEVICES is not set" in rep["error"]
    assert rep["error"] in out.stderr
    assert gpu_check("--quick", gpus=()).returncode == 3


def test_no_torch_exits_2_with_the_install_hint():
    out = gpu_check("--json", torch=False)
    assert out.returncode == 2
    assert out.stderr.strip() == NO_TORCH
    assert json.loads(out.stdout) == {"ok": False, "torch": None, "cuda": None, "gpus": [], "error": NO_TORCH}
    plain = gpu_check(torch=False)
    assert (plain.returncode, plain.stdout, plain.stderr.strip()) == (2, "", NO_TORCH)


def test_script_is_standalone_python_3_9():
    """It runs in any container's python3: 3.9 syntax, and imports nothing but the standard library and torch."""
    tree = ast.parse(SCRIPT.read_text(), feature_version=(3, 9))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert imported - {"torch"} <= set(sys.stdlib_module_names), imported


@pytest.mark.docker
def test_in_the_lease_image_without_torch_exits_2():
    out = subprocess.run(["docker", "run", "--rm", "-v", f"{SCRIPT}:/x.py:ro", IMAGE, "python3", "/x.py", "--json"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip() == NO_TORCH
    assert json.loads(out.stdout)["error"] == NO_TORCH
