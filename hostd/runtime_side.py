"""The containers hostd makes besides leases (a part of hostd.runtime.Runtime): an ended lease's files,
read-only, for sftp during retention, and the throwaway GPU self-check."""
import docker
from docker.errors import APIError, DockerException, NotFound

from .disk import DiskError
from .runtime_spec import LABEL, MAIN, RuntimeError_, check_name, device_mounts, gpu_requests, labels, remove


class SideContainers:
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
                lease["image"], MAIN, name=name, labels=labels(self.owner, lease), detach=True, init=True,
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
            device_requests=gpu_requests(device_ids), mounts=device_mounts(device_ids), detach=True)
        try:
            on_created(container.id)
            container.start()
            code = container.wait(timeout=timeout)["StatusCode"]
            return code, container.logs(stdout=True, stderr=False, tail=20)
        finally:
            remove(container)
