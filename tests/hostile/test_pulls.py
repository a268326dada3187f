"""A hostile provider during an image pull (FakeHost lists an image it does not have, so the broker
has it pull first): a flood of progress events reaches a renter as a few redraws, progress that does
not advance does not keep a rent waiting, and a renter can release a rent still waiting on its pull,
fully refunded."""
import asyncio
import json
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from ..cluster import Cluster
from .fakehost import FakeHost, inventory
from .test_provider import _json, until

pytestmark = [pytest.mark.docker, pytest.mark.hostile]

IMAGE = "example.org/big/image:1"


@pytest.fixture
async def pulling():
    """A broker with a short start timeout and one fake host listing IMAGE, not ready."""
    c = Cluster(Path(tempfile.mkdtemp(prefix="shellrent-test-")), env={"BROKER_START_TIMEOUT": "4"})
    try:
        c.start_broker()
        c.broker("renter", "credit", "alice", "10")
        token = c.broker("host", "invite", "slow").stdout.decode().splitlines()[-1]
        host = FakeHost(token, inventory(images=IMAGE, ready=[]))
        await host.connect(c.tunnel_port)
        await until(lambda: _json(c, "offers"), "the host's offer")
        yield c, host
        host.close()
    finally:
        c.close()


def _view(done: int, bytes_: int) -> dict:
    return {"type": "pull.progress", "image": IMAGE, "layers": 3, "done": done, "bytes": bytes_, "total": 1 << 30}


def _rent(c: Cluster, *opts) -> subprocess.Popen:
    return subprocess.Popen(c.ssh_cmd("ctl", *opts) + ["rent", "--hours", "1", "--image", IMAGE, "--yes"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


async def _wait_pull(host: FakeHost) -> None:
    await until(lambda: any(call["op"] == "image.pull" for call in host.calls), "the broker's image.pull")


async def test_a_flood_of_progress_is_a_few_redraws_for_the_renter(pulling):
    c, host = pulling
    rent = _rent(c, "-tt")
    await _wait_pull(host)
    for i in range(20000):  # a real pull sends a few events a second; this host, thousands
        host.send(_view(i % 2, i))
        if i % 500 == 0:
            await asyncio.sleep(0.01)
    host.pull_done.set()
    out, _ = await asyncio.to_thread(rent.communicate, timeout=60)
    assert rent.returncode == 0, out
    redraws = out.count(b"\rpulling ")
    assert 2 <= redraws < 100 and len(out) < 20_000, (redraws, len(out))
    assert b"pulled example.org/big/image:1 in " in out


async def test_progress_that_does_not_advance_does_not_keep_a_rent_waiting(pulling):
    c, host = pulling
    before = _json(c, "balance")
    rent = _rent(c)
    await _wait_pull(host)
    started = time.monotonic()
    host.send(_view(1, 1000))
    while rent.poll() is None and time.monotonic() - started < 30:
        host.send(_view(1, 1000))  # the same numbers, again and again: no sign of life
        await asyncio.sleep(0.5)
    out, err = rent.communicate(timeout=10)
    assert time.monotonic() - started < 15 and rent.returncode == 2
    assert err.decode().splitlines()[-1] == "ctl: host did not answer image.pull in 4 s", err
    assert _json(c, "balance") == before  # fully refunded


async def test_a_renter_releases_a_rent_still_waiting_on_its_pull(pulling):
    c, host = pulling
    before = _json(c, "balance")
    rent = _rent(c)
    await _wait_pull(host)
    [lease] = _json(c, "ls")
    assert lease["state"] == "starting"
    released = c.ssh("release", lease["id"], "--json", user="ctl")
    assert released.returncode == 0, released.stderr
    assert json.loads(released.stdout)["state"] == "failed"
    out, err = rent.communicate(timeout=30)
    assert rent.returncode == 2
    assert err.decode().splitlines()[-1] == (f"ctl: lease {lease['id']} was released during its image's pull: "
                                             "fully refunded"), err
    assert _json(c, "balance") == before
    assert [x["state"] for x in _json(c, "ls")] == ["failed"]
    assert not any(call["op"] == "lease.start" for call in host.calls)
