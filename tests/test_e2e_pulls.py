"""Image pulls end to end: a provider lists images it does not have; hostd pulls them in the
background and tells the broker which are here (offers show them as `ready`); a rent of a listed
image not here yet shows the real engine's pull progress (plain lines without a terminal, a bar with
one) and then the shell; a pull that fails is one line and a full refund, with nothing left behind;
an operator's free lease pulls too. The images come from a registry
on loopback (tests/registry.py)."""
import json
import tempfile
from pathlib import Path

import pytest

from .cluster import IMAGE, run, wait_for
from .registry import Registry
from .test_e2e_market import FAST, ctl, ctl_json

pytestmark = pytest.mark.docker


@pytest.fixture
def registry():
    r = Registry(Path(tempfile.mkdtemp(prefix="shellrent-registry-")))
    try:
        r.start()
        yield r
    finally:
        r.close()


def _status(c) -> dict:
    return json.loads(c.hostd("pc1", "status", "--json").stdout)


def _here(image: str) -> bool:
    return run("docker", "image", "inspect", image, check=False).returncode == 0


def test_a_listed_image_is_pulled_at_the_rent_with_its_progress_then_the_shell(fresh_cluster, registry):
    c = fresh_cluster
    first, second, third = registry.push("1"), registry.push("2", megabytes=3), registry.push("3", megabytes=1)
    missing = f"{registry.address}/pulltest:nosuch"
    registry.stop()  # hostd's background pulls fail: the images are not ready
    c.add_host("pc1", {**FAST, "images": f"{IMAGE},{first},{second},{third},{missing}"})
    c.broker("renter", "credit", "alice", "5")
    wait_for(lambda: len(_status(c)["images"]["failed"]) == 4, what="background pulls to fail")
    assert "connection refused" in _status(c)["images"]["failed"][first]
    [offer] = ctl_json(c, "offers")
    assert offer["ready"] == [IMAGE]  # what is here
    assert not _here(first) and not _here(second)

    registry.start()
    r = ctl(c, "rent", "--hours", "1", "--image", first, "--yes", "--json")
    assert r.returncode == 0, r.stderr
    lease = json.loads(r.stdout)  # stdout stays the command's output; the progress went to stderr
    lines = r.stderr.decode().splitlines()
    assert lines[0] == f"pulling {first}: 0/0 layers, 0.0/0.0 MB", lines
    assert lines[-3] == f"pulling {first}: 3/3 layers, 7.4/7.4 MB", lines  # 1.1 MB busybox + 6 MiB
    assert lines[-2].startswith(f"pulled {first} in ") and lines[-1] == "starting the container on pc1...", lines
    assert len(lines) < 12  # a few plain lines, not a stream of redraws
    out = c.ssh("ls -l /blob; cat /etc/shellrent/lease", user=f"rent+{lease['id']}", check=True).stdout.decode()
    assert " 6291456 " in out and f"SHELLRENT_LEASE_ID={lease['id']}" in out
    wait_for(lambda: first not in _status(c)["images"]["failed"], what="the pulled image to clear its failure")
    assert ctl(c, "release", lease["id"]).returncode == 0

    # with a terminal: one bar redrawn in place
    r = c.ssh("rent", "--hours", "1", "--image", second, "--yes", user="ctl", opts=["-tt"])
    assert r.returncode == 0, r.stdout
    text = r.stdout.decode()
    assert f"\rpulling {second} [" in text and "] 3/3 layers, 4.2/4.2 MB\r\n" in text, text
    assert text.count("\r\n") < 8 and text.count("\rpulling ") >= 2
    lid = text.split("lease ")[1].split()[0]
    assert c.ssh("ls /blob", user=f"rent+{lid}", check=True).stdout == b"/blob\n"
    assert ctl(c, "release", lid).returncode == 0
    balance = ctl_json(c, "balance")

    # a listed image the registry does not have: one line, a full refund, nothing left behind
    r = ctl(c, "rent", "--hours", "1", "--image", missing, "--yes")
    assert r.returncode == 2
    error = r.stderr.decode().splitlines()[-1]
    assert error == (f"ctl: pulling {missing} failed: manifest for {missing} not found: "
                     "manifest unknown: manifest unknown"), r.stderr
    assert ctl_json(c, "balance") == balance
    [failed] = [x for x in ctl_json(c, "ls") if x["state"] not in ("ended", "purged")]
    assert failed["state"] == "failed"
    assert f"shellrent-{failed['id']}" not in run("docker", "ps", "-a", "--format", "{{.Names}}").stdout.decode()

    # the operator's free lease (no GPU) of a listed image not here yet: pulled first too
    made = json.loads(c.broker("lease", "create", "--renter", "alice", "--host", "pc1", "--hours", "1",
                               "--image", third, "--json").stdout)
    assert made["state"] == "active" and _here(third)
