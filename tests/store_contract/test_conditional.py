"""Read-check-write: a conditional write happens only in the state it expects, a transaction that
fails leaves nothing, and a ledger key is posted once."""
import pytest

from shellrent.broker import ledger
from shellrent.broker.errors import Changed, changed
from shellrent.broker.ledger import LedgerError

from .conftest import lease


def test_a_write_that_expects_a_state_happens_only_in_it(store):
    store.insert_lease(lease(state="starting"))
    assert store.update_lease("ab12cd34", expect_state="starting", state="active", container="c1") is True
    assert store.update_lease("ab12cd34", expect_state="starting", state="failed") is False  # moved on
    assert store.lease("ab12cd34")["state"] == "active"
    assert store.update_lease("ab12cd34", expect_state=("active", "ending"), state="ended", ended=5.0) is True
    assert store.lease("ab12cd34")["state"] == "ended" and store.lease("ab12cd34")["ended"] == 5.0
    assert store.update_lease("00000000", expect_state="ended", state="purged") is False  # no such lease
    assert store.update_lease("ab12cd34", host_ended=7.0) is True  # unconditional


def test_a_transaction_that_fails_writes_nothing(store):
    store.add_renter("alice", "SHA256:a", "ssh-ed25519 AAAA")
    store.post(ledger.deposit_key("n1"), "deposit", ledger.deposit("alice", 1_000_000), renter="alice")
    with pytest.raises(Changed):
        with store.tx():
            store.insert_lease(lease())
            store.post(ledger.hold_key("ab12cd34"), "hold", ledger.hold("alice", 500_000), lease="ab12cd34")
            got = store.lease("ab12cd34", for_update=True)
            changed(store.update_lease(got["id"], expect_state="active", state="ended"), "lease ab12cd34")
    assert store.leases() == [] and not store.posted(ledger.hold_key("ab12cd34"))
    assert store.balance(ledger.renter("alice")) == 1_000_000


def test_a_ledger_key_is_posted_once_and_balances_never_go_below_zero(store):
    store.add_renter("alice", "SHA256:a", "ssh-ed25519 AAAA")
    key = ledger.deposit_key("n1")
    assert store.post(key, "deposit", ledger.deposit("alice", 1_000_000), renter="alice") is True
    assert store.post(key, "deposit", ledger.deposit("alice", 1_000_000), renter="alice") is False
    assert store.balance(ledger.renter("alice")) == 1_000_000 and store.posted(key)
    with pytest.raises(LedgerError, match="not enough credit"):
        store.post(ledger.hold_key("x"), "hold", ledger.hold("alice", 2_000_000), lease="x", renter="alice")
    assert not store.posted(ledger.hold_key("x")) and store.balance(ledger.hold_account("alice")) == 0
    store.post(ledger.hold_key("x"), "hold", ledger.hold("alice", 400_000), lease="x", renter="alice")
    store.post(ledger.settle_key("x"), "settle", ledger.settle("alice", "pc1", 400_000, 300_000, 10), lease="x",
               renter="alice")
    assert store.charged("x") == 300_000 and store.unbalanced() == []
    assert sum(store.balances().values()) == 0
    kinds = [t["kind"] for t in store.journal("alice")]
    assert kinds == ["deposit", "hold", "settle"]
    assert all(sum(e["amount"] for e in t["entries"]) == 0 for t in store.journal())


def test_what_hosts_have_not_acknowledged(store):
    store.insert_lease(lease(id="aaaa0001", state="active", host_ends_at=1_800_003_600.0))
    store.insert_lease(lease(id="aaaa0002", state="active"))  # its end never told
    store.insert_lease(lease(id="aaaa0003", state="ended", ended=1.0))  # its container not confirmed gone
    store.insert_lease(lease(id="aaaa0004", state="ended", ended=1.0, host_ended=2.0))
    assert sorted(r["id"] for r in store.unsynced()) == ["aaaa0002", "aaaa0003"]
    store.acknowledged_end("aaaa0002", 1_800_000_000.0)  # an end that has moved since: not acknowledged
    store.acknowledged_end("aaaa0001", 1_800_003_600.0)
    assert sorted(r["id"] for r in store.unsynced("pc1")) == ["aaaa0002", "aaaa0003"]
    assert sorted(r["id"] for r in store.busy_leases()) == ["aaaa0001", "aaaa0002", "aaaa0003"]
    assert sorted(r["id"] for r in store.to_recover()) == ["aaaa0003", "aaaa0004"]  # ended, not settled
