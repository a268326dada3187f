"""What a lease holds of the host's disk, counted from the filesystem: bytes and inodes.

The engine's own figure (SizeRw) sees only files that have a name in the writable layer. A renter can
hide data from it by deleting a file it keeps open, maps, or has in flight over a unix socket. So
hostd walks the layer's directories on the host (the upper directory, and the work directory where
fuse-overlayfs keeps deleted files that are still held), out of process and bounded by the lease's
inode share, and adds the deleted files its processes still hold on kernel overlayfs, where they
have no name anywhere.
"""
import os
import stat
import subprocess
import threading

# One inode of the host's per 16 KiB of a lease's disk share: the ratio mkfs.ext4 gives a filesystem.
BYTES_PER_INODE = 16384
WALK_TIMEOUT = 60.0  # a walk bounded by the inode share finishes well within this on any disk


class UsageError(Exception):
    """The layer could not be counted; str() says why."""


def inode_share(disk_bytes: float) -> int:
    """Inodes of the host's a lease with this disk share may hold."""
    return max(4096, int(disk_bytes // BYTES_PER_INODE))


def walk(paths: list[str], max_inodes: int, timeout: float = WALK_TIMEOUT) -> tuple[int, int]:
    """(bytes on disk, inodes) under paths, not crossing into other filesystems. Stops counting once
    past max_inodes (the answer is then over it). A walk that cannot finish in time raises UsageError:
    a layer too big to count is never taken as within its share."""
    paths = [p for p in paths if p and os.path.isdir(p)]
    if not paths:
        return 0, 0
    proc = subprocess.Popen(["find", *paths, "-xdev", "-printf", "%b\n"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env={"LC_ALL": "C", "PATH": os.environ.get("PATH", "")})
    late = threading.Event()

    def stop() -> None:  # find stuck in one huge directory prints nothing: a deadline of its own
        late.set()
        proc.kill()

    timer = threading.Timer(timeout, stop)
    timer.start()
    blocks = inodes = 0
    try:
        for line in proc.stdout:
            blocks += int(line) if line[:-1].isdigit() else 0
            inodes += 1
            if inodes > max_inodes:
                break
    finally:
        timer.cancel()
        proc.kill()
        proc.stdout.close()
        proc.wait()
    if inodes <= max_inodes and late.is_set():
        raise UsageError(f"counting its layer took over {timeout:.0f} s ({inodes} inodes counted)")
    return blocks * 512, inodes


def held_deleted(pids: list[int], root_dev: int | None) -> int:
    """Bytes of deleted files on the container's root filesystem that its processes keep open or
    mapped (each file once)."""
    seen, used = set(), 0
    for pid in pids:
        for where in ("fd", "map_files"):
            try:
                names = os.listdir(f"/proc/{pid}/{where}")
            except OSError:
                continue
            for name in names:
                path = f"/proc/{pid}/{where}/{name}"
                try:
                    if not os.readlink(path).endswith(" (deleted)"):
                        continue
                    st = os.stat(path)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode) and st.st_dev == root_dev and (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    used += st.st_blocks * 512 or st.st_size
    return used
