"""hostd's admission and sizing of a lease, table by table (hostd/starts.py, hostd/diskwatch.py)."""
import pytest

from shellrent.hostd.diskwatch import over_share
from shellrent.hostd.starts import admit, pick_cores, shares

G1, G2, G3 = "GPU-1", "GPU-2", "GPU-3"


def lease(image="shellrent-base:bookworm", gpus=(G1,)):
    return {"image": image, "gpus": list(gpus)}


@pytest.mark.parametrize("case, args, why", [
    ("fits", (lease(), "shellrent-base:bookworm", {G1, G2}, set(), False, set()), None),
    ("no GPU, checks failing", (lease(gpus=()), "shellrent-base:bookworm", set(), set(), True, set()), None),
    ("any image", (lease("x/y:z"), "*", {G1}, set(), False, set()), None),
    ("an image not allowed", (lease("evil:latest"), "shellrent-base:bookworm", {G1}, set(), False, set()),
     "image 'evil:latest' is not allowed on this host (allowed: shellrent-base:bookworm)"),
    ("a GPU not here", (lease(gpus=(G3,)), "*", {G1, G2}, set(), False, set()),
     "asked for GPUs this host does not have"),
    ("one GPU twice", (lease(gpus=(G1, G1)), "*", {G1, G2}, set(), False, set()),
     "asked for GPUs this host does not have"),
    ("withdrawn by the watchdog", (lease(), "*", {G1}, {G1}, False, set()),
     "asked for GPUs this host does not offer now"),
    ("the GPU checks fail", (lease(), "*", {G1}, set(), True, set()), "asked for GPUs this host does not offer now"),
    ("held by another lease", (lease(gpus=(G1, G2)), "*", {G1, G2}, set(), False, {G2}),
     "asked for GPUs that another lease holds"),
])
def test_admission(case, args, why):
    assert admit(*args) == why, case


INV = {"disk_per_gpu": 100, "cpu_per_gpu": 4, "ram_per_gpu": 16.5, "shared": [G1, G2]}


@pytest.mark.parametrize("gpus, pid_max, disk_gb, limits", [
    (1, 32768, 100.0, {"disk": 100_000_000_000, "pids": 4096, "cpus": 4.0, "memory": 16_500_000_000}),
    (2, 32768, 200.0, {"disk": 200_000_000_000, "pids": 8192, "cpus": 8.0, "memory": 33_000_000_000}),
    (0, 32768, 100.0, {"disk": 100_000_000_000, "pids": 4096}),  # no GPU: one GPU's disk, default CPU and RAM
    (1, 8192, 100.0, {"disk": 100_000_000_000, "pids": 2048, "cpus": 4.0, "memory": 16_500_000_000}),
])
def test_shares(gpus, pid_max, disk_gb, limits):
    assert shares(INV, gpus, pid_max) == (disk_gb, limits)


@pytest.mark.parametrize("cpus, mine, taken, cores", [
    (2, [0, 1, 2, 3], [], "0,1"),
    (2, [0, 1, 2, 3], ["0,1"], "2,3"),              # the least used first
    (1.5, [0, 1, 2, 3], ["0", "1,2"], "0,3"),  # two cores for 1.5: the least used, the lower on a tie
    (8, [0, 1], [], "0,1"),                           # never more than the machine has
    (0.1, [4, 5], ["4"], "5"),                        # at least one
    (2, [0, 1, 2], ["0,1", "1", None, ""], "0,2"),
])
def test_cores(cpus, mine, taken, cores):
    assert pick_cores(cpus, mine, taken) == cores


@pytest.mark.parametrize("used, held, share, inodes, why", [
    (150e6, 10, 200e6, 12207, None),
    (250e6, 10, 200e6, 12207, "0.25 GB of disk, over its 0.2 GB share"),
    (1e6, 50000, 200e6, 12207, "over 12207 inodes of the host's, its share"),
    (10**12, 10, 0, 1 << 62, None),                   # no share recorded: nothing to hold it to
])
def test_over_the_disk_share(used, held, share, inodes, why):
    assert over_share(int(used), held, share, share / 1e9, inodes) == why
