"""`hostd doctor`: is this machine ready to host? One check per line: ok, warn or FAIL, and the fix.

Docker and the limits it can enforce, cgroup v2, the NVIDIA driver and container toolkit (and its setting
that keeps an image from picking its own GPUs), the layer's size, free disk, and the broker. A required
check that FAILs means hostd cannot host safely (exit 1); gpu_failures() is the GPU part alone, for hostd
run to refuse to offer GPUs while any of it fails.
"""
import json
import logging
import os
import shutil
import socket
import tomllib
from dataclasses import dataclass
from pathlib import Path

from . import gpus as gpus_mod, limits as kernel_limits, procfs, runtime, settings as settings_mod, shaping, sizing
from .config import Config

OK, INFO, WARN, FAIL = "ok", "info", "warn", "FAIL"  # info: worth knowing, not needed for hosting
TOOLKIT_CONFIG = Path("/etc/nvidia-container-runtime/config.toml")
ENVVAR_KEY = "accept-nvidia-visible-devices-envvar-when-unprivileged"
MOUNTS_KEY = "accept-nvidia-visible-devices-as-volume-mounts"
MIN_DRIVER = 525  # CUDA 12 images need a driver of at least this major version
DISK_FAIL_GB, DISK_WARN_GB = 10, 50
BROKER_TIMEOUT = 5.0
SKIPPED = "skipped: fake_gpus is set (no real GPUs are shared)"
GPU_REQUIRED = ("nvidia driver", "toolkit hook", "toolkit config")  # what gpu_failures() reports
GPU_CHECKS = ("nvidia driver", "toolkit hook", "docker runtime", "toolkit config")


@dataclass
class Check:
    """One finding: its name, ok/warn/FAIL, what was found, how to fix it, and whether hostd needs it."""

    check: str
    level: str
    text: str
    fix: str | None = None
    required: bool = False


def run_checks(home: Path, *, source=None, engine=None, which=shutil.which,
               toolkit_config: Path = TOOLKIT_CONFIG, layer=runtime.layer_sizing) -> list[Check]:
    """Every check for the hostd home `home`, in the order printed.

    source: a GPU source (hostd.gpus), else from the fake_gpus setting. engine: a docker client (or
    anything with .version() and .info()), else docker.from_env(). layer: runtime.layer_sizing."""
    home = Path(home)
    checks = []
    try:
        values = settings_mod.load(home / "settings.json")
    except settings_mod.SettingsError as exc:
        checks.append(Check("settings", FAIL, str(exc), "fix it with `hostd config set KEY VALUE`", True))
        values = settings_mod.defaults()
    docker, version, info = docker_check(engine)
    checks += [docker, cgroup_check(info), limits_check(info),
               layer_check(layer() if info else "not probed: Docker engine unreachable")]
    if source is None:
        source = _open_source(values["fake_gpus"])
    checks += nvidia_checks(source, info, which, toolkit_config, fake_set=bool(values["fake_gpus"]))
    checks.append(pids_check(procfs.pid_max(), _gpu_count(source)))
    checks += [per_user_check(kernel_limits.read()), Check("bandwidth", *shaping.finding(values, which))]
    checks += disk_checks(info.get("DockerRootDir") or "/", home)
    checks += broker_checks(Config(home=home))
    return checks


def gpu_failures(source, engine_info: dict, which=shutil.which, toolkit_config: Path = TOOLKIT_CONFIG) -> list[str]:
    """Why this machine's GPUs must not be offered: the failed required GPU checks (driver, toolkit hook,
    toolkit config), each as 'what was found -- fix: how'. [] when all pass, and for a fake source."""
    if source.kind == "fake":
        return []
    checks = driver_checks(source) + toolkit_checks(engine_info, which, toolkit_config, required=True)
    return [f"{c.text} -- fix: {c.fix}" for c in checks if c.level == FAIL and c.check in GPU_REQUIRED]


def failed(checks: list[Check]) -> bool:
    """Whether a required check failed (hostd doctor exits 1 then)."""
    return any(c.level == FAIL and c.required for c in checks)


