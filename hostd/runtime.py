"""Containers for leases, through docker-py. The only module that imports docker.

One container per lease: labelled with the lease, the renter, its end and the hostd that owns it;
/workspace on a per-lease volume; its own bridge network; docker-init as PID 1; never privileged;
all capabilities dropped but CAPS; no-new-privileges; pids, memory, CPU and /dev/shm limits.
"""
import calendar
import hashlib
import logging
import os
import shutil
import signal as signals
import time

import docker
from docker.errors import APIError, DockerException, NotFound

from . import procfs, usage
from .disk import DiskError, Workspaces
from .firewall import bridge_name

log = logging.getLogger("shellrent.runtime")

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


def layer_sizing(client=None) -> str | None:
    """Why this engine cannot size a container's writable layer (the `size` storage option), or None
    when it can: probed with a container made from a local image and removed at once (hostd doctor)."""
    own = client is None
    try:
        client = client or docker.from_env(timeout=30)
        tags = [t for image in client.images.list() for t in image.tags]
        if not tags:
            return "not probed: no image on this host yet"
        client.containers.create(tags[0], ["true"], storage_opt={"size": "1G"}, network_mode="none",
                                 labels={f"{LABEL}.probe": "1"}).remove(force=True)
        return None
    except APIError as exc:
        return exc.explanation or str(exc)
    except DockerException as exc:
        return f"not probed: {exc}"
    finally:
        if own and client is not None:
            client.close()


class RuntimeError_(Exception):
    """A container could not be made or controlled; str() is the reason."""


