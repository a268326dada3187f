"""`hostd doctor`: the checks against stand-in GPU sources, engines and toolkit configs, a tiny SSH-ish
server for the broker, and the command itself on this machine (Docker, cgroup v1, no NVIDIA GPU)."""
import json
import os
import socket
import subprocess
import threading

import pytest

from shellrent.hostd import doctor, sizing
from shellrent.hostd.config import Config

from .cluster import BIN

SAFE = f"{doctor.ENVVAR_KEY} = false\n{doctor.MOUNTS_KEY} = true\n"


class Source:
    """A GPU source stand-in with what the doctor reads."""

    kind = "nvml"

    def __init__(self, driver="535.104.05", cuda=12.2, gpus=None):
        self._driver = {"driver_version": driver, "cuda_version": cuda}
        self._gpus = gpus if gpus is not None else [
            {"index": 0, "uuid": "GPU-0", "name": "RTX 4090", "memory_gb": 24.0, "error": None}]

    def driver(self):
        return self._driver

    def gpus(self):
        return self._gpus


class Engine:
    """A docker client stand-in: .version() and .info()."""

    def __init__(self, **info):
        self._info = {"CgroupVersion": "2", "CgroupDriver": "systemd", "Driver": "overlay2", "MemoryLimit": True,
                      "SwapLimit": True, "CpuCfsQuota": True, "PidsLimit": True, "OomKillDisable": False,
                      "Runtimes": {"runc": {}, "nvidia": {}}, "DockerRootDir": "/", **info}

    def version(self):
        return {"Version": "27.0.1", "ApiVersion": "1.46"}

    def info(self):
        return self._info


class DeadEngine:
    def version(self):
        raise ConnectionError("no socket")

    info = version


def hook(name):
    return f"/usr/bin/{name}" if name == "nvidia-container-runtime-hook" else None


def by_name(checks):
    return {c.check: c for c in checks}


def checks_for(tmp_path, source=None, engine=None, config=SAFE, which=hook):
    toml = tmp_path / "config.toml"
    if config is not None:
        toml.write_text(config)
    return by_name(doctor.run_checks(tmp_path / "home", source=source or Source(), engine=engine or Engine(),
                                     which=which, toolkit_config=toml, layer=lambda: None))


def hostd(home, *args):
    return subprocess.run([str(BIN / "hostd"), "--home", str(home), *args], capture_output=True, text=True,
                          timeout=60)


# the GPU checks

def test_a_good_gpu_host_passes_the_gpu_checks(tmp_path):
    c = checks_for(tmp_path)
    assert c["nvidia driver"].level == "ok" and "535.104.05, CUDA 12.2, 1 GPU" in c["nvidia driver"].text
    assert (c["gpu 0"].level, c["toolkit hook"].level, c["toolkit config"].level) == ("ok", "ok", "ok")
    assert c["docker runtime"].level == "ok"
    assert doctor.gpu_failures(Source(), Engine().info(), which=hook, toolkit_config=tmp_path / "config.toml") == []


def test_an_old_driver_fails(tmp_path):
    (tmp_path / "config.toml").write_text(SAFE)
    c = checks_for(tmp_path, source=Source(driver="470.82.01", cuda=11.4))
    assert c["nvidia driver"].level == "FAIL" and c["nvidia driver"].required
    assert ">= 525" in c["nvidia driver"].fix
    failures = doctor.gpu_failures(Source(driver="470.82.01"), {}, which=hook, toolkit_config=tmp_path / "config.toml")
    assert len(failures) == 1 and "470.82.01" in failures[0] and "fix: upgrade" in failures[0]


def test_a_gpu_with_an_error_fails_but_does_not_withdraw_the_others(tmp_path):
    lost = {"index": 1, "uuid": "GPU-1", "name": "?", "memory_gb": 0.0, "error": "GPU is lost (it fell off the bus)"}
    source = Source(gpus=[Source().gpus()[0], lost])
    c = checks_for(tmp_path, source=source)
    assert c["gpu 0"].level == "ok"
    assert c["gpu 1"].level == "FAIL" and "GPU 1" in c["gpu 1"].text and "withdrawn from offers" in c["gpu 1"].text
    assert doctor.gpu_failures(source, {}, which=hook, toolkit_config=tmp_path / "config.toml") == []


