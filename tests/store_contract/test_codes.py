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


def test_a_renters_own_host_never_pays_out_what_a_later_correction_takes_back(store):
    """Its earnings become credit: a refund after the payout would make credit from nothing."""
    from shellrent.broker import ledger as L
    store.add_renter("alice", "SHA256:a", "ssh-ed25519 A")
    store.invite_own_host("mypc", "t1", 2e9, "alice", 20)
    store.add_token("pc1", "t2", 2e9)  # the operator's
    with pytest.raises(BrokerError, match="renter alice's own host"):
        store.add_token("mypc", "t3", 2e9)
    with pytest.raises(BrokerError, match="is taken"):
        store.invite_own_host("pc1", "t4", 2e9, "alice", 20)
    for host in ("mypc", "pc1"):
        store.post(f"earn:{host}", "settle", [(L.WORLD, -1_000_000), (L.provider(host), 1_000_000)])
    assert store.pay_out("mypc", "alice") == 1_000_000
    with pytest.raises(BrokerError, match="you have no host 'pc1'"):
        store.pay_out("pc1", "alice")
    with pytest.raises(L.LedgerError, match="not enough credit"):
        store.post("adjust:x", "refund", [(L.provider("mypc"), -500_000), (L.renter("alice"), 500_000)])
    store.post("adjust:y", "refund", [(L.provider("pc1"), -1_500_000), (L.WORLD, 1_500_000)])  # the operator's own
    assert store.balance(L.provider("mypc")) == 0 and store.balance(L.provider("pc1")) == -500_000


def test_a_host_is_lost_only_once_every_connected_interval_is_closed_before_the_cutoff(store):
    store.host_up("pc1", 100.0)
    store.host_down("pc1", 200.0)
    store.host_up("pc2", 100.0)  # still connected
    store.host_up("pc3", 100.0)
    store.host_down("pc3", 900.0)  # went too recently
    assert store.lost_hosts(["pc1", "pc2", "pc3", "pc4"], 500.0) == {"pc1": 200.0}
    store.host_up("pc1", 600.0)  # back
    assert store.lost_hosts(["pc1"], 500.0) == {} and store.lost_hosts([], 500.0) == {}


def test_an_expired_signup_code_makes_no_renter(store, clock):
    store.add_signup_codes(["h1"], expires=clock.t + 60)
    store.add_signup_codes(["h2"], expires=clock.t - 1)
    with pytest.raises(BrokerError, match="that signup code has expired"):
        store.signup_with_code("h2", "alice", "SHA256:a", "ssh-ed25519 A")
    clock.t += 61
    with pytest.raises(BrokerError, match="that signup code has expired"):
        store.signup_with_code("h1", "alice", "SHA256:a", "ssh-ed25519 A")
    assert store.renters() == []