class Runtime:
    """Docker for one hostd, identified by owner (its key fingerprint's short form)."""

    def __init__(self, owner: str, limits: dict, workspaces: Workspaces | None = None):
        try:
            self.client = docker.from_env(timeout=60)  # per socket read: no call blocks a thread for ever
            self.client.ping()
        except DockerException as exc:
            raise RuntimeError_(f"cannot reach the Docker engine: {exc}") from None
        self.owner = owner
        self.limits = limits
        self.workspaces = workspaces  # sized /workspace filesystems; None: plain engine volumes
        self._root: str | None = None
        self.layer_sized: bool | None = None  # whether the engine sizes writable layers (learnt at the first create)

    def unenforced_limits(self) -> list[str]:
        """Limits this engine says it cannot enforce (said once at start-up)."""
        info = self.client.info()
        checks = {"MemoryLimit": "memory limit", "SwapLimit": "swap limit", "CpuCfsQuota": "CPU quota",
                  "PidsLimit": "pids limit", "OomKillDisable": "OOM kill control"}
        missing = [what for key, what in checks.items() if key in info and not info[key]]
        return missing + [w for w in info.get("Warnings") or [] if "limit" in w.lower()]

    def _labels(self, lease: dict) -> dict:
        return {LABEL: "1", f"{LABEL}.hostd": self.owner, f"{LABEL}.lease": lease["id"],
                f"{LABEL}.renter": lease["renter"], f"{LABEL}.ends_at": str(int(lease["ends_at"])),
                f"{LABEL}.gpus": ",".join(lease.get("gpus") or [])}

    def start(self, lease: dict, device_ids: list[str], lease_dir: str, limits: dict | None = None) -> tuple[str, str]:
        """Create and start a lease's container; returns (container id, login shell).

        On any failure nothing of this lease is left behind but a workspace that existed before.
        """
        name = f"shellrent-{lease['id']}"
        labels = self._labels(lease)
        if not self.has_image(lease["image"]):
            raise RuntimeError_(f"image {lease['image']!r} is not present on this host")
        made = []
        lim = {**self.limits, **(limits or {})}
        new_ws = self.workspaces is not None and not self.workspaces.exists(lease["id"])
        try:
            if self.workspaces:
                workspace = self.workspaces.make(lease["id"], int(lim["disk"]))
            else:
                workspace = f"shellrent-ws-{lease['id']}"
                try:
                    self.client.volumes.get(workspace)
                except NotFound:
                    made.append(self.client.volumes.create(workspace, labels=labels))
            net = self.client.networks.create(name, driver="bridge", labels=labels,
                                              options={"com.docker.network.bridge.name": bridge_name(lease["id"])})
            made.append(net)
            container = self.create(lease, device_ids, workspace, lease_dir, net.name, lim)
            made.append(container)
            container.start()
            code, _ = container.exec_run(["test", "-x", "/bin/bash"])
            return container.id, "/bin/bash" if code == 0 else "/bin/sh"
        except (APIError, DockerException, DiskError) as exc:
            for thing in reversed(made):
                self._remove(thing)
            if new_ws:
                self._drop_workspace(lease["id"])
            raise RuntimeError_(f"starting the container failed: {getattr(exc, 'explanation', None) or exc}") from None

    def has_image(self, image: str) -> bool:
        """Whether the image is here; a name the engine refuses is not (RuntimeError_ when the engine
        cannot answer)."""
        try:
            self.client.images.get(image)
            return True
        except NotFound:  # ImageNotFound among them
            return False
        except APIError as exc:
            if exc.status_code == 400:  # a reference the engine cannot parse
                return False
            raise RuntimeError_(f"the Docker engine: {exc.explanation or exc}") from None
        except DockerException as exc:
            raise RuntimeError_(f"cannot reach the Docker engine: {exc}") from None

    def pull(self, image: str, on_event) -> None:
        """Pull an image, calling on_event with each of the engine's progress events (hostd.pulls).
        A client of its own: the engine's pull holds its connection until it is done."""
        repo, tag = docker.utils.parse_repository_tag(image)
        client = docker.from_env()
        try:
            for event in client.api.pull(repo, tag=tag or "latest", stream=True, decode=True):
                on_event(event)
        finally:
            client.close()

    def create(self, lease: dict, device_ids: list[str], workspace: str, lease_dir: str, network: str, lim: dict):
        """Create (not start) a lease's container, and check that the engine pinned it to exactly the
        lease's GPUs: a device request for those UUIDs only (it makes Docker run the NVIDIA hook), one
        /dev/null mount per UUID under DEVICE_MOUNTS (where the hook takes the list from when the
        provider's toolkit ignores NVIDIA_VISIBLE_DEVICES, as `hostd doctor` requires), and
        NVIDIA_VISIBLE_DEVICES set to them over whatever the image's own config says ("void", no
        GPU, for a lease without GPUs)."""
        pinned = ",".join(lease.get("gpus") or []) or "void"
        env = {"SHELLRENT_LEASE_ID": lease["id"], "SHELLRENT_ENDS_AT": str(int(lease["ends_at"])),
               "NVIDIA_VISIBLE_DEVICES": pinned}
        container = self._create_sized(
            lease["image"], MAIN, lim.get("disk"), name=f"shellrent-{lease['id']}", hostname=f"rent-{lease['id']}",
            labels=self._labels(lease), environment=env, working_dir="/workspace", init=True,
            volumes={workspace: {"bind": "/workspace", "mode": "rw"},
                     lease_dir: {"bind": "/etc/shellrent", "mode": "ro"}}, network=network,
            cap_drop=["ALL"], cap_add=CAPS, security_opt=["no-new-privileges"], privileged=False,
            pids_limit=lim["pids"], mem_limit=lim["memory"], nano_cpus=int(lim["cpus"] * 1e9),
            cpuset_cpus=lim.get("cpuset"), shm_size=lim["shm"], device_requests=self._gpus(device_ids),
            mounts=self._device_mounts(device_ids), ulimits=[MSGQUEUE], detach=True)
        wrong = pinning_errors(container.attrs, device_ids, pinned)
        if wrong:
            self._remove(container)
            raise DockerException(f"the engine did not pin the container's GPUs: {wrong}")
        return container

    def _create_sized(self, image: str, command: list, disk: int | None, **kw):
        """containers.create with the writable layer sized to the lease's disk share where the engine
        can (the `size` storage option: overlay2 on xfs with pquota, btrfs, zfs). Where it cannot, the
        engine's reason is logged once and the layer is only counted (Agent.watch_disk)."""
        if self.layer_sized is False or not disk:
            return self.client.containers.create(image, command, **kw)
        try:
            container = self.client.containers.create(image, command, storage_opt={"size": str(int(disk))}, **kw)
        except APIError as exc:
            container = self.client.containers.create(image, command, **kw)  # a refusal of its own is raised
            self.layer_sized = False
            log.warning("disk shares: the engine cannot size a lease's writable layer (%s): it is counted "
                        "and a lease over its share is frozen", exc.explanation or exc)
            return container
        if self.layer_sized is None:
            log.info("disk shares: the engine sizes each lease's writable layer to its share (ENOSPC past it)")
        self.layer_sized = True
        return container

    @staticmethod
    def _gpus(uuids: list[str]) -> list:
        return [docker.types.DeviceRequest(device_ids=uuids, capabilities=[["gpu"]])] if uuids else []

    @staticmethod
    def _device_mounts(uuids: list[str]) -> list:
        return [docker.types.Mount(f"{DEVICE_MOUNTS}/{u}", "/dev/null", type="bind", read_only=True) for u in uuids]

    @staticmethod
    def _remove(thing) -> None:
        try:
            if isinstance(thing, docker.models.networks.Network):
                thing.remove()
            else:
                thing.remove(force=True)
        except (APIError, NotFound) as exc:
            log.warning("cleanup of %s failed: %s", thing, exc)

    def stop(self, lease_id: str, grace: float) -> None:
        """Kill and remove a lease's container (the engine's SIGKILL, nothing run inside it) and its
        network; its workspace volume stays."""
        name = f"shellrent-{lease_id}"
        try:
            try:
                container = self.client.containers.get(name)
                if grace:
                    container.stop(timeout=int(grace))
                container.remove(force=True)
            except NotFound:
                pass
            try:
                self.client.networks.get(name).remove()
            except NotFound:
                pass
        except (APIError, DockerException) as exc:
            raise RuntimeError_(f"stopping lease {lease_id}: {exc}") from None

    def freeze(self, lease_id: str) -> None:
        """Freeze every process of a lease's container (the engine's pause: the cgroup freezer)."""
        try:
            self.client.api.pause(f"shellrent-{lease_id}")
        except NotFound:
            pass
        except (APIError, DockerException) as exc:
            raise RuntimeError_(f"freezing lease {lease_id}: {exc}") from None

    def signal_all(self, lease_id: str, signal: str = "TERM") -> int:
        """Send signal to every process of the lease's container but its init; returns how many.

        Done from outside, by pid namespace: no program inside the container (the renter owns
        those files) takes part."""
        init, pids = self._processes(lease_id)
        sig, sent = getattr(signals, f"SIG{signal}"), 0
        for pid in pids:
            if pid != init:
                try:
                    os.kill(pid, sig)
                    sent += 1
                except OSError:
                    continue  # gone meanwhile
        return sent

    def _processes(self, lease_id: str) -> tuple[int, list[int]]:
        """(host pid of the container's init, host pids of every process in its pid namespace)."""
        try:
            init = self.client.api.inspect_container(f"shellrent-{lease_id}")["State"]["Pid"]
        except NotFound:
            return 0, []
        except (APIError, DockerException) as exc:
            raise RuntimeError_(f"lease {lease_id}: {exc}") from None
        return init, self._pids_with(init, lease_id)

    @staticmethod
    def _pids_with(init: int, lease_id: str) -> list[int]:
        """Host pids of every process in the pid namespace of init (none when init is 0)."""
        try:
            return procfs.pid_namespace(init)
        except OSError as exc:
            raise RuntimeError_(f"lease {lease_id}: cannot read its pid namespace: {exc}") from None

    def broadcast(self, lease_id: str, message: str) -> None:
        """Write message on every terminal in the lease's container (sessions and tmux panes).

        This runs the container's own programs, which the renter controls: detached, so it never
        waits on them."""
        try:
            self.client.containers.get(f"shellrent-{lease_id}").exec_run(
                ["/bin/sh", "-c", BROADCAST, "sh", message], detach=True)
        except (NotFound, APIError, DockerException) as exc:
            log.info("warning lease %s: %s", lease_id, exc)

    def files_container(self, lease: dict) -> str:
        """A small container with the ended lease's workspace read-only, for sftp during retention."""
        name = f"shellrent-{lease['id']}-files"
        try:
            return self.client.containers.get(name).id
        except NotFound:
            pass
        try:
            workspace = self._workspace(lease["id"])
            container = self.client.containers.run(
                lease["image"], MAIN, name=name, labels=self._labels(lease), detach=True, init=True,
                working_dir="/workspace", volumes={workspace: {"bind": "/workspace", "mode": "ro"}},
                environment={"NVIDIA_VISIBLE_DEVICES": "void"},
                network_mode="none", cap_drop=["ALL"], security_opt=["no-new-privileges"], pids_limit=64,
                mem_limit=256 << 20)
        except (APIError, DockerException, DiskError) as exc:
            raise RuntimeError_(f"serving the files of lease {lease['id']}: {exc}") from None
        return container.id

    def run_check(self, image: str, device_ids: list[str], uuids: list[str], script: str,
                  on_created=lambda cid: None, timeout: float = 600) -> tuple[int, bytes]:
        """Run the GPU self-check script in a throwaway container on these GPUs; (exit status, stdout).
        on_created(container id) is called before it starts (the watchdog allows it on free GPUs)."""
        name = check_name(self.owner)
        try:
            self.client.containers.get(name).remove(force=True)  # left by a crash
        except NotFound:
            pass
        if not self.has_image(image):
            raise RuntimeError_(f"image {image!r} is not present on this host")
        container = self.client.containers.create(
            image, ["python3", "/etc/shellrent/gpu-check.py", "--json"], name=name,
            labels={LABEL: "1", f"{LABEL}.hostd": self.owner, f"{LABEL}.selfcheck": "1"},
            environment={"NVIDIA_VISIBLE_DEVICES": ",".join(uuids) or "void", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"},
            volumes={script: {"bind": "/etc/shellrent/gpu-check.py", "mode": "ro"}}, network_mode="none",
            cap_drop=["ALL"], security_opt=["no-new-privileges"], pids_limit=512, mem_limit=self.limits["memory"],
            log_config=docker.types.LogConfig(type="json-file", config={"max-size": "1m", "max-file": "1"}),
            device_requests=self._gpus(device_ids), mounts=self._device_mounts(device_ids), detach=True)
        try:
            on_created(container.id)
            container.start()
            code = container.wait(timeout=timeout)["StatusCode"]
            return code, container.logs(stdout=True, stderr=False, tail=20)
        finally:
            self._remove(container)

    def _workspace(self, lease_id: str) -> str:
        """What to mount as /workspace: the sized filesystem (mounted again if need be) or the volume."""
        if self.workspaces and self.workspaces.exists(lease_id):
            return self.workspaces.mount(lease_id)
        return f"shellrent-ws-{lease_id}"

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

    def purge(self, lease_id: str) -> None:
        """Remove everything left of a lease: containers, network and its workspace volume."""
        self.stop(lease_id, 0)
        try:
            try:
                self.client.containers.get(f"shellrent-{lease_id}-files").remove(force=True)
            except NotFound:
                pass
            try:
                self.client.volumes.get(f"shellrent-ws-{lease_id}").remove(force=True)
            except NotFound:
                pass
        except (APIError, DockerException) as exc:
            raise RuntimeError_(f"purging lease {lease_id}: {exc}") from None
        if self.workspaces:
            self._drop_workspace(lease_id)

    def disk_free_gb(self) -> float:
        """Free space where the engine keeps volumes (a statvfs; the path is asked once)."""
        if self._root is None:
            self._root = self.client.info().get("DockerRootDir", "/var/lib/docker")
        try:
            return shutil.disk_usage(self._root).free / 1e9
        except OSError:
            return shutil.disk_usage("/").free / 1e9

    def state(self, lease_id: str) -> dict | None:
        """{"status": running|paused|exited|..., "finished": epoch seconds or None} of a lease's
        container; None when it no longer exists."""
        try:
            st = self.client.api.inspect_container(f"shellrent-{lease_id}")["State"]
        except NotFound:
            return None
        except (APIError, DockerException) as exc:
            raise RuntimeError_(f"lease {lease_id}: {exc}") from None
        return {"status": st.get("Status"), "finished": _epoch(st.get("FinishedAt"))}

    def revive(self, lease_id: str) -> None:
        """Run a lease's stopped or paused container again, with the same /workspace."""
        try:
            self._workspace(lease_id)  # mounted again after a reboot
            container = self.client.containers.get(f"shellrent-{lease_id}")
            if container.status == "paused":
                container.unpause()
            elif container.status != "running":
                container.start()
        except (APIError, DockerException, DiskError) as exc:
            raise RuntimeError_(f"lease {lease_id}: {getattr(exc, 'explanation', None) or exc}") from None

    def follow_events(self, wake) -> None:
        """Call wake() whenever one of this hostd's containers dies, stops, pauses or is removed;
        blocks for ever (run it in a thread of its own)."""
        client = docker.from_env(timeout=300)
        filters = {"type": "container", "label": f"{LABEL}.hostd={self.owner}",
                   "event": ["die", "stop", "kill", "pause", "destroy", "oom"]}
        while True:
            try:
                for _ in client.events(decode=True, filters=filters):
                    wake()
            except Exception as exc:  # the stream broke (engine restart, idle timeout): open it again
                log.debug("engine events: %s", exc)
            time.sleep(1)
            wake()

    def pid(self, container_id: str) -> int:
        """Host PID of the container's init (for entering its network namespace)."""
        try:
            pid = self.client.api.inspect_container(container_id)["State"]["Pid"]
        except (APIError, DockerException) as exc:
            raise RuntimeError_(f"container {container_id[:12]}: {exc}") from None
        if not pid:
            raise RuntimeError_(f"container {container_id[:12]} is not running")
        return pid

    def containers(self) -> list[dict]:
        """This hostd's containers: id, lease, ends_at, status, and what a hostd that lost its database
        needs to adopt one: renter, image and GPUs (from the labels, else NVIDIA_VISIBLE_DEVICES)."""
        found = self.client.containers.list(all=True, filters={"label": f"{LABEL}.hostd={self.owner}"})
        return [{"id": c.id, "lease": c.labels.get(f"{LABEL}.lease"), "status": c.status,
                 "ends_at": float(c.labels.get(f"{LABEL}.ends_at", 0)), "renter": c.labels.get(f"{LABEL}.renter"),
                 "image": (c.attrs.get("Config") or {}).get("Image"), "gpus": _container_gpus(c)}
                for c in found if not c.name.endswith("-files") and f"{LABEL}.selfcheck" not in c.labels]


def _container_gpus(container) -> list[str]:
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


def _epoch(text: str | None) -> float | None:
    """Seconds since the epoch from the engine's RFC 3339 times ('0001-01-01T00:00:00Z': never)."""
    if not text or text.startswith("0001"):
        return None
    try:
        head, _, frac = text.rstrip("Z").partition(".")
        return calendar.timegm(time.strptime(head, "%Y-%m-%dT%H:%M:%S")) + float(f"0.{frac or 0}")
    except ValueError:
        return None