@pytest.mark.parametrize("config, level, says", [
    (SAFE, "ok", "= false and"),
    (f"{doctor.ENVVAR_KEY} = true\n{doctor.MOUNTS_KEY} = true\n", "FAIL", f"{doctor.ENVVAR_KEY} = true"),
    (f"{doctor.ENVVAR_KEY} = false\n", "FAIL", f"{doctor.MOUNTS_KEY} is not set"),
    (f"{doctor.ENVVAR_KEY} = false\n{doctor.MOUNTS_KEY} = false\n", "FAIL", f"{doctor.MOUNTS_KEY} = false"),
    ("disable-require = false\n", "FAIL", "not set at the top level"),
    (f"[nvidia-container-cli]\n{doctor.ENVVAR_KEY} = false\n", "FAIL", "under [nvidia-container-cli]"),
    ("not toml = =\n", "FAIL", "cannot be read"),
    (None, "FAIL", "not found"),
])
def test_the_toolkit_must_ignore_the_image_s_visible_devices(tmp_path, config, level, says):
    c = checks_for(tmp_path, config=config)["toolkit config"]
    assert c.level == level and says in c.text
    failures = doctor.gpu_failures(Source(), {}, which=hook, toolkit_config=tmp_path / "config.toml")
    if level == "FAIL":
        assert "NVIDIA_VISIBLE_DEVICES=all" in c.fix and c.required
        assert len(failures) == 1 and doctor.ENVVAR_KEY in failures[0] and doctor.MOUNTS_KEY in failures[0]
    else:
        assert failures == []


def test_no_toolkit_hook_fails(tmp_path):
    c = checks_for(tmp_path, which=lambda name: None)["toolkit hook"]
    assert c.level == "FAIL" and c.required and "nvidia-container-toolkit" in c.fix
    failures = doctor.gpu_failures(Source(), {}, which=lambda name: None, toolkit_config=tmp_path / "config.toml")
    assert len(failures) == 1 and "nvidia-container-runtime-hook" in failures[0]
    assert checks_for(tmp_path, which=lambda n: "/usr/bin/nvidia-ctk" if n == "nvidia-ctk" else None)[
        "toolkit hook"].level == "ok"


def test_an_unregistered_nvidia_runtime_is_only_info(tmp_path):
    c = checks_for(tmp_path, engine=Engine(Runtimes={"runc": {}}))
    assert c["docker runtime"].level == "info" and not c["docker runtime"].required
    assert doctor.line(c["docker runtime"]).startswith("info  docker runtime: ")
    assert " -- tip: optional: `nvidia-ctk runtime configure" in doctor.line(c["docker runtime"])
    assert not any(x.level == "FAIL" for x in c.values() if x.check != "joined")


def test_no_nvml_fails_the_driver_and_the_toolkit_only_warns(tmp_path):
    empty = doctor.gpus_mod.FakeSource("", "t")
    c = checks_for(tmp_path, source=empty, config=None, which=lambda name: None)
    assert (c["nvidia driver"].level, c["nvidia driver"].text) == ("FAIL", "no NVIDIA driver (NVML not found)")
    assert c["nvidia driver"].fix == "install the NVIDIA driver (>= 525)"
    assert [c[n].level for n in ("toolkit hook", "toolkit config")] == ["warn", "warn"]
    assert doctor.gpu_failures(empty, {}, which=lambda name: None, toolkit_config=tmp_path / "none.toml") == []


def test_fake_gpus_skip_the_nvidia_checks(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "settings.json").write_text(json.dumps({"fake_gpus": "RTX 4090:24"}))
    checks = doctor.run_checks(home, source=doctor.gpus_mod.FakeSource("RTX 4090:24", "t"), engine=Engine(),
                               which=lambda name: None, toolkit_config=tmp_path / "none.toml")
    skipped = [c for c in checks if c.check in doctor.GPU_CHECKS]
    assert len(skipped) == 4 and all(c.level == "ok" and c.text == doctor.SKIPPED for c in skipped)


# Docker, cgroups, disk

