"""Single-use codes (store.sql_codes): a signup code makes one renter, a voucher credits once, on
every backend and across two stores of one database racing for the same code."""
import threading

import pytest

from shellrent.broker import ledger
from shellrent.broker.errors import BrokerError


def test_a_signup_code_makes_one_renter_and_is_kept_when_the_renter_is_refused(store):
    store.add_signup_codes(["h1"])
    store.add_renter("alice", "SHA256:a", "ssh-ed25519 A")
    with pytest.raises(BrokerError, match="already exists"):
        store.signup_with_code("h1", "alice", "SHA256:b", "ssh-ed25519 B")
    store.signup_with_code("h1", "bob", "SHA256:b", "ssh-ed25519 B")  # the refusal above left it unused
    assert store.renter_by_key("SHA256:b") == "bob"
    with pytest.raises(BrokerError, match="used already"):
        store.signup_with_code("h1", "carol", "SHA256:c", "ssh-ed25519 C")
    with pytest.raises(BrokerError, match="unknown signup code"):
        store.signup_with_code("nope", "carol", "SHA256:c", "ssh-ed25519 C")
    assert [r["name"] for r in store.renters()] == ["alice", "bob"]


def test_a_voucher_credits_once_and_never_after_it_expires(store, clock):
    store.add_renter("alice", "SHA256:a", "ssh-ed25519 A")
    store.add_vouchers(["v1", "v2"], 5_000_000, clock.t + 60)
    assert store.redeem_voucher("v1", "alice", clock.t) == 5_000_000
    with pytest.raises(BrokerError, match="redeemed already"):
        store.redeem_voucher("v1", "alice", clock.t)
    with pytest.raises(BrokerError, match="expired"):
        store.redeem_voucher("v2", "alice", clock.t + 61)
    with pytest.raises(BrokerError, match="unknown voucher"):
        store.redeem_voucher("v3", "alice", clock.t)
    assert store.balance(ledger.renter("alice")) == 5_000_000
    assert store.balance(ledger.VOUCHERS) == -5_000_000 and store.unbalanced() == []
    (v1, v2) = store.vouchers()
    assert (v1["renter"], v2["renter"], v2["redeemed"]) == ("alice", None, None)


def test_two_stores_racing_for_one_voucher_credit_it_once(opener, clock):
    first = opener()
    first.add_renter("alice", "SHA256:a", "ssh-ed25519 A")
    first.add_vouchers(["v1"], 1_000_000, None)
    stores, results = [opener() for _ in range(4)], []
    start = threading.Barrier(4)

    def redeem(s):
        start.wait()
        try:
            results.append(s.redeem_voucher("v1", "alice", clock.t))
        except BrokerError as exc:
            results.append(str(exc))
    threads = [threading.Thread(target=redeem, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(map(str, results)) == ["1000000"] + ["that voucher was redeemed already"] * 3
    assert first.balance(ledger.renter("alice")) == 1_000_000
