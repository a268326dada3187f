"""GPU limits end to end: real broker, hostd, Docker and OpenSSH; the GPUs are the fake source's, whose
state file reports the real pids of real processes as NVML would (tests/test_gpuwatch.py has the
watchdog's cases one by one)."""
import json
import subprocess
import time
from pathlib import Path

import docker
import pytest

from shellrent.hostd.runtime import Runtime, pinning_errors

from .cluster import IMAGE, Cluster, run, wait_for
from .test_e2e_market import ctl, ctl_json

pytestmark = pytest.mark.docker

GPUS = {"fake_gpus": "RTX 4090:24,RTX 4090:24", "watchdog": "1s", "power_limit": "200", "price": "0.40"}


def _gpus(c: Cluster) -> dict:
    return {g["uuid"]: g for g in json.loads(c.hostd("pc1", "gpus", "--json").stdout)}


def _report(c: Cluster, **state) -> None:
    """What the fake GPUs report now, replaced whole (hostd reads it while the test writes it)."""
    tmp = c.hostd_homes["pc1"] / "fake-gpus.tmp"
    tmp.write_text(json.dumps(state))
    tmp.replace(c.hostd_homes["pc1"] / "fake-gpus.json")


def _status(c: Cluster) -> dict:
    return json.loads(c.hostd("pc1", "status", "--json").stdout)


@pytest.fixture
def rented(fresh_cluster):
    c = fresh_cluster
    c.add_host("pc1", GPUS)
    c.broker("renter", "credit", "alice", "5")
    wait_for(lambda: ctl_json(c, "offers"), what="the host's offer")
    r = ctl(c, "rent", "--hours", "1", "--gpus", "1", "--yes")
    assert r.returncode == 0, r.stderr
    c.lease = ctl_json(c, "ls")[0]["id"]
    return c


def test_watchdog_power_limit_and_gpu_check_through_a_rental(rented):
    c = rented
    gpus = _gpus(c)
    (mine,) = [u for u, g in gpus.items() if g["lease"] == c.lease]
    (free,) = [u for u in gpus if u != mine]
    # The provider's power limit holds on the rented GPU only.
    wait_for(lambda: _gpus(c)[mine]["power_limit_w"] == 200, what="the power limit")
    assert _gpus(c)[free]["power_limit_w"] == 300
    # A host process on the rented GPU is killed; the lease's own process is not.
    lease_init = docker.from_env().containers.get(f"shellrent-{c.lease}").attrs["State"]["Pid"]
    stray = subprocess.Popen(["sleep", "600"])
    try:
        _report(c, processes={mine: [lease_init, stray.pid]})
        assert stray.wait(15) == -9
        line = f'gpu-stray host=pc1 gpu={mine} lease={c.lease} pid={stray.pid} where="the host" command="sleep"'
        # the report travels hostd -> broker after the kill: the audit has it a moment later
        wait_for(lambda: line in (c.bhome / "audit.log").read_text(), what="the broker's audit of the kill")
        wait_for(lambda: _status(c)["gpu_kills"], what="hostd status to show the kill")
        assert _status(c)["gpu_kills"][0]["pid"] == stray.pid
        assert "watchdog killed pid" in c.hostd("pc1", "status").stdout.decode()
        assert c.ssh("true").returncode == 0  # the lease lives on
    finally:
        stray.kill()
        stray.wait()
    # A provider's process on the free GPU takes it off the market until it exits.
    own = subprocess.Popen(["sleep", "600"])
    try:
        _report(c, processes={free: [own.pid]})
        wait_for(lambda: ctl_json(c, "offers") == [], what="the busy GPU to leave the market")
        assert own.poll() is None
        assert f"in use by pid {own.pid}" in c.hostd("pc1", "status").stdout.decode()
    finally:
        own.kill()
        own.wait()
    wait_for(lambda: ctl_json(c, "offers"), what="the GPU to come back once free")
    # The renter's self-check: the base image has no torch, and says so.
    r = c.ssh("gpu-check")
    assert r.returncode == 2 and b"torch is not installed" in r.stderr
    # Released: the power limit the GPU had comes back.
    assert ctl(c, "release", c.lease, "--yes").returncode == 0
    wait_for(lambda: _gpus(c)[mine]["power_limit_w"] == 300, what="the power limit to be restored")
    assert json.loads((c.hostd_homes["pc1"] / "power.json").read_text()) == {}


def test_a_lost_gpu_leaves_the_market_and_a_lease_on_one_ends(rented):
    c = rented
    gpus = _gpus(c)
    (free,) = [u for u, g in gpus.items() if g["lease"] is None]
    (mine,) = [u for u, g in gpus.items() if g["lease"] == c.lease]
    _report(c, lost=[free])
    wait_for(lambda: ctl_json(c, "offers") == [], what="the lost GPU to leave the market")
    assert "GPU is lost" in c.hostd("pc1", "gpus").stdout.decode()
    r = ctl(c, "rent", "--hours", "1", "--yes")
    assert r.returncode != 0 and b"no offer" in r.stderr
    assert ctl_json(c, "ls")[0]["state"] == "active"
    _report(c, lost=[free, mine])  # the rented one falls off the bus too: its lease ends
    wait_for(lambda: ctl_json(c, "show", c.lease)["state"] in ("ended", "purged"), what="the lease to end")
    wait_for(lambda: not c.containers(), what="its container to go")
    assert "is lost: ending the lease" in c.log("hostd-pc1")


