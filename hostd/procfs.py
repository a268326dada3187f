"""What hostd reads in the host's /proc: a container's processes by pid namespace, whether a pid is
(still) a given container's, and the host's pid_max."""
import os
from pathlib import Path


def pid_namespace(init: int) -> list[int]:
    """Host pids of every process in the pid namespace of init (none when init is 0); OSError when
    init's namespace cannot be read."""
    if not init:
        return []
    ns = os.readlink(f"/proc/{init}/ns/pid")
    pids = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and os.readlink(f"/proc/{entry}/ns/pid") == ns:
                pids.append(int(entry))
        except OSError:
            continue
    return pids


def in_container(pid: int, container: str) -> bool:
    """Whether pid is (still) a process of that container: its cgroup path names the container
    (cgroup v1 .../docker/ID, v2 .../docker-ID.scope)."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            return container in f.read()
    except OSError:
        return False


def pid_max() -> int:
    try:
        return int(Path("/proc/sys/kernel/pid_max").read_text())
    except (OSError, ValueError):
        return 32768
