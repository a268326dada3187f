"""What a lease holds of the host's disk, and its /workspace (a part of hostd.runtime.Runtime): the
writable layer counted on the host, the sized workspace filesystem or the engine volume, free space."""
import logging
import os
import shutil

from docker.errors import APIError, DockerException, NotFound

from . import usage
from .disk import DiskError
from .runtime_spec import RuntimeError_

log = logging.getLogger("shellrent.runtime")


class DiskUse:
    def _workspace(self, lease_id: str) -> str:
        """What to mount as /workspace: the sized filesystem (mounted again if need be) or the volume
        (one the engine has: a workspace moved to another lease is not made again, empty)."""
        if self.workspaces and self.workspaces.exists(lease_id):
            return self.workspaces.mount(lease_id)
        volume = f"shellrent-ws-{lease_id}"
        if self.workspaces:
            try:
                self.client.volumes.get(volume)
            except NotFound:
                raise DiskError(f"lease {lease_id} has no workspace on this host any more") from None
            except (APIError, DockerException) as exc:
                raise DiskError(f"lease {lease_id}: {exc}") from None
        return volume

    def move_workspace(self, old: str, new: str, size_bytes: int) -> int:
        """Lease old's kept workspace becomes lease new's (its files view stops first); its size."""
        if not self.workspaces:
            raise RuntimeError_("this host keeps /workspace as engine volumes, which cannot move to a new lease")
        try:
            self._drop_files_view(old)
        except (APIError, DockerException) as exc:
            raise RuntimeError_(f"stopping the files view of lease {old}: {exc}") from None
        try:
            return self.workspaces.move(old, new, size_bytes)
        except (DiskError, OSError) as exc:
            raise RuntimeError_(f"moving the workspace of lease {old}: {exc}") from None

    def _drop_files_view(self, lease_id: str) -> None:
        """Remove an ended lease's files container, if any (the engine's errors go to the caller)."""
        try:
            self.client.containers.get(f"shellrent-{lease_id}-files").remove(force=True)
        except NotFound:
            pass

    def _drop_workspace(self, lease_id: str) -> None:
        try:
            self.workspaces.remove(lease_id)
        except (DiskError, OSError) as exc:
            log.warning("removing the workspace of lease %s: %s", lease_id, exc)

    def disk_used(self, lease_id: str, max_inodes: int) -> tuple[int, int]:
        """(bytes, inodes) a lease holds of the host's disk: its writable layer counted on the host
        (hostd.usage: deleted files still held included), and its /workspace's bytes (a filesystem
        of its own, whose inodes are not the host's; an engine volume instead is walked like the layer)."""
        try:
            attrs = self.client.api.inspect_container(f"shellrent-{lease_id}")
        except NotFound:
            return 0, 0
        except (APIError, DockerException) as exc:
            raise RuntimeError_(f"sizing lease {lease_id}: {exc}") from None
        driver = attrs.get("GraphDriver") or {}
        data = driver.get("Data") or {}
        if not data.get("UpperDir"):  # a driver with no upper directory (btrfs, zfs): the engine's figure
            return self._size_rw(lease_id), 0
        dirs = [data["UpperDir"]] + ([data.get("WorkDir")] if driver.get("Name") == "fuse-overlayfs" else [])
        if self.workspaces and self.workspaces.exists(lease_id):
            fs = os.statvfs(self.workspaces.mount(lease_id))
            ws = (fs.f_blocks - fs.f_bfree) * fs.f_frsize
        else:
            ws = 0
            dirs += [m["Source"] for m in attrs.get("Mounts") or [] if m.get("Destination") == "/workspace"]
        try:
            used, inodes = usage.walk(dirs, max_inodes)
        except OSError as exc:
            raise RuntimeError_(f"sizing lease {lease_id}: {exc}") from None
        if driver.get("Name") != "fuse-overlayfs":  # kernel overlayfs: deleted files held have no name
            init = (attrs.get("State") or {}).get("Pid") or 0  # the inspect above: not asked twice
            pids = self._pids_with(init, lease_id)
            try:
                root = os.stat(f"/proc/{init}/root").st_dev if init else None
            except OSError:
                root = None
            used += usage.held_deleted(pids, root)
        return used + ws, inodes

    def _size_rw(self, lease_id: str) -> int:
        try:
            found = self.client.api.containers(all=True, size=True, filters={"name": f"^/shellrent-{lease_id}$"})
        except (APIError, DockerException) as exc:
            raise RuntimeError_(f"sizing lease {lease_id}: {exc}") from None
        return (found[0].get("SizeRw") or 0) if found else 0

    def disk_free_gb(self) -> float:
        """Free space where the engine keeps volumes (a statvfs; the path is asked once)."""
        if self._root is None:
            self._root = self.client.info().get("DockerRootDir", "/var/lib/docker")
        try:
            return shutil.disk_usage(self._root).free / 1e9
        except OSError:
            return shutil.disk_usage("/").free / 1e9
