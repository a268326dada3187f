"""The GPU watchdog and power limits, driven through the GPU source interface: the fake source reports
the real pids of real processes, in real containers and on the host, as NVML would."""
import json
import subprocess
import time

import docker
import pytest

from shellrent.hostd import settings as settings_mod
from shellrent.hostd.gpus import FakeSource
from shellrent.hostd.gpuwatch import GpuWatch, containers_of
from shellrent.hostd.store import Store

from .cluster import IMAGE
from .conftest import _require_docker


class Rig:
    def __init__(self, tmp_path):
        self.state = tmp_path / "fake-gpus.json"
        self.source = FakeSource("RTX 4090:24,RTX 4090:24,A100:80", "watch", self.state)
        self.u0, self.u1, self.u2 = (g["uuid"] for g in self.source.gpus())
        self.store = Store(tmp_path / "hostd.db")
        self.settings = settings_mod.defaults()
        self.power_path = tmp_path / "power.json"
        self.watch = self.new_watch()

    def new_watch(self):
        return GpuWatch(lambda: self.source, self.store, lambda: self.settings, self.power_path)

    def report(self, **state):
        old = json.loads(self.state.read_text()) if self.state.exists() else {}
        self.state.write_text(json.dumps({**old, **state}))

    def lease(self, lid, gpus, container="", state="active"):
        self.store.put({"id": lid, "renter": "alice", "image": IMAGE, "ends_at": time.time() + 3600,
                        "state": state, "container": container, "gpus": json.dumps(gpus)})

    def power(self, uuid):
        return self.source.power_limit(uuid)


@pytest.fixture
def rig(tmp_path):
    return Rig(tmp_path)


@pytest.fixture
def engine():
    _require_docker()
    client = docker.from_env()
    made = []

    def run(name):
        c = client.containers.run(IMAGE, ["sleep", "600"], name=f"shellrent-test-gpuwatch-{name}-{time.time_ns()}",
                                  detach=True, init=True, labels={"shellrent.test": "gpuwatch"})
        made.append(c)
        c.reload()
        return c

    yield run
    for c in made:
        c.remove(force=True)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _child(container) -> int:
    """Host pid of the container's `sleep` (its init is docker-init)."""
    init = container.attrs["State"]["Pid"]
    for _ in range(50):
        kids = _read(f"/proc/{init}/task/{init}/children").split()
        if kids:
            return int(kids[0])
        time.sleep(0.1)
    raise AssertionError("the container's process did not start")


