"""What a lease container is made of, as values: its capabilities, labels, main process, GPU device
requests and the hook's mounts, the check that the engine pinned exactly the lease's GPUs, and the names
and times read back from the engine (hostd.runtime makes the containers)."""
import calendar
import hashlib
import logging
import time

import docker
from docker.errors import APIError, NotFound

from shellrent.keys import material

log = logging.getLogger("shellrent.runtime")


class RuntimeError_(Exception):
    """A container could not be made or controlled; str() is the reason."""


# What a root user in the container needs for package installs and ordinary work. Dropped from
# Docker's default set: NET_RAW (spoofing), MKNOD, AUDIT_WRITE, SETFCAP, SETPCAP, SYS_CHROOT.
CAPS = ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "NET_BIND_SERVICE"]
LABEL = "shellrent"
DEVICE_MOUNTS = "/var/run/nvidia-container-devices"  # the NVIDIA hook's volume-mount device list
# The container's main process ignores SIGTERM (inherited through exec), so that at a lease's end
# the SIGTERM hostd sends to every process reaches the renter's but leaves the container up for the
# grace period.
MAIN = ["/bin/sh", "-c", "trap '' TERM; exec sleep infinity"]
BROADCAST = ('for t in /dev/pts/[0-9]*; do printf "\\r\\n%s\\r\\n" "$1" > "$t" 2>/dev/null; done; '
             'command -v tmux >/dev/null && tmux list-clients -F "#{client_name}" 2>/dev/null | '
             'while read -r c; do tmux display-message -c "$c" "$1"; done; true')


# POSIX message queues are counted per user, and every lease's root is the host's root: each lease's
# limit is the kernel's default (800 KiB for all of uid 0's queues), whatever the engine inherited.
MSGQUEUE = docker.types.Ulimit(name="msgqueue", soft=819200, hard=819200)


def owner_of(key) -> str:
    """What this hostd's containers carry as LABEL.hostd: its key's fingerprint, shortened."""
    return material.fingerprint(key).removeprefix("SHA256:")[:16]


def labels(owner: str, lease: dict) -> dict:
    return {LABEL: "1", f"{LABEL}.hostd": owner, f"{LABEL}.lease": lease["id"],
            f"{LABEL}.renter": lease["renter"], f"{LABEL}.ends_at": str(int(lease["ends_at"])),
            f"{LABEL}.gpus": ",".join(lease.get("gpus") or [])}


def gpu_requests(uuids: list[str]) -> list:
    return [docker.types.DeviceRequest(device_ids=uuids, capabilities=[["gpu"]])] if uuids else []


def device_mounts(uuids: list[str]) -> list:
    return [docker.types.Mount(f"{DEVICE_MOUNTS}/{u}", "/dev/null", type="bind", read_only=True) for u in uuids]


def remove(thing) -> None:
    """Remove a container or network made for a lease; a failure is logged (it is cleanup)."""
    try:
        if isinstance(thing, docker.models.networks.Network):
            thing.remove()
        else:
            thing.remove(force=True)
    except (APIError, NotFound) as exc:
        log.warning("cleanup of %s failed: %s", thing, exc)


def container_gpus(container) -> list[str]:
    """The GPUs a lease's container was made for, as hostd labelled it (or, made before the label,
    pinned it with NVIDIA_VISIBLE_DEVICES)."""
    label = container.labels.get(f"{LABEL}.gpus")
    if label is None:
        env = (container.attrs.get("Config") or {}).get("Env") or []
        label = next((e.split("=", 1)[1] for e in env if e.startswith("NVIDIA_VISIBLE_DEVICES=")), "")
        label = "" if label == "void" else label
    return [u for u in label.split(",") if u]


def check_name(owner: str) -> str:
    """The self-check container's name: the owner is a base64 key fingerprint, whose / and + a
    container name cannot hold."""
    return "shellrent-selfcheck-" + hashlib.sha256(owner.encode()).hexdigest()[:16]


def pinning_errors(attrs: dict, device_ids: list[str], pinned: str) -> str | None:
    """What is wrong with a created container's GPUs as the engine records them; None when exactly
    device_ids are requested and mounted for the hook, and NVIDIA_VISIBLE_DEVICES is set once, to pinned."""
    requests = attrs.get("HostConfig", {}).get("DeviceRequests") or []
    asked = [(r.get("DeviceIDs") or [], r.get("Count") or 0) for r in requests]
    if (asked != [(list(device_ids), 0)]) if device_ids else asked:
        return f"device requests {asked} instead of {device_ids}"
    mounts = sorted(m.get("Target", "") for m in attrs.get("HostConfig", {}).get("Mounts") or []
                    if m.get("Source") == "/dev/null" or m.get("Target", "").startswith(DEVICE_MOUNTS))
    if mounts != sorted(f"{DEVICE_MOUNTS}/{u}" for u in device_ids):
        return f"device mounts {mounts} instead of {device_ids}"
    env = attrs.get("Config", {}).get("Env") or []
    seen = [e.split("=", 1)[1] for e in env if e.startswith("NVIDIA_VISIBLE_DEVICES=")]
    if seen != [pinned]:
        return f"NVIDIA_VISIBLE_DEVICES is {seen} instead of {pinned!r}"
    return None


def epoch(text: str | None) -> float | None:
    """Seconds since the epoch from the engine's RFC 3339 times ('0001-01-01T00:00:00Z': never)."""
    if not text or text.startswith("0001"):
        return None
    try:
        head, _, frac = text.rstrip("Z").partition(".")
        return calendar.timegm(time.strptime(head, "%Y-%m-%dT%H:%M:%S")) + float(f"0.{frac or 0}")
    except ValueError:
        return None
