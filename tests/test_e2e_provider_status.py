"""What a provider reads in `hostd status`: the leases running, the reason the broker refuses the
host's offer, and the label its containers carry (which the uninstall steps filter on). Real broker,
hostd and Docker."""
import json

import pytest

from .cluster import run, wait_for

pytestmark = pytest.mark.docker


def test_status_shows_the_leases_the_refusal_and_the_owner_label(fresh_cluster):
    c = fresh_cluster
    c.add_host("pc1", {"fake_gpus": "RTX 4090:24"})
    status = lambda: json.loads(c.hostd("pc1", "status", "--json").stdout)  # noqa: E731
    assert status()["inventory_error"] is None and status()["leases"] == []
    c.hostd("pc1", "config", "set", "price", "500")  # over the broker's BROKER_MAX_PRICE (100)
    wait_for(lambda: "price" in (status()["inventory_error"] or ""), what="the broker's refusal to reach hostd")
    text = c.hostd("pc1", "status").stdout.decode()
    assert "the broker refuses this host's offer: price" in text
    c.hostd("pc1", "config", "set", "price", "0.5")
    wait_for(lambda: status()["inventory_error"] is None, what="the refusal to clear")

    lid = c.create_lease("pc1")
    st = status()
    assert [(x["id"], x["state"], x["renter"]) for x in st["leases"]] == [(lid, "active", "alice")]
    text = c.hostd("pc1", "status").stdout.decode()
    assert f"lease {lid} active: renter alice, " in text
    label = st["owner_label"]
    assert text.splitlines()[-1] == f"its containers carry the label {label}"
    mine = run("docker", "ps", "-aq", "--filter", f"label={label}").stdout.decode().split()
    assert mine and sorted(mine) == sorted(c.containers())