def test_engine_cgroups_and_limits(tmp_path):
    c = checks_for(tmp_path)
    assert c["docker"].level == "ok" and "27.0.1" in c["docker"].text
    assert c["cgroup"].level == "ok" and c["limits"].level == "ok"
    c = checks_for(tmp_path, engine=Engine(CgroupVersion="1", SwapLimit=False))
    assert c["cgroup"].level == "info" and "systemd.unified_cgroup_hierarchy=1" in c["cgroup"].fix  # v1 works
    assert c["limits"].level == "warn" and "swap" in c["limits"].text
    c = checks_for(tmp_path, engine=Engine(PidsLimit=False, MemoryLimit=None))
    assert c["limits"].level == "FAIL" and c["limits"].required and "memory, pids" in c["limits"].text


def test_the_layer_is_sized_or_said_to_be_only_counted(tmp_path):
    assert checks_for(tmp_path)["layer"].level == doctor.OK
    c = doctor.layer_check("--storage-opt is supported only for overlay over xfs with 'pquota' mount option")
    assert c.level == doctor.INFO and not c.required and "only for overlay over xfs" in c.text and "pquota" in c.fix


def test_an_unreachable_engine_fails(tmp_path):
    checks = doctor.run_checks(tmp_path / "home", source=Source(), engine=DeadEngine(), which=hook,
                               toolkit_config=tmp_path / "none.toml")
    c = by_name(checks)
    assert c["docker"].level == "FAIL" and "no socket" in c["docker"].text and doctor.failed(checks)
    assert c["disk"].level in ("ok", "warn", "FAIL")  # falls back to /


@pytest.mark.parametrize("free_gb, level", [(5, "FAIL"), (30, "warn"), (80, "ok")])
def test_free_disk(tmp_path, monkeypatch, free_gb, level):
    monkeypatch.setattr(doctor.shutil, "disk_usage", lambda path: type("U", (), {"free": free_gb * 1e9})())
    c = doctor.disk_check("/var/lib/docker", ["Docker's root"])
    assert c.level == level and f"{free_gb} GB free at /var/lib/docker" in c.text


# the broker

def banner_server(first: bytes):
    """A listening socket on 127.0.0.1 that sends `first` to one client; (port, thread, socket)."""
    srv = socket.create_server(("127.0.0.1", 0))

    def serve():
        conn, _ = srv.accept()
        with conn:
            conn.sendall(first)
            conn.recv(1)  # until the client hangs up

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return srv.getsockname()[1], thread, srv


def joined(tmp_path, port):
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    Config(home=home).save_pin({"addr": ["127.0.0.1", port], "fingerprint": "SHA256:x", "host": "h1"})
    return home


@pytest.mark.parametrize("first, level", [(b"SSH-2.0-test\r\n", "ok"), (b"HTTP/1.1 400 Bad Request\r\n", "FAIL")])
def test_the_broker_must_answer_ssh(tmp_path, first, level):
    port, thread, srv = banner_server(first)
    with srv:
        joined(tmp_path, port)
        c = checks_for(tmp_path)
        thread.join(5)
    assert c["joined"].level == "ok" and "SHA256:x" in c["joined"].text and "h1" in c["joined"].text
    assert c["broker"].level == level and f"127.0.0.1:{port}" in c["broker"].text
    if level == "ok":
        assert "SSH-2.0-test" in c["broker"].text
    else:
        assert "not an SSH server" in c["broker"].text and c["broker"].required