@pytest.fixture(scope="module")
def torch_image():
    """The base image with the torch stand-in, for fake GPUs that the self-check can measure."""
    tag = "shellrent-test-torch-standin:1"
    run("docker", "build", "-q", "-t", tag, "-f", "-", str(Path(__file__).parent / "torch_standin"), input=(
        f"FROM {IMAGE}\nCOPY torch /usr/local/lib/python3.11/dist-packages/torch\n"
        'ENV TORCH_STANDIN_GPUS="NVIDIA GeForce RTX 4090||24|150,NVIDIA GeForce RTX 4090||24|160"\n').encode())
    return tag


def test_the_self_check_verifies_offers_with_measured_tflops(fresh_cluster, torch_image):
    c = fresh_cluster
    c.add_host("pc1", {**GPUS, "images": f"{IMAGE},{torch_image}", "check_image": torch_image})
    try:
        wait_for(lambda: [o for o in ctl_json(c, "offers") if o["verified"]], timeout=60, what="a verified offer")
    except AssertionError:
        print(c.log("hostd-pc1")[-3000:])
        raise
    (offer,) = ctl_json(c, "offers", "verified=true tflops>=100")
    assert offer["num_gpus"] == 2 and 120 <= offer["tflops"] <= 160
    assert ctl_json(c, "offers", "tflops>=1000") == []
    assert b"TFLOPS" in ctl(c, "offers").stdout.upper()
    result = json.loads((c.hostd_homes["pc1"] / "selfcheck.json").read_text())
    assert result["error"] is None and result["image"] == torch_image and len(result["gpus"]) == 2
    assert "GPU self-check in" in c.log("hostd-pc1")
    # Done once per driver and set of GPUs: a restart does not run it again.
    c.kill("hostd-pc1", sig=15)
    c.start_hostd("pc1")
    time.sleep(2)
    assert c.log("hostd-pc1").count("GPU self-check of") == 1


def test_a_container_is_pinned_to_its_gpus_whatever_the_image_says(tmp_path):
    """The engine's record of a created container: a device request for exactly the lease's UUIDs, a
    /dev/null mount for each where the NVIDIA hook reads its list, and NVIDIA_VISIBLE_DEVICES set once,
    to them, over an image whose config says all."""
    client = docker.from_env()
    tag = "shellrent-test-visible-all:1"
    run("docker", "build", "-q", "-t", tag, "-", input=f"FROM {IMAGE}\nENV NVIDIA_VISIBLE_DEVICES=all\n".encode())
    runtime = Runtime("pintest", {"cpus": 1.0, "memory": 1 << 30, "pids": 100, "shm": 1 << 26})
    uuids = ["GPU-5a7a6b90-4a1b-9c2d-77e1-000000000301", "GPU-5a7a6b91-4a1b-9c2d-77e1-000000000301"]
    made, volumes = [], []
    try:
        for n, gpus in enumerate((uuids, [])):
            lease = {"id": f"pin{n}{time.time_ns() % 10**6}", "renter": "alice", "ends_at": time.time() + 60,
                     "image": tag, "gpus": gpus}
            volumes.append(f"shellrent-test-pin-{lease['id']}")
            container = runtime.create(lease, gpus, volumes[-1], str(tmp_path), "none", runtime.limits)
            made.append(container)
            attrs = client.api.inspect_container(container.id)
            requests = attrs["HostConfig"]["DeviceRequests"] or []
            env = [e for e in attrs["Config"]["Env"] if e.startswith("NVIDIA_VISIBLE_DEVICES=")]
            mounts = [(m["Source"], m["Target"], m["ReadOnly"]) for m in attrs["HostConfig"].get("Mounts") or []]
            if gpus:
                assert [(r["DeviceIDs"], r["Capabilities"], r["Count"]) for r in requests] == [(uuids, [["gpu"]], 0)]
                assert env == [f"NVIDIA_VISIBLE_DEVICES={','.join(uuids)}"]
                assert mounts == [("/dev/null", f"/var/run/nvidia-container-devices/{u}", True) for u in uuids]
            else:
                assert requests == [] and env == ["NVIDIA_VISIBLE_DEVICES=void"] and mounts == []
            assert pinning_errors(attrs, gpus, ",".join(gpus) or "void") is None
        # What the check refuses: a wider request, or the image's value left standing.
        attrs = client.api.inspect_container(made[0].id)
        wide = {**attrs, "HostConfig": {"DeviceRequests": [{"DeviceIDs": None, "Count": -1}]}}
        assert "device requests" in pinning_errors(wide, uuids, ",".join(uuids))
        loose = {**attrs, "Config": {"Env": ["NVIDIA_VISIBLE_DEVICES=all"]}}
        assert "NVIDIA_VISIBLE_DEVICES is ['all']" in pinning_errors(loose, uuids, ",".join(uuids))
        extra = {**attrs, "HostConfig": {**attrs["HostConfig"], "Mounts": attrs["HostConfig"]["Mounts"] + [
            {"Source": "/dev/null", "Target": "/var/run/nvidia-container-devices/all", "ReadOnly": True}]}}
        assert "device mounts" in pinning_errors(extra, uuids, ",".join(uuids))
    finally:
        for container in made:
            container.remove(force=True)
        subprocess.run(["docker", "volume", "rm", "-f", *volumes], capture_output=True)
