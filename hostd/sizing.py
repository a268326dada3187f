"""How much of the machine a lease gets by default: its pids limit as a share of the host's pid_max
(with a reserve kept for the host), and the limits used until per-GPU shares are configured."""
import os

from .procfs import pid_max

PIDS_PER_GPU = 4096  # the most a lease gets per GPU, however large the host's pid_max
PIDS_RESERVE = 4096  # kept for the host at least (a quarter of pid_max when that is more)


def pids_per_gpu(host_pid_max: int, gpus_shared: int) -> int:
    """A lease's pids limit per GPU: the host's PIDs less a reserve, shared among the GPUs it offers,
    so that every lease together cannot take the PIDs the host and its other leases need."""
    reserve = max(PIDS_RESERVE, host_pid_max // 4)
    return max(64, min(PIDS_PER_GPU, (host_pid_max - reserve) // max(1, gpus_shared)))


def default_limits() -> dict:
    """Per-lease limits until per-GPU shares are configured: most of the machine."""
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"cpus": float(os.cpu_count() or 1), "memory": int(mem * 0.8), "pids": pids_per_gpu(pid_max(), 1),
            "shm": 1 << 30}
