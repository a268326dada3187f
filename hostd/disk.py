"""Disk shares: each lease's /workspace is a filesystem of its own, of the lease's size.

A sparse ext4 image per lease in hostd's home, loop-mounted and bound into the container: a renter
who fills /workspace gets ENOSPC inside the container, and the host's disk keeps the rest of its
space. The container's writable layer cannot be sized on every engine (overlay2 needs xfs with
project quotas), so hostd watches it instead and ends a lease whose layer outgrows its share.
"""
import logging
import os
import subprocess
import tempfile
import threading
from pathlib import Path

from shellrent.common import protocol

log = logging.getLogger("shellrent.disk")


class DiskError(Exception):
    """A workspace filesystem could not be made or mounted; str() says why."""


def _run(*argv: str) -> None:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        raise DiskError(f"{argv[0]} did not finish in 2 minutes") from None
    if proc.returncode:
        raise DiskError(f"{argv[0]}: {proc.stderr.strip() or f'exit {proc.returncode}'}")


class Workspaces:
    """Sized /workspace filesystems under root: <lease>.img and its mount point <lease>/."""

    def __init__(self, root: Path):
        self.root = root
        self._locks: dict[str, threading.Lock] = {}  # per lease: mount and move never interleave
        self._guard = threading.Lock()

    def _lock(self, lease_id: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(lease_id, threading.Lock())

    @staticmethod
    def check(root: Path) -> str | None:
        """Why sized workspaces cannot be made here (None when they can): tries a small one."""
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            img, mnt = Path(tmp) / "probe.img", Path(tmp) / "probe"
            try:
                _make(img, 16 << 20)
                mnt.mkdir()
                _run("mount", "-o", "loop,nodev,nosuid", str(img), str(mnt))
                _run("umount", str(mnt))
            except (DiskError, OSError, subprocess.SubprocessError) as exc:
                return str(exc)
        return None

    @classmethod
    def open(cls, root: Path, disk_check: float) -> "Workspaces | None":
        """Sized workspaces under root, or None (said once) where this machine cannot make them."""
        why = cls.check(root)
        if why:
            log.warning("disk shares NOT enforced for /workspace (%s): it is an engine volume", why)
            return None
        log.info("disk shares: /workspace is a filesystem of the lease's size (ENOSPC past it); "
                 "the writable layer is watched every %.0fs", disk_check)
        return cls(root)

    def _paths(self, lease_id: str) -> tuple[Path, Path]:
        lease_id = protocol.lease_id(lease_id)
        return self.root / f"{lease_id}.img", self.root / lease_id

    def make(self, lease_id: str, size_bytes: int) -> str:
        """The lease's workspace, made once and mounted; returns the mount point."""
        img, mnt = self._paths(lease_id)
        fresh = not img.exists()
        if fresh:
            _make(img, size_bytes)
        path = self.mount(lease_id)
        if fresh:
            try:
                (mnt / "lost+found").rmdir()  # the renter's /workspace starts empty (fsck makes it again)
            except OSError:
                pass
        return path

    def mount(self, lease_id: str) -> str:
        """Mount an existing workspace (again, e.g. after a reboot); returns the mount point."""
        img, mnt = self._paths(lease_id)
        with self._lock(lease_id):
            if not img.exists():
                raise DiskError(f"lease {lease_id} has no workspace image")
            mnt.mkdir(mode=0o755, exist_ok=True)
            if not os.path.ismount(mnt):
                _run("mount", "-o", "loop,nodev,nosuid", str(img), str(mnt))
        return str(mnt)

    def move(self, old: str, new: str, size_bytes: int) -> int:
        """Give lease old's workspace to lease new (renamed, not copied), grown to size_bytes when it is
        smaller; returns its size. Its mount must not be busy (the files view stopped first)."""
        src, src_mnt = self._paths(old)
        dst, _ = self._paths(new)
        first, second = sorted((old, new))
        with self._lock(first), self._lock(second):
            if not src.exists():
                raise DiskError(f"lease {old} has no workspace on this host any more")
            if dst.exists():
                raise DiskError(f"lease {new} has a workspace already")
            if os.path.ismount(src_mnt):
                _run("umount", str(src_mnt))
            if src_mnt.exists():
                src_mnt.rmdir()
            os.rename(src, dst)
        if size_bytes > dst.stat().st_size:
            os.truncate(dst, size_bytes)
            try:
                proc = subprocess.run(["e2fsck", "-f", "-p", str(dst)], capture_output=True, text=True, timeout=600)
            except subprocess.TimeoutExpired:
                raise DiskError("e2fsck did not finish in 10 minutes") from None
            if proc.returncode > 1:  # 1: errors corrected
                raise DiskError(f"e2fsck: {proc.stderr.strip() or f'exit {proc.returncode}'}")
            _run("resize2fs", str(dst))
        return dst.stat().st_size

    def exists(self, lease_id: str) -> bool:
        return self._paths(lease_id)[0].exists()

    def remove(self, lease_id: str) -> None:
        """Unmount and delete a lease's workspace."""
        img, mnt = self._paths(lease_id)
        if os.path.ismount(mnt):
            _run("umount", "-l", str(mnt))
        if mnt.exists():
            mnt.rmdir()
        img.unlink(missing_ok=True)


def _make(img: Path, size_bytes: int) -> None:
    fd = os.open(img, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, max(size_bytes, 16 << 20))
    finally:
        os.close(fd)
    try:
        _run("mkfs.ext4", "-q", "-F", "-m", "0", "-E", "lazy_itable_init=1,lazy_journal_init=1,root_owner=0:0",
             str(img))
    except DiskError:
        img.unlink(missing_ok=True)
        raise
