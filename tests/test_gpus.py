"""The GPU sources: NVML read through a stand-in built from two real cards' readings, and the fake."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from shellrent.hostd.gpus import FakeSource, GpuError, NvmlSource
from tests import nvml_standin


def test_nvml_reads_an_rtx_4090_and_an_a100_as_nvidia_smi_shows_them():
    nvml = nvml_standin.make("RTX 4090", "A100")
    src = NvmlSource(nvml)
    assert nvml.initialised
    g0, g1 = src.gpus()
    assert (g0["index"], g0["name"], g0["memory_gb"]) == (0, "NVIDIA GeForce RTX 4090", 24.0)
    assert (g0["utilization"], g0["temperature"], g0["power_w"], g0["power_limit_w"]) == (21, 50, 12.0, 450.0)
    assert g0["memory_used_gb"] == 1.54 and g0["error"] is None
    assert (g1["name"], g1["memory_gb"], g1["power_limit_w"], g1["temperature"]) == \
        ("NVIDIA A100-SXM4-80GB", 80.0, 400.0, 37)
    assert g0["uuid"].startswith("GPU-") and g0["uuid"] != g1["uuid"]
    assert src.driver() == {"driver_version": "535.104.05", "cuda_version": 12.2}
    assert src.power_range(g0["uuid"]) == (150.0, 600.0, 450.0)
    assert src.power_range(g1["uuid"]) == (100.0, 400.0, 400.0)
    assert src.device_ids([g1["uuid"]]) == [g1["uuid"]]


def test_nvml_lists_processes_and_sets_power_limits_in_milliwatts():
    nvml = nvml_standin.make("RTX 4090", "A100")
    src = NvmlSource(nvml)
    u0, u1 = (g["uuid"] for g in src.gpus())
    nvml.run(1, 4242, 17)
    assert src.processes(u1) == [17, 4242] and src.processes(u0) == []
    src.set_power_limit(u1, 250)
    assert nvml.set_calls == [(1, 250_000)] and src.power_limit(u1) == 250.0
    with pytest.raises(GpuError, match="setting the power limit to 900 W: NVML: Invalid Argument"):
        src.set_power_limit(u0, 900)


@pytest.mark.parametrize("code,said", [
    ("NVML_ERROR_GPU_IS_LOST", "GPU is lost"), ("NVML_ERROR_NO_PERMISSION", "Insufficient Permissions"),
    ("NVML_ERROR_UNKNOWN", "NVML: Unknown Error")])
def test_a_gpu_that_cannot_be_read_is_listed_with_its_error_and_the_others_still_read(code, said):
    nvml = nvml_standin.make("RTX 4090", "A100")
    nvml.fail(0, "memory", getattr(nvml, code))
    g0, g1 = NvmlSource(nvml).gpus()
    assert said in g0["error"] and g0["uuid"].startswith("GPU-")
    assert g1["error"] is None and g1["memory_gb"] == 80.0


def test_a_lost_gpu_without_even_a_handle_is_still_listed_by_index():
    nvml = nvml_standin.make("RTX 4090", "A100")
    nvml.fail(1, "handle", nvml.NVML_ERROR_GPU_IS_LOST)
    g0, g1 = NvmlSource(nvml).gpus()
    assert g0["error"] is None
    assert (g1["index"], g1["uuid"]) == (1, None) and "GPU is lost" in g1["error"]


def test_readings_a_gpu_does_not_support_are_none_not_errors():
    nvml = nvml_standin.make("A100")
    nvml.fail(0, "temperature", nvml.NVML_ERROR_NOT_SUPPORTED)
    nvml.fail(0, "power", nvml.NVML_ERROR_NOT_SUPPORTED)
    (g,) = NvmlSource(nvml).gpus()
    assert g["error"] is None and g["temperature"] is None and g["power_w"] is None
    assert g["power_limit_w"] == 400.0


def test_refusals_become_clear_gpu_errors():
    nvml = nvml_standin.make("RTX 4090")
    src = NvmlSource(nvml)
    (uuid,) = (g["uuid"] for g in src.gpus())
    nvml.fail(0, "set_power", nvml.NVML_ERROR_NO_PERMISSION)
    with pytest.raises(GpuError, match="Insufficient Permissions .run hostd as root."):
        src.set_power_limit(uuid, 300)
    nvml.fail(0, "compute", nvml.NVML_ERROR_GPU_IS_LOST)
    with pytest.raises(GpuError, match="listing its processes: GPU is lost"):
        src.processes(uuid)
    with pytest.raises(GpuError, match="Not Found"):
        src.power_limit("GPU-00000000-0000-0000-0000-000000000000")


def test_nvml_that_cannot_start_raises_so_hostd_shares_no_gpus():
    nvml = nvml_standin.make("RTX 4090")
    nvml.fail(None, "init", nvml.NVML_ERROR_DRIVER_NOT_LOADED)
    with pytest.raises(nvml.NVMLError):
        NvmlSource(nvml)


def test_the_fake_source_serves_its_models_and_what_its_state_file_says(tmp_path):
    state = tmp_path / "fake-gpus.json"
    src = FakeSource("RTX 4090:24, A100:80", "seed", state)
    a, b = src.gpus()
    assert (a["name"], a["memory_gb"], b["name"], b["memory_gb"]) == ("RTX 4090", 24.0, "A100", 80.0)
    assert FakeSource("RTX 4090:24, A100:80", "seed").gpus()[0]["uuid"] == a["uuid"]  # stable per seed
    assert FakeSource("RTX 4090:24", "other").gpus()[0]["uuid"] != a["uuid"]
    assert src.device_ids([a["uuid"]]) == [] and src.processes(a["uuid"]) == []
    src.set_power_limit(a["uuid"], 250)
    assert src.power_limit(a["uuid"]) == 250.0 and src.power_limit(b["uuid"]) == 300.0
    with pytest.raises(GpuError, match="outside 100-450 W"):
        src.set_power_limit(a["uuid"], 500)
    state.write_text(json.dumps({"processes": {a["uuid"]: [7]},
                                 "lost": [b["uuid"]], "refuse_power": True}))
    assert src.processes(a["uuid"]) == [7]
    assert "GPU is lost" in src.gpus()[1]["error"]
    with pytest.raises(GpuError, match="is lost"):
        src.processes(b["uuid"])
    with pytest.raises(GpuError, match="Insufficient Permissions"):
        src.set_power_limit(a["uuid"], 200)


def test_a_driver_that_goes_away_is_a_gpu_error_not_a_crash():
    nvml = nvml_standin.make("RTX 4090")
    src = NvmlSource(nvml)

    def gone():
        raise nvml.NVMLError(nvml.NVML_ERROR_DRIVER_NOT_LOADED)
    nvml.nvmlDeviceGetCount = nvml.nvmlSystemGetDriverVersion = gone
    with pytest.raises(GpuError, match="cannot count the GPUs: NVML: Driver Not Loaded"):
        src.gpus()
    with pytest.raises(GpuError, match="driver version"):
        src.driver()


def _hostd(home, *args):
    return subprocess.run([str(Path(sys.executable).parent / "hostd"), "--home", str(home), *args],
                          capture_output=True, text=True, timeout=60)


def test_hostd_gpus_and_a_power_limit_outside_a_gpus_range(tmp_path):
    assert _hostd(tmp_path, "config", "set", "fake_gpus", "RTX 4090:24,A100:80").returncode == 0
    table = _hostd(tmp_path, "gpus").stdout.splitlines()
    assert table[0].split() == ["#", "NAME", "UUID", "MEMORY", "UTIL", "TEMP", "POWER", "LEASE"]
    assert table[1].split()[:3] == ["0", "RTX", "4090"] and "20/300 W" in table[1] and table[1].endswith("-")
    r = _hostd(tmp_path, "config", "set", "power_limit", "500")
    assert r.returncode == 1
    assert r.stderr.strip() == "Error: bad value 500 for power_limit: GPU 0 (RTX 4090) takes 100-450 W"
    assert _hostd(tmp_path, "config", "set", "power_limit", "250").stdout == "power_limit = 250\n"
    assert _hostd(tmp_path, "config", "set", "gpus", "1").returncode == 0
    rows = json.loads(_hostd(tmp_path, "gpus", "--json").stdout)
    assert [(g["name"], g["shared"], g["lease"]) for g in rows] == [("RTX 4090", False, None), ("A100", True, None)]
    assert "not shared" in _hostd(tmp_path, "gpus").stdout