def line(check: Check) -> str:
    """The check as one printed line; warn and FAIL lines end with the fix, info ones with a tip."""
    text = f"{check.level:<4}  {check.check}: {check.text}"
    return text + (f" -- {'tip' if check.level == INFO else 'fix'}: {check.fix}" if check.fix and check.level != OK else "")


# Docker and cgroups

def docker_check(engine=None) -> tuple[Check, dict, dict]:
    """(check, version, info) of the Docker engine; the dicts are empty when it cannot be reached."""
    fix = "start Docker (`systemctl start docker`) and run hostd as root (or a member of the docker group)"
    own = engine is None
    try:
        if own:
            import docker
            engine = docker.from_env(timeout=10)
        version, info = engine.version(), engine.info()
    except Exception as exc:  # docker-py raises its own, requests' and OS errors alike
        return Check("docker", FAIL, f"Docker engine unreachable: {exc}", fix, True), {}, {}
    finally:
        if own and engine is not None:
            engine.close()
    text = (f"Docker Engine {version.get('Version', '?')} (API {version.get('ApiVersion', '?')}), "
            f"storage driver {info.get('Driver', '?')}")
    return Check("docker", OK, text, required=True), version, info


def cgroup_check(info: dict) -> Check:
    """cgroup v2 (one hierarchy, pressure and memory accounting hostd relies on) or v1 (info: it works)."""
    version = str(info.get("CgroupVersion") or ("2" if Path("/sys/fs/cgroup/cgroup.controllers").exists() else "1"))
    text = f"cgroup v{version}" + (f" (driver {info['CgroupDriver']})" if info.get("CgroupDriver") else "")
    if version == "2":
        return Check("cgroup", OK, text)
    return Check("cgroup", INFO, text, "providers should use cgroup v2 (systemd.unified_cgroup_hierarchy=1): "
                 "add it to the kernel command line and reboot")


def limits_check(info: dict) -> Check:
    """Which per-container limits the engine enforces: memory, CPU quota and pids are required, swap is not."""
    if not info:
        return Check("limits", WARN, "not checked: Docker engine unreachable", required=True)
    needed = {"MemoryLimit": "memory", "CpuCfsQuota": "CPU quota", "PidsLimit": "pids"}
    optional = {"SwapLimit": "swap", "OomKillDisable": "OOM-kill control"}
    missing = [what for key, what in needed.items() if not info.get(key)]
    have = [what for key, what in {**needed, **optional}.items() if info.get(key)]
    text = "engine enforces: " + (", ".join(have) or "nothing")
    if missing:
        return Check("limits", FAIL, f"engine cannot enforce: {', '.join(missing)} limits ({text})",
                     "enable the memory, cpu and pids cgroup controllers (cgroup v2 has them; on v1 boot with "
                     "cgroup_enable=memory swapaccount=1) and restart Docker; see `docker info` warnings", True)
    if not info.get("SwapLimit"):
        return Check("limits", WARN, f"swap is not capped: a container can swap past its memory share ({text})",
                     "boot with swapaccount=1 (or use cgroup v2) and restart Docker", True)
    return Check("limits", OK, text, required=True)


def layer_check(why: str | None) -> Check:
    """Whether a lease's writable layer is sized (a hard limit) or only counted and frozen past its share."""
    return Check("layer", OK, "the engine sizes each lease's writable layer to its disk share") if why is None else \
        Check("layer", INFO, f"the engine cannot size a lease's writable layer ({why}): hostd counts it and freezes a "
              "lease over its share", "for a hard limit, give Docker's root an xfs filesystem mounted with pquota "
              "and use the overlay2 storage driver")


def _gpu_count(source) -> int:
    try:
        return len(source.gpus())
    except Exception:
        return 1


