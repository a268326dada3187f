"""Containers for leases, through docker-py. This module and its parts (runtime_spec, runtime_procs,
runtime_disk, runtime_side) are the only ones that import docker.

One container per lease: labelled with the lease, the renter, its end and the hostd that owns it;
/workspace on a per-lease volume; its own bridge network; docker-init as PID 1; never privileged;
all capabilities dropped but CAPS; no-new-privileges; pids, memory, CPU and /dev/shm limits.
"""
import logging
import time

import docker
from docker.errors import APIError, DockerException, NotFound

from .disk import DiskError, Workspaces
from .firewall import bridge_name
from .runtime_disk import DiskUse
from .runtime_procs import Processes
from .runtime_side import SideContainers
from .runtime_spec import (
    LABEL, MAIN, MSGQUEUE, CAPS, RuntimeError_, check_name, container_gpus, device_mounts, epoch, gpu_requests,
    labels, pinning_errors, remove)

__all__ = ["Runtime", "RuntimeError_", "check_name", "layer_sizing", "pinning_errors"]
log = logging.getLogger("shellrent.runtime")

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


class Runtime(Processes, DiskUse, SideContainers):
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

    def say_unenforced(self) -> None:
        """Log, once at start-up, each limit this engine cannot enforce."""
        for what in self.unenforced_limits():
            log.warning("the Docker engine cannot enforce: %s", what)

    def unenforced_limits(self) -> list[str]:
        """Limits this engine says it cannot enforce (said once at start-up)."""
        info = self.client.info()
        checks = {"MemoryLimit": "memory limit", "SwapLimit": "swap limit", "CpuCfsQuota": "CPU quota",
                  "PidsLimit": "pids limit", "OomKillDisable": "OOM kill control"}
        missing = [what for key, what in checks.items() if key in info and not info[key]]
        return missing + [w for w in info.get("Warnings") or [] if "limit" in w.lower()]

    def start(self, lease: dict, device_ids: list[str], lease_dir: str, limits: dict | None = None,
              prepare=None) -> tuple[str, str]:
        """Create and start a lease's container; returns (container id, login shell). prepare(lease id)
        runs once the container runs on its network (its bridge and port exist), before the start
        returns; a RuntimeError_ from it fails the start and removes the container (hostd.caps: the
        bandwidth cap, so no renter session ever sees the lease uncapped).

        On any failure nothing of this lease is left behind but a workspace that existed before.
        """
        name = f"shellrent-{lease['id']}"
        tags = labels(self.owner, lease)
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
                    made.append(self.client.volumes.create(workspace, labels=tags))
            net = self.client.networks.create(name, driver="bridge", labels=tags,
                                              options={"com.docker.network.bridge.name": bridge_name(lease["id"])})
            made.append(net)
            container = self.create(lease, device_ids, workspace, lease_dir, net.name, lim)
            made.append(container)
            container.start()
            if prepare:
                prepare(lease["id"])
            code, _ = container.exec_run(["test", "-x", "/bin/bash"])
            return container.id, "/bin/bash" if code == 0 else "/bin/sh"
        except (APIError, DockerException, DiskError, RuntimeError_) as exc:
            for thing in reversed(made):
                remove(thing)
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
        container = self.create_sized(
            lease["image"], MAIN, lim.get("disk"), name=f"shellrent-{lease['id']}", hostname=f"rent-{lease['id']}",
            labels=labels(self.owner, lease), environment=env, working_dir="/workspace", init=True,
            volumes={workspace: {"bind": "/workspace", "mode": "rw"},
                     lease_dir: {"bind": "/etc/shellrent", "mode": "ro"}}, network=network,
            cap_drop=["ALL"], cap_add=CAPS, security_opt=["no-new-privileges"], privileged=False,
            pids_limit=lim["pids"], mem_limit=lim["memory"], nano_cpus=int(lim["cpus"] * 1e9),
            cpuset_cpus=lim.get("cpuset"), shm_size=lim["shm"], device_requests=gpu_requests(device_ids),
            mounts=device_mounts(device_ids), ulimits=[MSGQUEUE], detach=True)
        wrong = pinning_errors(container.attrs, device_ids, pinned)
        if wrong:
            remove(container)
            raise DockerException(f"the engine did not pin the container's GPUs: {wrong}")
        return container

    def create_sized(self, image: str, command: list, disk: int | None, **kw):
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

    def purge(self, lease_id: str) -> None:
        """Remove everything left of a lease: containers, network and its workspace volume."""
        self.stop(lease_id, 0)
        try:
            self._drop_files_view(lease_id)
            try:
                self.client.volumes.get(f"shellrent-ws-{lease_id}").remove(force=True)
            except NotFound:
                pass
        except (APIError, DockerException) as exc:
            raise RuntimeError_(f"purging lease {lease_id}: {exc}") from None
        if self.workspaces:
            self._drop_workspace(lease_id)

    def state(self, lease_id: str) -> dict | None:
        """{"status": running|paused|exited|..., "finished": epoch seconds or None} of a lease's
        container; None when it no longer exists."""
        try:
            st = self.client.api.inspect_container(f"shellrent-{lease_id}")["State"]
        except NotFound:
            return None
        except (APIError, DockerException) as exc:
            raise RuntimeError_(f"lease {lease_id}: {exc}") from None
        return {"status": st.get("Status"), "finished": epoch(st.get("FinishedAt"))}

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
                 "image": (c.attrs.get("Config") or {}).get("Image"), "gpus": container_gpus(c)}
                for c in found if not c.name.endswith("-files") and f"{LABEL}.selfcheck" not in c.labels]


