"""The host's per-user kernel limits that every lease shares, sized out of any one lease's reach.

A lease's root is the host's uid 0 (Docker without user namespaces, as providers run it), and the
kernel counts some resources per user: inotify instances and watches (128 instances by default,
so one lease could take them all and leave other leases and root on the host with EMFILE). The
kernel has no per-container bound for them, so hostd raises them (at `hostd run`, when lower) to
where only what they cost can bound them: each instance and watch is kernel memory charged to the
lease's memory cgroup, and each instance an open file under the lease's own limits. Shared, not
isolated: `hostd doctor` and SECURITY.md say so.
"""
import logging
from pathlib import Path

log = logging.getLogger("shellrent.limits")
PROC = Path("/proc/sys")
SIZED = {"fs/inotify/max_user_instances": 2**31 - 1, "fs/inotify/max_user_watches": 2**31 - 1}


def read(proc: Path = PROC) -> dict[str, int | None]:
    out = {}
    for name in SIZED:
        try:
            out[name] = int((proc / name).read_text())
        except (OSError, ValueError):
            out[name] = None
    return out


def size(proc: Path = PROC) -> list[str]:
    """Raise each limit that is lower than SIZED; returns one line per limit that could not be raised."""
    problems = []
    for name, value in read(proc).items():
        if value is not None and value >= SIZED[name]:
            continue
        try:
            (proc / name).write_text(str(SIZED[name]))
            log.info("raised %s from %s to %d (shared by every lease and the host)", name.replace("/", "."),
                     value, SIZED[name])
        except OSError as exc:
            problems.append(f"{name.replace('/', '.')} is {value} and could not be raised: {exc.strerror or exc}")
    for line in problems:
        log.warning("%s: one lease can take them all", line)
    return problems