def test_a_closed_broker_port_fails(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    joined(tmp_path, port)
    c = checks_for(tmp_path)["broker"]
    assert c.level == "FAIL" and c.required and "cannot reach the broker" in c.text


def test_not_joined_fails(tmp_path):
    c = checks_for(tmp_path)
    assert c["joined"].level == "FAIL" and c["joined"].fix == "run `hostd join BROKER:PORT TOKEN`"
    assert "broker" not in c and "hostd" not in c


@pytest.mark.parametrize("connected, level", [(True, "ok"), (False, "warn")])
def test_a_running_hostd_says_whether_it_is_connected(tmp_path, connected, level):
    port, thread, srv = banner_server(b"SSH-2.0-test\r\n")
    with srv:
        home = joined(tmp_path, port)
        (home / "status.json").write_text(json.dumps({"pid": os.getpid(), "connected": connected, "error": "boom"}))
        c = checks_for(tmp_path)["hostd"]
        thread.join(5)
    assert c.level == level and str(os.getpid()) in c.text
    assert ("boom" in c.text) is (not connected)


# the command on this machine

def lines(out: str) -> dict[str, str]:
    """{check: line} of doctor's output; the first line of each check."""
    found = {}
    for text in out.splitlines():
        level, _, rest = text.partition("  ")
        found.setdefault(rest.strip().partition(":")[0], text)
    return found


@pytest.mark.docker
def test_doctor_on_this_machine(tmp_path):
    proc = hostd(tmp_path / "home", "doctor")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    got = lines(proc.stdout)
    assert got["docker"].startswith("ok    docker: Docker Engine ") and any(ch.isdigit() for ch in got["docker"])
    cgroup = got["cgroup"]
    assert cgroup.startswith("ok    cgroup: cgroup v2") or (
        cgroup.startswith("info  cgroup: cgroup v1") and "systemd.unified_cgroup_hierarchy=1" in cgroup)
    assert got["nvidia driver"] == ("FAIL  nvidia driver: no NVIDIA driver (NVML not found) "
                                    "-- fix: install the NVIDIA driver (>= 525)")
    assert got["joined"] == "FAIL  joined: not joined to a broker -- fix: run `hostd join BROKER:PORT TOKEN`"
    # fuse-overlayfs here: the engine's own reason, and how a provider gets a hard limit
    assert got["layer"].startswith("info  layer: the engine cannot size a lease's writable layer "
                                   "(--storage-opt is not supported)") and "pquota" in got["layer"]
    assert not (tmp_path / "home").exists()  # the doctor only looks
    assert not subprocess.run(["docker", "ps", "-aq", "--filter", "label=shellrent.probe"], capture_output=True,
                              text=True, check=True).stdout  # and leaves no probe behind


def test_doctor_with_fake_gpus_skips_the_nvidia_checks(tmp_path):
    home = tmp_path / "home"
    assert hostd(home, "config", "set", "fake_gpus", "RTX 4090:24").returncode == 0
    proc = hostd(home, "doctor")
    got = lines(proc.stdout)
    for name in doctor.GPU_CHECKS:
        assert got[name] == f"ok    {name}: {doctor.SKIPPED}"
    assert proc.returncode == 1  # not joined
    proc = hostd(home, "doctor", "--json")
    checks = json.loads(proc.stdout)
    assert proc.returncode == 1
    assert all(set(c) == {"check", "level", "text", "fix", "required"} for c in checks)
    by = {c["check"]: c for c in checks}
    assert by["nvidia driver"]["text"] == doctor.SKIPPED
    assert (by["joined"]["level"], by["joined"]["required"]) == ("FAIL", True)


@pytest.mark.parametrize("pid_max,gpus,per_gpu,level", [
    (32768, 1, 4096, doctor.OK), (32768, 8, 3072, doctor.WARN), (4194304, 8, 4096, doctor.OK),
    (8192, 2, 2048, doctor.WARN), (32768, 0, 4096, doctor.OK), (4096, 4, 64, doctor.WARN)])
def test_pids_are_a_share_of_pid_max_with_a_reserve_for_the_host(pid_max, gpus, per_gpu, level):
    assert sizing.pids_per_gpu(pid_max, gpus) == per_gpu
    if pid_max > sizing.PIDS_RESERVE:  # every GPU rented leaves the host its reserve
        assert pid_max - per_gpu * max(1, gpus) >= max(sizing.PIDS_RESERVE, pid_max // 4)
    check = doctor.pids_check(pid_max, gpus)
    assert check.level == level and f"a lease gets {per_gpu} PIDs per GPU" in check.text
    assert (level == doctor.OK) == (check.fix is None or check.fix == "")


def test_per_user_limits_are_raised_out_of_a_leases_reach_and_said_to_be_shared(tmp_path):
    from shellrent.hostd import limits
    for name in limits.SIZED:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("128\n")
    check = doctor.per_user_check(limits.read(tmp_path))
    assert check.level == doctor.WARN and "fs.inotify.max_user_instances 128" in check.text
    assert limits.size(tmp_path) == []
    assert limits.read(tmp_path) == limits.SIZED
    check = doctor.per_user_check(limits.read(tmp_path))
    assert check.level == doctor.OK and "not isolated" in check.text
    (tmp_path / "fs/inotify/max_user_watches").unlink()
    (tmp_path / "fs/inotify/max_user_watches").mkdir()  # unwritable, even for root
    assert limits.size(tmp_path) == ["fs.inotify.max_user_watches is None and could not be raised: Is a directory"]
