"""Ledger invariants under random sequences of rent / extend / release / expire / host offline,
driven through the broker's own store-thread operations on a real SQLite file."""
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from shellrent.broker import ledger
from shellrent.broker.config import Config
from shellrent.broker.errors import BrokerError, GpusTaken
from shellrent.broker.service import Broker
from shellrent.broker.store import Store

PRICE = 400_000  # 0.40 credits per GPU-hour


def _world(tmp: Path) -> Broker:
    store = Store(tmp / "b.db")
    for name in ("alice", "bob"):
        store.add_renter(name, f"SHA256:{name}", "k")
        store.post(f"dep:{name}", "deposit", ledger.deposit(name, 3_000_000), renter=name)
    b = Broker(Config(home=tmp, fee_percent=10, offline_grace=300), store)
    return b


def _check(b: Broker) -> None:
    assert not b.store.unbalanced()
    balances = b.store.balances()
    assert sum(balances.values()) == 0
    for account, value in balances.items():
        if account.startswith(("renter:", "hold:")):
            assert value >= 0, account
    for name in ("alice", "bob"):
        live = sum(l["held"] for l in b.store.leases(name, live_only=True))
        assert balances.get(f"hold:{name}", 0) == live


def _rent(b: Broker, renter: str, hours: int, now: float, gpu: str | None = None) -> str | None:
    """A lease on a GPU of its own (or on gpu), active from now; None when the broker refused it."""
    gpu = gpu or f"GPU-{len(b.store.leases()) + 1}"
    lease = b.renting.new_lease(renter, "pc1", "img", hours * 3600, [gpu], "RTX", PRICE)
    lease.update(created=now, ends_at=now + hours * 3600)
    try:
        b.renting.open_lease(lease)
    except BrokerError:
        assert not b.store.leases(renter) or lease["id"] not in [l["id"] for l in b.store.leases(renter)]
        return None
    b.store.update_lease(lease["id"], state="active", started=now)
    return lease["id"]


steps = st.lists(st.tuples(st.sampled_from(["rent", "extend", "release", "expire", "offline", "fail", "again"]),
                           st.sampled_from(["alice", "bob"]), st.integers(1, 5)), max_size=25)


@settings(max_examples=60, deadline=None)
@given(steps)
def test_invariants_hold_under_any_sequence(seq):
    with tempfile.TemporaryDirectory() as tmp:
        b = _world(Path(tmp))
        now = 1_000_000.0
        b.store.host_up("pc1", now - 10)
        live: list[str] = []
        for action, renter, n in seq:
            now += 600
            if action == "rent":
                lid = _rent(b, renter, n, now)
                if lid:
                    live.append(lid)
            elif action == "fail":
                lid = _rent(b, renter, n, now)
                if lid:
                    b.store.update_lease(lid, state="starting")
                    b.renting.fail(lid, "the host refused")
            elif action == "offline":
                b.store.host_down("pc1", now)
                now += n * 200
                b.store.host_up("pc1", now)
            elif live:
                lid = live[n % len(live)]
                if action == "extend":
                    try:
                        b.extending.add_time(lid, n * 600)
                    except BrokerError:
                        pass
                elif action in ("release", "expire"):
                    lease = b.store.lease(lid)
                    b.settlement.end(lid, now if action == "release" else lease["ends_at"])
                    live.remove(lid)
                elif action == "again":  # the same end reported twice, e.g. after a restart
                    before = b.store.balances()
                    lease = b.store.lease(lid)
                    if lease["state"] == "ended":
                        assert b.settlement.end(lid, now) is None
                        assert b.store.balances() == before
            _check(b)
        b.close()


def test_one_full_lease_life(tmp_path):
    b = _world(tmp_path)
    b.store.host_up("pc1", 0)
    lid = _rent(b, "alice", 2, 1000.0)          # holds 0.80
    b.extending.add_time(lid, 3600)                      # holds 0.40 more
    b.store.host_down("pc1", 2000)              # 10 minutes offline: refunded
    b.store.host_up("pc1", 2600)
    assert b.settlement.end(lid, 1000 + 3600) == 333_333  # 3000 s billed of 3600
    assert b.settlement.end(lid, 1000 + 3600) is None     # settles once
    bal = b.store.balances()
    assert bal["renter:alice"] == 3_000_000 - 333_333
    assert bal["provider:pc1"] == 300_000 and bal["platform:fees"] == 33_333
    assert bal.get("hold:alice", 0) == 0
    kinds = [t["kind"] for t in b.store.journal("alice")]
    assert kinds == ["deposit", "hold", "hold", "settle"]
    b.close()


def test_an_extension_refused_after_the_lease_settled_is_not_refunded_twice(tmp_path):
    b = _world(tmp_path)
    b.store.host_up("pc1", 0)
    lid = _rent(b, "alice", 1, 1000.0)
    added, n = b.extending.add_time(lid, 3600)           # the host is asked; meanwhile the lease is released
    b.settlement.end(lid, 1600)
    after_settle = b.store.balances()
    b.extending.undo_time(lid, 3600, added, n)          # ...and then the host refuses the extension
    assert b.store.balances() == after_settle
    assert [t["kind"] for t in b.store.journal("alice")] == ["deposit", "hold", "hold", "settle"]
    lid2 = _rent(b, "alice", 1, 2000.0)         # while a refusal in time is undone once
    added, n = b.extending.add_time(lid2, 3600)
    b.extending.undo_time(lid2, 3600, added, n)
    b.extending.undo_time(lid2, 3600, added, n)
    assert b.store.balance("hold:alice") == b.store.lease(lid2)["held"] == 400_000
    b.close()


def test_a_gpu_a_busy_lease_holds_is_not_taken_twice_and_nothing_is_charged(tmp_path):
    b = _world(tmp_path)
    first = _rent(b, "alice", 1, 1000.0, "GPU-1")
    before = b.store.balances()
    assert _rent(b, "bob", 1, 1001.0, "GPU-1") is None  # alice's: refused, no lease, no hold
    assert b.store.balances() == before and [l["id"] for l in b.store.leases()] == [first]
    lease = b.renting.new_lease("bob", "pc1", "img", 3600, ["GPU-1"], "RTX", PRICE)
    with pytest.raises(GpusTaken, match="just rented by someone else; nothing was charged"):
        b.renting.open_lease(lease)
    b.settlement.end(first, 1500)
    assert _rent(b, "bob", 1, 1600.0, "GPU-1") is None  # ended; its host has not said the container is gone
    b.store.update_lease(first, host_ended=1600)
    assert _rent(b, "bob", 1, 1700.0, "GPU-1") is not None
    b.close()


def test_cannot_rent_beyond_credit(tmp_path):
    b = _world(tmp_path)
    assert _rent(b, "alice", 100, 0.0) is None   # 40 credits > 3
    assert b.store.leases("alice") == []          # no half-made lease
    assert b.store.balance("renter:alice") == 3_000_000
    b.close()