def pids_check(host_pid_max: int, gpus: int) -> Check:
    """PIDs are sized, not isolated: each lease's pids limit is a share of pid_max with a reserve kept."""
    per_gpu = sizing.pids_per_gpu(host_pid_max, gpus)
    rented = per_gpu * max(1, gpus)
    text = (f"pid_max {host_pid_max}: a lease gets {per_gpu} PIDs per GPU; with all {max(1, gpus)} GPU(s) "
            f"rented, leases hold {rented} and the host keeps {host_pid_max - rented}")
    if per_gpu < sizing.PIDS_PER_GPU:
        return Check("pids", WARN, text + f" (under {sizing.PIDS_PER_GPU} per GPU)",
                     "raise it: `sysctl -w kernel.pid_max=4194304` and the same line in /etc/sysctl.d/")
    return Check("pids", OK, text)


def per_user_check(values: dict) -> Check:
    """Per-user kernel limits (inotify) are shared by every lease and root: sized, not isolated."""
    low = {n: v for n, v in values.items() if v is None or v < kernel_limits.SIZED[n]}
    names = ", ".join(f"{n.replace('/', '.')} {v}" for n, v in values.items())
    if low:
        return Check("per-user limits", WARN, f"{names}: shared by every lease and root, and low enough for one "
                     "lease to take them all; `hostd run` raises them", "let `hostd run` run as root, or "
                     + "; ".join(f"`sysctl -w {n.replace('/', '.')}={kernel_limits.SIZED[n]}`" for n in low))
    return Check("per-user limits", OK, f"{names}: shared by every lease and root (not isolated), out of any "
                 "lease's reach: what it holds is charged to its own memory")


# NVIDIA driver and container toolkit

def _open_source(fake_spec: str):
    """gpus.open_source() without its 'NVML unavailable' log line: the driver check says it instead."""
    log = logging.getLogger("shellrent.gpus")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        return gpus_mod.open_source(fake_spec, seed="doctor")
    finally:
        log.setLevel(level)


def nvidia_checks(source, engine_info: dict, which, toolkit_config: Path, fake_set: bool) -> list[Check]:
    """Driver, GPUs and toolkit; skipped (ok) when fake_gpus is set, since then no real GPU is shared."""
    if source.kind == "fake" and fake_set:
        return [Check(name, OK, SKIPPED) for name in GPU_CHECKS]
    real = source.kind != "fake"
    if real:
        checks = driver_checks(source)
    else:
        checks = [Check("nvidia driver", FAIL, "no NVIDIA driver (NVML not found)",
                        "install the NVIDIA driver (>= 525)", True)]
    return checks + toolkit_checks(engine_info, which, toolkit_config, required=real)


def _major(version: str) -> int | None:
    head = str(version).split(".")[0]
    return int(head) if head.isdigit() else None


def driver_checks(source) -> list[Check]:
    """The driver's version (>= 525 for CUDA 12 images), then one line per GPU (an unreadable GPU FAILs)."""
    try:
        driver, gpus = source.driver(), source.gpus()
    except Exception as exc:  # NVML errors are the source's own classes
        return [Check("nvidia driver", FAIL, f"NVML cannot be read: {exc}",
                      "check `nvidia-smi`; reinstall or reload the NVIDIA driver (>= 525)", True)]
    version, cuda = driver.get("driver_version", "?"), driver.get("cuda_version")
    text = f"NVIDIA driver {version}, CUDA {cuda:g}" if isinstance(cuda, (int, float)) else f"NVIDIA driver {version}"
    text += f", {len(gpus)} GPU{'' if len(gpus) == 1 else 's'}"
    major = _major(version)
    if major is None or major < MIN_DRIVER:
        checks = [Check("nvidia driver", FAIL, f"{text}: older than {MIN_DRIVER}, CUDA 12 images will not run",
                        f"upgrade the NVIDIA driver to >= {MIN_DRIVER}", True)]
    else:
        checks = [Check("nvidia driver", OK, text, required=True)]
    if not gpus:
        checks.append(Check("gpus", WARN, "NVML lists no GPUs", "check `nvidia-smi`"))
    return checks + [gpu_check(g) for g in gpus]


