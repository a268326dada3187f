"""Records come back typed: a lease's GPUs a list, a host's inventory a dict, whatever the backend."""
import pytest

from shellrent.broker.errors import BrokerError, KeyTaken, NotFound

from .conftest import joined_host, lease


def test_a_lease_reads_back_as_written_with_its_gpus_a_list(store):
    store.add_renter("alice", "SHA256:a", "ssh-ed25519 AAAA")
    store.insert_lease(lease(gpus=["GPU-1", "GPU-2"]))
    got = store.lease("ab12cd34")
    assert got["gpus"] == ["GPU-1", "GPU-2"] and got["state"] == "pending" and got["held"] == 500_000
    assert [r["gpus"] for r in store.leases("alice")] == [["GPU-1", "GPU-2"]]
    assert store.live_leases()[0]["id"] == "ab12cd34" and store.live_count("alice") == 1
    assert store.busy_leases()[0]["gpus"] == ["GPU-1", "GPU-2"]
    with pytest.raises(NotFound):
        store.lease("00000000")


def test_a_host_inventory_reads_back_as_a_dict_and_none_when_refused(store):
    assert joined_host(store) == "pc1"
    inv = {"gpus": [{"uuid": "GPU-1"}], "price": 500_000, "window": "always"}
    store.set_inventory("pc1", inv)
    assert store.host("pc1")["inventory"] == inv and store.joined_hosts()[0]["inventory"] == inv
    assert store.host_by_key("SHA256:host1")["inventory"] == inv
    store.set_inventory("pc1", None, "price too high")
    host = store.host("pc1")
    assert host["inventory"] is None and host["inventory_error"] == "price too high"
    assert [h["name"] for h in store.hosts()] == ["pc1"]


def test_a_join_token_is_used_once_and_a_key_pins_one_host(store):
    store.add_token("pc1", "h1", 1_800_003_600.0)
    with pytest.raises(NotFound):
        store.host("pc1")  # invited, not joined
    assert store.consume_token("h1", "SHA256:k", "ssh-ed25519 AAAA", 1_800_000_000.0) == "pc1"
    with pytest.raises(BrokerError, match="already used"):
        store.consume_token("h1", "SHA256:k2", "ssh-ed25519 AAAA", 1_800_000_000.0)
    store.add_token("pc2", "h2", 1_800_000_001.0)
    with pytest.raises(BrokerError, match="expired"):
        store.consume_token("h2", "SHA256:k3", "ssh-ed25519 AAAA", 1_800_000_002.0)
    store.add_token("pc3", "h3", 1_800_003_600.0)
    with pytest.raises(BrokerError, match="already registered"):
        store.consume_token("h3", "SHA256:k", "ssh-ed25519 AAAA", 1_800_000_000.0)
    with pytest.raises(BrokerError, match="already joined"):
        store.add_token("pc1", "h4", 1_800_003_600.0)


def test_renters_and_keys(store):
    store.add_renter("alice", "SHA256:a", "ssh-ed25519 AAAA")
    assert store.renter_by_key("SHA256:a") == "alice" and store.renter_by_key("SHA256:x") is None
    with pytest.raises(KeyTaken):
        store.add_renter("bob", "SHA256:a", "ssh-ed25519 AAAA")
    store.add_key("alice", "SHA256:b", "ssh-ed25519 BBBB")
    assert [k["fingerprint"] for k in store.renter_keys("alice")] == ["SHA256:a", "SHA256:b"]
    store.remove_key("alice", "SHA256:a")
    with pytest.raises(BrokerError, match="only key"):
        store.remove_key("alice", "SHA256:b")
    assert [(r["name"], r["keys"]) for r in store.renters()] == [("alice", 1)]
    store.set_renter_tmux("alice", True)
    assert store.renter_config("alice") == {"tmux": True}
    with pytest.raises(NotFound):
        store.require_renter("bob")


def test_the_backend_implements_the_whole_interface(store):
    from shellrent.broker.store import api
    names = {n for part in (api.RenterStore, api.HostStore, api.LeaseStore, api.LedgerStore, api.Store)
             for n in vars(part) if not n.startswith("_")}
    assert len(names) > 50
    assert sorted(n for n in names if not callable(getattr(store, n, None))) == []
