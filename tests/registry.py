"""A container registry of the test's own on loopback (Debian's docker-registry, the Distribution
project's server), holding small images built here from a static busybox and a random layer: the one
way to pull a real image on a machine that reaches no public registry. Docker treats 127.0.0.0/8
registries as plain HTTP ones by default."""
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ('FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox", "--install", "-s", "/bin"]\n'
              'COPY blob /blob\n')


def _binary(name: str) -> str:
    found = shutil.which(name) or next((str(p) for p in (ROOT / ".tools").glob(f"usr/bin/{name}")), None)
    if not found:
        pytest.fail(f"{name} not found: scripts/test.sh installs it")  # fail, never skip
    return found


class Registry:
    def __init__(self, root: Path):
        self.root = root
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        (root / "config.yml").write_text(
            f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
            f"http:\n  addr: {self.address}\n")
        self.proc: subprocess.Popen | None = None
        self.pushed: list[str] = []

    def start(self) -> None:
        with open(self.root / "log", "ab") as log:
            self.proc = subprocess.Popen([_binary("docker-registry"), "serve", str(self.root / "config.yml")],
                                         stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"the registry did not listen: {(self.root / 'log').read_text()}")

    def stop(self) -> None:
        if self.proc:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def push(self, tag: str, megabytes: int = 6) -> str:
        """Build a three-layer image (busybox, its links, `megabytes` of random data), push it here and
        remove it from the engine: the next use of it pulls it."""
        image = f"{self.address}/pulltest:{tag}"
        ctx = self.root / f"build-{tag}"
        ctx.mkdir()
        shutil.copy(_binary("busybox"), ctx / "busybox")
        (ctx / "blob").write_bytes(secrets.token_bytes(megabytes << 20))
        (ctx / "Dockerfile").write_text(DOCKERFILE)
        for argv in (["docker", "build", "-q", "-t", image, str(ctx)], ["docker", "push", "-q", image],
                     ["docker", "rmi", image]):
            subprocess.run(argv, check=True, capture_output=True)
        self.pushed.append(image)
        return image

    def close(self) -> None:
        self.stop()
        for image in self.pushed:
            subprocess.run(["docker", "rmi", "-f", image], capture_output=True)