def gpu_check(gpu: dict) -> Check:
    """One GPU: its model and memory, or FAIL with why it cannot be read (hostd withdraws it from offers)."""
    name = f"gpu {gpu.get('index')}"
    if gpu.get("error"):
        return Check(name, FAIL, f"GPU {gpu.get('index')} ({gpu.get('uuid') or '?'}): {gpu['error']}; "
                     "withdrawn from offers", "check `nvidia-smi`; a lost GPU needs a reset (`nvidia-smi -r`) or "
                     "a reboot", True)
    return Check(name, OK, f"{gpu.get('name')}, {gpu.get('memory_gb')} GB ({gpu.get('uuid')})")


def toolkit_checks(engine_info: dict, which, toolkit_config: Path, required: bool) -> list[Check]:
    """The container toolkit's hook, the Docker runtime, and its config. When the GPUs are not real
    (no driver) nothing here is required and a failure is only a warning."""
    return [hook_check(which, required), runtime_check(engine_info),
            toolkit_config_check(toolkit_config, required)]


def hook_check(which, required: bool) -> Check:
    """Docker's --gpus device requests run nvidia-container-runtime-hook (nvidia-ctk in newer toolkits)."""
    path = which("nvidia-container-runtime-hook") or which("nvidia-ctk")
    if path:
        return Check("toolkit hook", OK, f"NVIDIA Container Toolkit: {path}", required=required)
    return Check("toolkit hook", FAIL if required else WARN,
                 "NVIDIA Container Toolkit not found (no nvidia-container-runtime-hook or nvidia-ctk on PATH)",
                 "install the nvidia-container-toolkit package, then restart Docker", required)


def runtime_check(engine_info: dict) -> Check:
    """Whether 'nvidia' is a Docker runtime: info only, since --gpus uses the hook, not the runtime."""
    if not engine_info:
        return Check("docker runtime", WARN, "not checked: Docker engine unreachable")
    if "nvidia" in (engine_info.get("Runtimes") or {}):
        return Check("docker runtime", OK, "nvidia is a registered Docker runtime")
    return Check("docker runtime", INFO, "nvidia is not a registered Docker runtime (not needed: Docker's "
                 "--gpus device requests use the hook, not the runtime)",
                 "optional: `nvidia-ctk runtime configure --runtime=docker`, then restart Docker")


def toolkit_config_check(path: Path, required: bool) -> Check:
    """The toolkit must ignore NVIDIA_VISIBLE_DEVICES from unprivileged containers (otherwise an image
    whose ENV says NVIDIA_VISIBLE_DEVICES=all gets every GPU of the machine in any container hostd does
    not pin) and take a container's GPUs from the /dev/null mounts hostd makes under
    /var/run/nvidia-container-devices (with the variable ignored, that is how a lease gets its GPUs)."""
    level = FAIL if required else WARN
    want = {ENVVAR_KEY: False, MOUNTS_KEY: True}
    fix = (f"put `{ENVVAR_KEY} = false` and `{MOUNTS_KEY} = true` at the top of {path} (before any "
           "[section]): the first stops an image's NVIDIA_VISIBLE_DEVICES=all from widening a container's "
           "GPUs, the second is how hostd hands a lease its GPUs")
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        return Check("toolkit config", level, f"{path} not found (the toolkit's defaults are {ENVVAR_KEY} = true, "
                     f"{MOUNTS_KEY} = false)", fix, required)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        return Check("toolkit config", level, f"{path} cannot be read: {exc}", fix, required)
    wrong = []
    for key, value in want.items():
        if key not in data:
            where = [k for k, v in data.items() if isinstance(v, dict) and key in v]
            wrong.append(f"{key} is not set at the top level" +
                         (f" (it is under [{where[0]}], where it has no effect)" if where else ""))
        elif data[key] is not value:
            wrong.append(f"{key} = {json.dumps(data[key])}")
    if not wrong:
        return Check("toolkit config", OK, f"{ENVVAR_KEY} = false and {MOUNTS_KEY} = true in {path}",
                     required=required)
    return Check("toolkit config", level, f"{'; '.join(wrong)} in {path}", fix, required)


# Disk

