"""Renters as providers (BROKER_RENTER_HOSTS=on), with OpenSSH: a renter invites a GPU machine of its
own, its hostd joins with that token, another renter rents it, and the first moves the earnings to
its own credit; nobody else can name, invite or pay out that host. Real broker, hostd and Docker."""
import json
import time

import pytest

from .cluster import Cluster, wait_for

pytestmark = pytest.mark.docker


def test_a_renter_adds_its_own_host_and_moves_its_earnings_to_credit(tmp_path):
    c = Cluster(tmp_path, env={"BROKER_RENTER_HOSTS": "on"})
    try:
        c.start_broker()
        c.add_host("pc1")  # the operator's
        bob = c.new_key("bob")
        c.broker("renter", "add", "bob", "--key", f"{bob}.pub")
        c.broker("renter", "credit", "bob", "10")
        assert c.ssh("hosts", user="ctl", check=True).stdout.decode().startswith("you have no hosts; add one: ssh -p")

        r = c.ssh("host", "invite", "mypc", user="ctl", check=True).stdout.decode()
        assert r.startswith(f"On your GPU machine, within 24 hours, run:\n  hostd join 127.0.0.1:{c.tunnel_port} ")
        token = r.splitlines()[1].split()[-1]
        squat = c.broker("host", "invite", "mypc", check=False)  # the operator cannot hand her name to another
        assert squat.returncode == 1 and "is renter alice's own host: choose another name" in squat.stderr.decode()
        for who, name, why in ((bob, "mypc", "the host name 'mypc' is taken"),
                               (c.key, "pc1", "the host name 'pc1' is taken"),
                               (c.key, "My PC", "bad host name")):
            bad = c.ssh("host", "invite", f"'{name}'", user="ctl", key=who)
            assert bad.returncode == 2 and why in bad.stderr.decode(), bad.stderr
        c.hostd("mypc", "join", f"127.0.0.1:{c.tunnel_port}", token)
        c.hostd_homes["mypc"] = c.root / "hostd-mypc"
        c.hostd("mypc", "config", "set", "fake_gpus", "RTX 4090:24")
        c.hostd("mypc", "config", "set", "grace", "1s")
        c.start_hostd("mypc")
        hosts = lambda: json.loads(c.ssh("hosts", "--json", user="ctl", check=True).stdout)  # noqa: E731
        wait_for(lambda: hosts()[0]["online"] and hosts()[0]["gpus"] == 1, what="alice's host online with its GPU")
        assert [h["host"] for h in hosts()] == ["mypc"]  # the operator's pc1 is not hers

        lid = json.loads(c.ssh("rent", "host_id=mypc", "--hours", "1", "--yes", "--json", user="ctl", key=bob,
                               check=True).stdout)["id"]
        assert hosts()[0]["leases"] == 1
        steal = c.ssh("host", "payout", "mypc", user="ctl", key=bob)
        assert steal.returncode == 2 and steal.stderr.decode() == "ctl: you have no host 'mypc'\n"
        time.sleep(3)  # a few seconds billed
        c.ssh("release", lid, user="ctl", key=bob, check=True)
        wait_for(lambda: hosts()[0]["earned_micro"] > 0, what="the earnings")
        earned = hosts()[0]["earned_micro"]
        status = lambda: json.loads(c.hostd("mypc", "status", "--json").stdout)  # noqa: E731
        wait_for(lambda: status()["earned_micro"] == earned, what="hostd to show the earnings")
        moved = json.loads(c.ssh("host", "payout", "mypc", "--json", user="ctl", check=True).stdout)
        assert moved["moved_micro"] == earned == moved["balance_micro"]
        wait_for(lambda: status()["earned_micro"] == 0, timeout=5, what="hostd to show the payout")
        again = c.ssh("host", "payout", "mypc", user="ctl")
        assert again.returncode == 2 and "has no earnings to move" in again.stderr.decode()
        balances = json.loads(c.broker("ledger", "--json").stdout)["balances"]
        assert balances["renter:alice"] == earned and balances.get("provider:mypc", 0) == 0
        assert sum(balances.values()) == 0
        rows = {h["name"]: h for h in json.loads(c.broker("host", "list", "--json").stdout)}
        assert rows["mypc"]["owner"] == "alice" and rows["pc1"]["owner"] is None
    finally:
        c.close()


def test_renters_hosts_are_off_unless_the_operator_allows_them(fresh_cluster):
    r = fresh_cluster.ssh("host", "invite", "mypc", user="ctl")
    assert r.returncode == 2 and "this broker does not take renters' hosts" in r.stderr.decode()
    assert "mypc" not in fresh_cluster.broker("host", "list").stdout.decode()
