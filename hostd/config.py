"""hostd settings: the home directory layout, the broker pin, tunables (env: HOSTD_*)."""
import json
import os
from dataclasses import dataclass, field
from pathlib import Path


def _env(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


@dataclass
class Config:
    """Where hostd keeps its state, and its timings."""

    home: Path
    backoff_base: float = field(default_factory=lambda: _env("HOSTD_BACKOFF_BASE", 1.0))
    backoff_max: float = field(default_factory=lambda: _env("HOSTD_BACKOFF_MAX", 60.0))
    keepalive: float = field(default_factory=lambda: _env("HOSTD_KEEPALIVE", 15.0))
    disk_check: float = field(default_factory=lambda: _env("HOSTD_DISK_CHECK", 30.0))  # writable layer watch
    metrics_addr: tuple[str, int] | None = None  # /metrics and /healthz, when asked for (hostd run --metrics)
    container_check: float = field(default_factory=lambda: _env("HOSTD_CONTAINER_CHECK", 5.0))  # backstop

    @property
    def key_path(self) -> Path:
        return self.home / "hostd_ed25519_key"

    @property
    def db_path(self) -> Path:
        return self.home / "hostd.db"

    @property
    def status_path(self) -> Path:
        return self.home / "status.json"

    @property
    def power_path(self) -> Path:
        """GPU power limits to restore: {uuid: watts}, written before a limit is set."""
        return self.home / "power.json"

    @property
    def fake_gpu_state(self) -> Path:
        """What the fake GPU source reports besides its models (processes, lost GPUs, power)."""
        return self.home / "fake-gpus.json"

    @property
    def pin_path(self) -> Path:
        return self.home / "broker.json"

    def load_pin(self) -> dict | None:
        """{'addr': [host, port], 'fingerprint': 'SHA256:...', 'host': name} once joined."""
        try:
            return json.loads(self.pin_path.read_text())
        except FileNotFoundError:
            return None

    def save_pin(self, pin: dict) -> None:
        write_private(self.pin_path, json.dumps(pin))


def write_private(path: Path, text: str) -> None:
    """Write a file atomically with mode 0600."""
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