def _existing(path: Path) -> Path:
    """path, or its nearest existing parent (the home may not exist before `hostd join`)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def disk_checks(docker_root: str, home: Path) -> list[Check]:
    """Free space where the engine keeps containers' layers and where hostd keeps /workspace images; one
    line per filesystem."""
    places: dict[int, tuple[str, list[str]]] = {}
    for path, what in ((docker_root, "Docker's root"), (str(_existing(home)), "hostd's workspaces")):
        try:
            dev = os.stat(path).st_dev
        except OSError:
            path, dev = "/", os.stat("/").st_dev
        places.setdefault(dev, (path, []))[1].append(what)
    return [disk_check(path, whats) for path, whats in places.values()]


def disk_check(path: str, whats: list[str]) -> Check:
    """Free GB at path: under 10 FAILs, under 50 warns."""
    free = shutil.disk_usage(path).free / 1e9
    text = f"{free:.0f} GB free at {path} ({' and '.join(whats)})"
    fix = f"free space on the filesystem of {path} (`docker system prune` removes unused images)"
    if free < DISK_FAIL_GB:
        return Check("disk", FAIL, text + f": under {DISK_FAIL_GB} GB", fix, True)
    if free < DISK_WARN_GB:
        return Check("disk", WARN, text + f": under {DISK_WARN_GB} GB, little to share", fix, True)
    return Check("disk", OK, text, required=True)


# The broker

def broker_checks(cfg: Config) -> list[Check]:
    """Joined (the broker's key pinned), the broker reachable, and whether a running hostd is connected."""
    try:
        pin = cfg.load_pin()
    except (OSError, ValueError) as exc:
        return [Check("joined", FAIL, f"{cfg.pin_path} cannot be read: {exc}",
                      "run `hostd join BROKER:PORT TOKEN` again", True)]
    if not pin:
        return [Check("joined", FAIL, "not joined to a broker", "run `hostd join BROKER:PORT TOKEN`", True)]
    host, port = pin["addr"]
    checks = [Check("joined", OK, f"host {pin.get('host')} of broker {host}:{port}; broker key pinned: "
                    f"{pin.get('fingerprint')}", required=True),
              reach_check(host, port)]
    running = running_check(cfg.status_path)
    return checks + ([running] if running else [])


def banner(host: str, port: int, timeout: float = BROKER_TIMEOUT) -> str:
    """The first line a TCP server at host:port sends (an SSH server's version line)."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        with sock.makefile("rb") as f:
            return f.readline(256).decode("latin-1").rstrip("\r\n")


def reach_check(host: str, port: int) -> Check:
    """hostd dials the broker: it must answer on the pinned address with an SSH version line."""
    where = f"{host}:{port}"
    try:
        first = banner(host, port)
    except OSError as exc:
        return Check("broker", FAIL, f"cannot reach the broker at {where}: {exc or type(exc).__name__}",
                     "check the network and firewalls between this machine and the broker (hostd dials out to "
                     "it; nothing needs to dial in), and that the broker runs", True)
    if not first.startswith("SSH-2.0-"):
        return Check("broker", FAIL, f"{where} answered {first[:60]!r}, not an SSH server",
                     "check the broker's address (re-join with its host port: `hostd join BROKER:PORT TOKEN`)", True)
    return Check("broker", OK, f"{where} answers {first[:60]} (hostd dials it)", required=True)


def running_check(status_path: Path) -> Check | None:
    """Whether a running hostd (its status file's pid alive) is connected; None when none runs."""
    try:
        status = json.loads(Path(status_path).read_text())
    except (OSError, ValueError):
        return None
    pid = status.get("pid") if isinstance(status, dict) else None
    if not pid_alive(pid):
        return None
    if status.get("connected"):
        return Check("hostd", OK, f"hostd runs (pid {pid}) and is connected to the broker")
    return Check("hostd", WARN, f"hostd runs (pid {pid}) but is not connected: {status.get('error') or '?'}",
                 "see hostd's log; `hostd status` shows the last error")


def pid_alive(pid) -> bool:
    """Whether a process pid exists (one of another user counts)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
