"""Two brokers on one database, each with its own store: a row read for update waits for the other's
transaction, a balance is spent once, a key is posted once, the schema is made once."""
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from shellrent.broker import ledger
from shellrent.broker.ledger import LedgerError

from .conftest import lease


def _alice(store, credit):
    store.add_renter("alice", "SHA256:a", "ssh-ed25519 AAAA")
    store.post(ledger.deposit_key("n1"), "deposit", ledger.deposit("alice", credit), renter="alice")


def _end_once(store, lid, held, inside=lambda: None):
    """settlement.end's shape: lock, check, conditional write, settle; whether this call ended it."""
    with store.tx():
        got = store.lease(lid, for_update=True)
        inside()
        if got["state"] != "active":
            return False
        assert store.update_lease(lid, expect_state="active", state="ended", ended=2.0)
        return store.post(ledger.settle_key(lid), "settle", ledger.settle("alice", "pc1", held, held // 2, 10),
                          lease=lid, renter="alice")


def test_a_row_read_for_update_waits_for_the_other_writer(opener):
    a, b = opener(), opener()
    _alice(a, 1_000_000)
    a.post(ledger.hold_key("ab12cd34"), "hold", ledger.hold("alice", 500_000), lease="ab12cd34", renter="alice")
    a.insert_lease(lease(state="active"))
    locked, results = threading.Event(), {}

    def first():
        results["a"] = _end_once(a, "ab12cd34", 500_000, inside=lambda: (locked.set(), time.sleep(0.5)))

    t = threading.Thread(target=first)
    t.start()
    assert locked.wait(10)
    started = time.monotonic()
    results["b"] = _end_once(b, "ab12cd34", 500_000)  # waits for a's transaction, then sees it ended
    waited = time.monotonic() - started
    t.join(10)
    assert results == {"a": True, "b": False} and waited > 0.2
    assert b.lease("ab12cd34")["state"] == "ended" and b.charged("ab12cd34") == 250_000
    assert b.unbalanced() == [] and b.balance(ledger.hold_account("alice")) == 0


def test_a_balance_is_spent_once_by_two_writers(opener):
    a, b = opener(), opener()
    _alice(a, 1_000_000)
    held = threading.Event()

    def first():  # holds 600,000 and keeps its transaction open a while
        with a.tx():
            a.post(ledger.hold_key("lease1"), "hold", ledger.hold("alice", 600_000), lease="lease1", renter="alice")
            held.set()
            time.sleep(0.5)

    t = threading.Thread(target=first)
    t.start()
    assert held.wait(10)
    with pytest.raises(LedgerError, match="not enough credit"):  # it waited for the first, then saw 400,000
        b.post(ledger.hold_key("lease2"), "hold", ledger.hold("alice", 600_000), lease="lease2", renter="alice")
    t.join(10)
    assert b.balance(ledger.renter("alice")) == 400_000 and not b.posted(ledger.hold_key("lease2"))
    stores = [opener() for _ in range(4)]
    with ThreadPoolExecutor(4) as pool:  # and at once, from four
        won = list(pool.map(lambda s: _try(s.post, ledger.hold_key(f"l{id(s)}"), "hold",
                                           ledger.hold("alice", 300_000), renter="alice"), stores))
    assert won.count(True) == 1 and b.balance(ledger.renter("alice")) == 100_000 and b.unbalanced() == []


def _try(fn, *args, **kw):
    try:
        return fn(*args, **kw)
    except LedgerError:
        return False


def test_a_key_is_posted_once_by_two_writers(opener):
    stores = [opener() for _ in range(4)]
    _alice(stores[0], 1_000_000)
    key = ledger.deposit_key("same")
    with ThreadPoolExecutor(4) as pool:
        posted = list(pool.map(lambda s: s.post(key, "deposit", ledger.deposit("alice", 5), renter="alice"), stores))
    assert posted.count(True) == 1 and stores[3].balance(ledger.renter("alice")) == 1_000_005


def test_stores_opened_at_once_make_the_schema_once(opener):
    with ThreadPoolExecutor(4) as pool:
        stores = list(pool.map(lambda _: opener(), range(4)))
    stores[0].insert_lease(lease())
    assert [s.lease("ab12cd34")["id"] for s in stores] == ["ab12cd34"] * 4


def test_a_join_token_is_used_once_by_two_writers(opener):
    stores = [opener() for _ in range(4)]
    stores[0].add_token("pc1", "h1", 1_900_000_000.0)

    def join(i):
        try:
            return stores[i].consume_token("h1", f"SHA256:k{i}", "ssh-ed25519 AAAA", 1_800_000_000.0)
        except Exception as exc:  # the losers: one line each, nothing written
            return type(exc).__name__
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(join, range(4)))
    assert got.count("pc1") == 1 and set(got) - {"pc1"} == {"BrokerError"}
    assert stores[1].host("pc1")["fingerprint"] in {f"SHA256:k{i}" for i in range(4)}


def test_a_named_lock_waits_for_the_other_writers_transaction(opener):
    a, b = opener(), opener()
    a.insert_lease(lease())  # the schema exists before either locks
    locked, times = threading.Event(), {}

    def first():
        with a.tx():
            a.lock("host:pc1")
            locked.set()
            time.sleep(0.5)
            times["a_done"] = time.monotonic()

    t = threading.Thread(target=first)
    t.start()
    assert locked.wait(10)
    with b.tx():
        b.lock("host:pc1")
        times["b_in"] = time.monotonic()
    t.join(10)
    assert times["b_in"] >= times["a_done"]


def test_two_brokers_renting_the_last_gpu_one_wins_and_the_other_pays_nothing(opener, tmp_path):
    from shellrent.broker.config import Config
    from shellrent.broker.errors import GpusTaken
    from shellrent.broker.service import Broker
    stores = [opener() for _ in range(4)]
    for name in ("alice", "bob", "carol", "dave"):
        stores[0].add_renter(name, f"SHA256:{name}", "k")
        stores[0].post(ledger.deposit_key(name), "deposit", ledger.deposit(name, 1_000_000), renter=name)
    brokers = [Broker(Config(home=tmp_path / str(i)), s) for i, s in enumerate(stores)]

    def rent(i):
        b = brokers[i]
        try:
            b.renting.open_lease(b.renting.new_lease(("alice", "bob", "carol", "dave")[i], "pc1", "img", 3600,
                                                     ["GPU-last"], "RTX 4090", 400_000))
            return "won"
        except GpusTaken as exc:
            return str(exc)
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(rent, range(4)))
    assert got.count("won") == 1 and all("nothing was charged" in g for g in got if g != "won")
    (winner,) = stores[1].leases()
    assert stores[2].busy_gpus("pc1") == {"GPU-last"}
    held = {n: stores[3].balance(ledger.hold_account(n)) for n in ("alice", "bob", "carol", "dave")}
    assert held == {n: 400_000 if n == winner["renter"] else 0 for n in held} and stores[0].unbalanced() == []


def test_the_same_renter_made_by_two_writers_at_once_is_made_once(opener):
    stores = [opener() for _ in range(4)]
    start = threading.Barrier(4)

    def make(i):
        start.wait(10)
        try:
            stores[i].add_renter("alice", f"SHA256:k{i}" if i % 2 else "SHA256:same", f"ssh-ed25519 K{i}")
            return "made"
        except Exception as exc:  # the one line a signup is told
            return str(exc)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(make, range(4)))
    assert results.count("made") == 1, results
    assert all(r == "made" or r == "renter 'alice' already exists" or "already belongs to renter" in r
               for r in results), results
    assert [r["name"] for r in stores[0].renters()] == ["alice"]
