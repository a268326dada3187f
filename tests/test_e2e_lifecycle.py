"""Joining, admin lease commands, lease selection at login, auth limits, restarts: real processes."""
import json
import socket

import pytest

from .cluster import Cluster, wait_for

pytestmark = pytest.mark.docker


def _leases(c: Cluster) -> list[dict]:
    return json.loads(c.broker("lease", "list", "--json").stdout)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_join_refuses_bad_tokens_and_wrong_addresses(fresh_cluster):
    c = fresh_cluster
    token = c.broker("host", "invite", "pc1").stdout.decode().splitlines()[-1]
    secret, fpr = token.split(".")
    addr = f"127.0.0.1:{c.tunnel_port}"

    r = c.hostd("a", "join", addr, "garbage", check=False)
    assert r.returncode == 1 and b"malformed join token" in r.stderr

    r = c.hostd("b", "join", addr, f"{'x' * 32}.{fpr}", check=False)
    assert r.returncode == 1
    assert r.stderr.decode().strip() == "Error: join token is invalid, expired or already used"

    r = c.hostd("c", "join", f"127.0.0.1:{_free_port()}", token, check=False)
    assert r.returncode == 1 and b"cannot join the broker" in r.stderr

    c.hostd("d", "join", addr, token)
    r = c.hostd("e", "join", addr, token, check=False)
    assert r.returncode == 1 and b"already used" in r.stderr
    assert json.loads(c.hostd("d", "status", "--json").stdout)["joined"] is True
    assert json.loads(c.hostd("e", "status", "--json").stdout)["joined"] is False


def test_token_is_stored_only_as_a_hash(fresh_cluster):
    c = fresh_cluster
    secret = c.broker("host", "invite", "pc9").stdout.decode().splitlines()[-1].split(".")[0]
    assert secret.encode() not in (c.bhome / "broker.db").read_bytes()


def test_lease_create_bad_input_leaves_nothing_behind(fresh_cluster):
    c = fresh_cluster
    c.add_host("pc1")
    token = c.broker("host", "invite", "pc2").stdout.decode().splitlines()[-1]
    c.hostd("pc2", "join", f"127.0.0.1:{c.tunnel_port}", token)  # joined, never running: offline
    cases = [("bob", "pc1", "unknown renter 'bob'"), ("alice", "nope", "unknown host 'nope'"),
             ("alice", "pc2", "host 'pc2' is offline")]
    for renter, host, message in cases:
        r = c.broker("lease", "create", "--renter", renter, "--host", host, "--hours", "1", check=False)
        assert r.returncode == 1
        assert r.stderr.decode().strip() == f"Error: {message}"
    r = c.broker("lease", "create", "--renter", "alice", "--host", "pc1", "--hours", "1", "--image", "no/such:image",
                 check=False)
    assert r.returncode == 1
    assert r.stderr.decode().strip() == ("Error: image 'no/such:image' is not allowed on this host "
                                         "(allowed: shellrent-base:bookworm)")
    c.hostd("pc1", "config", "set", "images", "shellrent-base:bookworm,no/such:image")
    # listed, not here: hostd pulls it first, and no registry has it (none is reachable in tests)
    wait_for(lambda: b"pulling no/such:image failed: " in c.broker(
        "lease", "create", "--renter", "alice", "--host", "pc1", "--hours", "1", "--image", "no/such:image",
        check=False).stderr, what="hostd to allow the image, and fail to pull it")
    states = [lease["state"] for lease in _leases(c)]
    assert len(states) >= 2 and set(states) == {"failed"}
    assert c.containers() == []


def test_login_picks_the_lease(fresh_cluster):
    c = fresh_cluster
    c.add_host("pc1")
    r = c.ssh("true")
    assert r.returncode == 2
    assert r.stderr.decode().strip() == ("shellrent: renter alice has no active lease; "
                                        f"rent one with: ssh -p {c.ssh_port} ctl@127.0.0.1 rent --hours 1, "
                                        f"or ssh -p {c.ssh_port} rent@127.0.0.1 on a terminal")
    first = c.create_lease()
    assert c.ssh("hostname", check=True).stdout.decode().strip() == f"rent-{first}"
    second = c.create_lease()
    r = c.ssh("true")
    assert r.returncode == 2 and b"several active leases" in r.stderr
    for lease in (first, second):
        assert c.ssh("hostname", user=f"rent+{lease}", check=True).stdout.decode().strip() == f"rent-{lease}"
    r = c.ssh("true", user="rent+nosuchlease")
    assert r.returncode == 2
    assert r.stderr.decode().strip() == "shellrent: no lease 'nosuchlease' for renter alice"

    c.broker("lease", "stop", first)
    assert len(c.containers()) == 1
    r = c.ssh("true", user=f"rent+{first}")
    assert r.returncode == 2 and f"lease {first} is ended".encode() in r.stderr
    assert c.ssh("hostname", check=True).stdout.decode().strip() == f"rent-{second}"


def test_unknown_key_is_refused_and_repeated_failures_block_the_address(tmp_path):
    c = Cluster(tmp_path / "c", env={"BROKER_AUTH_FAIL_LIMIT": "3", "BROKER_AUTH_BLOCK_FOR": "60"})
    try:
        c.start_broker()
        stranger = c.new_key("mallory")
        r = c.ssh("true", key=stranger)
        assert r.returncode == 255 and b"Permission denied (publickey)" in r.stderr
        assert c.ssh("true").returncode == 2  # alice is known: no lease, but logged in
        for _ in range(3):
            c.ssh("true", key=stranger)
        r = c.ssh("true")
        assert r.returncode == 255
        assert b"too many failed logins" in r.stderr or b"closed" in r.stderr
    finally:
        c.close()


def test_hostd_ends_the_lease_on_time(fresh_cluster):
    c = fresh_cluster
    c.add_host("pc1")
    lease = c.create_lease(hours=4 / 3600)  # four seconds
    assert c.ssh("true", check=True).returncode == 0
    wait_for(lambda: not c.containers(), timeout=30, what="the container to stop at the lease end")
    wait_for(lambda: _leases(c)[0]["state"] == "ended", timeout=15, what="the broker to mark the lease ended")
    r = c.ssh("true", user=f"rent+{lease}")
    assert r.returncode == 2


def test_restarts_keep_the_container_and_its_processes(fresh_cluster):
    c = fresh_cluster
    c.add_host("pc1")
    c.create_lease()
    c.ssh("tmux new -d -s job 'sleep 100000'", check=True)
    pid = c.ssh("pgrep -f 'sleep 100000'", check=True).stdout.strip()

    c.kill("broker")
    c.kill("hostd-pc1")
    assert len(c.containers()) == 1
    c.start_broker()          # same tunnel port, new renter port
    c.start_hostd("pc1")      # reconciles its container by label
    assert c.ssh("pgrep -f 'sleep 100000'", check=True).stdout.strip() == pid

    c.kill("broker")          # hostd notices and reconnects by itself
    c.start_broker()
    c.wait_connected("pc1")
    wait_for(lambda: c.ssh("tmux has-session -t job").returncode == 0, timeout=30, what="ssh after reconnect")
    assert "reconnecting" in c.log("hostd-pc1")