def _gone(pid: int, timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if _read(f"/proc/{pid}/stat").split(")")[1].split()[0] == "Z":
                return True
        except (FileNotFoundError, ProcessLookupError):  # reaped before, or between open and read
            return True
        time.sleep(0.05)
    return False


@pytest.mark.docker
def test_strays_on_a_rented_gpu_are_killed_and_reported_and_the_leases_own_process_is_not(rig, engine):
    mine, other = engine("lease"), engine("stray")
    mine_pid, stray_pid = _child(mine), _child(other)
    host = subprocess.Popen(["sleep", "600"])
    try:
        assert containers_of(mine_pid) == {mine.id} and containers_of(host.pid) == set()
        rig.lease("lease1", [rig.u0], container=mine.id)
        rig.report(processes={rig.u0: [mine_pid, stray_pid, host.pid]})
        result = rig.watch.pass_once()
        killed = {k["pid"]: k for k in result["killed"]}
        assert set(killed) == {stray_pid, host.pid}
        assert killed[stray_pid]["where"] == f"container {other.id[:12]}" and killed[stray_pid]["lease"] == "lease1"
        assert killed[host.pid]["where"] == "the host" and killed[host.pid]["type"] == "gpu.stray"
        assert killed[stray_pid]["command"] == "sleep" and killed[stray_pid]["gpu"] == rig.u0
        assert host.wait(5) == -9 and _gone(stray_pid)
        assert not _gone(mine_pid, timeout=0.5)
        mine.reload()
        assert mine.status == "running"
        assert rig.watch.pass_once()["killed"] == []  # the source still lists gone pids: nothing more to do
    finally:
        host.kill()
        host.wait()


@pytest.mark.docker
def test_on_a_free_gpu_a_providers_process_withdraws_it_and_a_lease_that_reached_it_is_killed(rig, engine):
    mine, checker = engine("lease"), engine("check")
    mine_pid, check_pid = _child(mine), _child(checker)
    host = subprocess.Popen(["sleep", "600"])
    try:
        rig.lease("lease1", [rig.u0], container=mine.id)
        rig.watch.checking.add(checker.id)  # hostd's self-check may use a free GPU
        rig.report(processes={rig.u1: [host.pid, check_pid], rig.u2: [mine_pid]})
        result = rig.watch.pass_once()
        assert [k["pid"] for k in result["killed"]] == [mine_pid]
        assert result["killed"][0]["where"] == "lease lease1's container" and result["killed"][0]["lease"] is None
        assert set(result["withdrawn"]) == {rig.u1} and str(host.pid) in result["withdrawn"][rig.u1]
        assert any(f"pid {host.pid}" in p and "withdrawn from offers" in p for p in result["problems"])
        assert host.poll() is None and not _gone(check_pid, timeout=0.3)
        host.kill()
        host.wait()
        assert rig.watch.pass_once()["withdrawn"] == {}  # free again: offered again
    finally:
        host.kill()
        host.wait()


def test_gpus_not_shared_are_the_providers_and_lost_ones_are_withdrawn(rig):
    host = subprocess.Popen(["sleep", "600"])
    try:
        rig.settings["gpus"] = "0,1"
        rig.report(processes={rig.u2: [host.pid]}, lost=[rig.u1])
        result = rig.watch.pass_once()
        assert result["killed"] == [] and host.poll() is None
        assert set(result["withdrawn"]) == {rig.u1} and "GPU is lost" in result["withdrawn"][rig.u1]
    finally:
        host.kill()
        host.wait()


def test_a_starting_lease_is_left_alone_until_its_container_exists(rig):
    host = subprocess.Popen(["sleep", "600"])
    try:
        rig.lease("lease1", [rig.u0], state="starting")
        rig.report(processes={rig.u0: [host.pid]})
        assert rig.watch.pass_once()["killed"] == [] and host.poll() is None
    finally:
        host.kill()
        host.wait()


def test_the_power_limit_holds_while_rented_and_the_old_one_comes_back(rig):
    rig.settings["power_limit"] = 200
    rig.source.set_power_limit(rig.u0, 280)  # the provider's own setting before the rental
    rig.lease("lease1", [rig.u0, rig.u1])
    assert rig.watch.pass_once()["problems"] == []
    assert (rig.power(rig.u0), rig.power(rig.u1), rig.power(rig.u2)) == (200, 200, 300)
    assert json.loads(rig.power_path.read_text()) == {rig.u0: 280, rig.u1: 300}
    assert oct(rig.power_path.stat().st_mode & 0o777) == "0o600"
    rig.store.update("lease1", state="ended")
    rig.watch.pass_once()
    assert (rig.power(rig.u0), rig.power(rig.u1)) == (280, 300)
    assert json.loads(rig.power_path.read_text()) == {}


def test_a_limit_set_before_a_crash_is_restored_by_the_next_hostd(rig):
    rig.settings["power_limit"] = 150
    rig.lease("lease1", [rig.u2])
    rig.watch.pass_once()
    assert rig.power(rig.u2) == 150
    rig.store.update("lease1", state="lost")  # hostd died; at restart the lease is over
    rig.new_watch().pass_once()
    assert rig.power(rig.u2) == 300 and json.loads(rig.power_path.read_text()) == {}


def test_power_limit_zero_restores_and_refusals_are_reported_not_fatal(rig):
    rig.settings["power_limit"] = 200
    rig.lease("lease1", [rig.u0])
    rig.watch.pass_once()
    rig.settings["power_limit"] = 0  # the provider turned it off mid-rental
    rig.watch.pass_once()
    assert rig.power(rig.u0) == 300
    rig.settings["power_limit"] = 200
    rig.report(refuse_power=True)
    result = rig.watch.pass_once()
    assert rig.power(rig.u0) == 300
    assert result["problems"] == [f"power limit not applied: GPU {rig.u0}: setting the power limit: "
                                  "Insufficient Permissions (run hostd as root)"]
    rig.settings["power_limit"] = 900
    rig.report(refuse_power=False)
    assert "outside its 100-450 W" in rig.watch.pass_once()["problems"][0]
    assert rig.power(rig.u0) == 300


def test_a_pid_the_gpu_no_longer_lists_when_pinned_is_never_killed(rig):
    """NVML listed a pid; by the time hostd pinned it, the GPU no longer lists it (it may be a new
    process on a reused pid): it is left alone."""
    host = subprocess.Popen(["sleep", "600"])
    try:
        rig.lease("lease1", [rig.u0], container="f" * 64)
        listed = iter([[host.pid], []])
        real = rig.source.processes
        rig.source.processes = lambda uuid: next(listed) if uuid == rig.u0 else real(uuid)
        assert rig.watch.pass_once()["killed"] == [] and host.poll() is None
    finally:
        host.kill()
        host.wait()


@pytest.mark.parametrize("content", ["{not json", '{"GPU-x": "300"}', "[1, 2]"])
def test_an_unreadable_power_file_is_reported_and_never_overwritten(rig, content):
    rig.settings["power_limit"] = 200
    rig.lease("lease1", [rig.u0])
    rig.power_path.write_text(content)
    result = rig.watch.pass_once()
    assert any("cannot be read" in p or "is not {uuid: watts}" in p for p in result["problems"])
    assert rig.power(rig.u0) == 300 and rig.power_path.read_text() == content


def test_strays_are_still_killed_and_reported_when_the_power_file_cannot_be_written(rig):
    rig.settings["power_limit"] = 200
    rig.power_path.mkdir()  # not a file: every write fails
    host = subprocess.Popen(["sleep", "600"])
    try:
        rig.lease("lease1", [rig.u0], container="f" * 64)
        rig.report(processes={rig.u0: [host.pid]})
        result = rig.watch.pass_once()
        assert [k["pid"] for k in result["killed"]] == [host.pid] and host.wait(5) == -9
        assert any("cannot be read" in p or "cannot write" in p for p in result["problems"])
        assert rig.power(rig.u0) == 300
    finally:
        host.kill()
        host.wait()


def test_garbage_in_the_fake_state_file_is_no_crash(rig):
    rig.state.write_text(json.dumps({"processes": [], "lost": 5, "power": {"x": "y"}, "refuse_power": "yes"}))
    assert rig.watch.pass_once()["problems"] == []
    rig.state.write_text(json.dumps({"processes": {rig.u0: ["1", None, 2**80]}}))
    assert rig.watch.pass_once()["killed"] == []
