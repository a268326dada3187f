"""A lease sees its share of the machine: nproc inside the container counts the lease's cores (cpuset
pinning), and two leases get different cores. Real broker, hostd, Docker and OpenSSH."""
import json
import os

import pytest

from ..cluster import run, wait_for

pytestmark = [pytest.mark.docker, pytest.mark.hostile]


def test_nproc_shows_the_leases_cores(fresh_cluster):
    c = fresh_cluster
    c.add_host("pc1", {"fake_gpus": "RTX 4090:24,RTX 4090:24", "cpu_per_gpu": "1"})
    c.broker("renter", "credit", "alice", "5")
    wait_for(lambda: c.ssh("offers", "--json", user="ctl", check=True).stdout != b"[]\n", what="the offer")
    leases = [json.loads(c.ssh("rent", "--hours", "1", "--yes", "--json", user="ctl", check=True).stdout)["id"]
              for _ in range(2)]
    cores = []
    for lid in leases:
        assert c.ssh("nproc", user=f"rent+{lid}", check=True).stdout.decode().strip() == "1"
        cpuset = run("docker", "inspect", "-f", "{{.HostConfig.CpusetCpus}}", f"shellrent-{lid}").stdout.decode()
        cores.append(cpuset.strip())
    if len(os.sched_getaffinity(0)) > 1:
        assert cores[0] != cores[1], cores  # spread over the machine, not stacked on core 0
