import pytest

from shellrent.broker import offers
from shellrent.broker.errors import BrokerError


def inv(gpus, price=400_000, **kw):
    base = {"gpus": [{"index": i, "uuid": f"U{i}", "name": n, "memory_gb": m} for i, (n, m) in enumerate(gpus)],
            "cpu_per_gpu": 4, "ram_per_gpu": 16, "disk_per_gpu": 100, "price": price, "window": "always",
            "paused": False, "geolocation": "DE", "cuda_version": 12.4, "driver_version": "550.1"}
    base["shared"] = [g["uuid"] for g in base["gpus"]]
    base.update(kw)
    return base


HOSTS = [{"name": "big", "inventory": inv([("H100", 80)] * 2, price=2_000_000)},
         {"name": "cheap", "inventory": inv([("RTX 3060", 12)], price=100_000)},
         {"name": "mid", "inventory": inv([("RTX 4090", 24)] * 2)},
         {"name": "paused", "inventory": inv([("RTX 3060", 12)], price=1, paused=True)},
         {"name": "away", "inventory": inv([("RTX 3060", 12)], price=1)}]
ONLINE = {"big", "cheap", "mid", "paused"}


def test_offers_come_from_online_unpaused_free_gpus():
    live = [{"host": "mid", "gpus": ["U0"]}]
    got = {o["id"]: o for o in offers.build(HOSTS, ONLINE, live, {}, 0)}
    assert set(got) == {"big/H100", "cheap/RTX_3060", "mid/RTX_4090"}
    assert got["mid/RTX_4090"]["num_gpus"] == 1 and got["mid/RTX_4090"]["gpus"] == ["U1"]
    assert got["big/H100"]["dph"] == 4.0 and got["big/H100"]["cpu_cores"] == 8


def test_scheduler_prefers_the_smallest_gpu_that_fits_then_price_then_reliability():
    all_ = offers.build(HOSTS, ONLINE, [], {"cheap": 0.95}, 0)
    assert offers.choose(all_, "", 1)["host_id"] == "cheap"
    assert offers.choose(all_, "gpu_ram>=20", 1)["host_id"] == "mid"
    assert offers.choose(all_, "gpu_ram>=20", 2)["host_id"] == "mid"
    assert offers.choose(all_, "gpu_ram>=40", 1)["host_id"] == "big"
    twins = offers.build([HOSTS[2], {"name": "mid2", "inventory": HOSTS[2]["inventory"]}], {"mid", "mid2"}, [],
                         {"mid": 0.91, "mid2": 0.99}, 0)
    assert offers.choose(twins, "", 1)["host_id"] == "mid2"


def test_no_match_is_a_clear_error():
    with pytest.raises(BrokerError, match="no offer matches 'gpu_ram>=200' with 1 free GPU"):
        offers.choose(offers.build(HOSTS, ONLINE, [], {}, 0), "gpu_ram>=200", 1)


def test_window_hides_a_host_outside_it():
    day = 86400 * 10
    h = [{"name": "night", "inventory": inv([("RTX 3060", 12)], window="22:00-08:00")}]
    assert offers.build(h, {"night"}, [], {}, day + 12 * 3600) == []
    assert offers.build(h, {"night"}, [], {}, day + 23 * 3600)[0]["window_end"] == day + 86400 + 8 * 3600


def test_a_memo_between_builds_changes_nothing_but_the_work():
    memo = {}
    night = {"name": "night", "inventory": inv([("RTX 3060", 12)], window="22:00-08:00")}
    hosts, online, day = HOSTS + [night], ONLINE | {"night"}, 86400 * 10
    steps = [([], {}, day + 23 * 3600),                                   # all fresh
             ([], {}, day + 23 * 3600),                                   # all from the memo
             ([{"host": "mid", "gpus": ["U0"]}], {}, day + 23 * 3600),  # a lease takes a GPU
             ([], {"cheap": 0.5}, day + 23 * 3600),                       # reliability falls
             ([], {}, day + 12 * 3600)]                                   # the window closes
    for live, rel, now in steps:
        assert offers.build(hosts, online, live, rel, now, memo) == offers.build(hosts, online, live, rel, now)
    hosts[1] = {"name": "cheap", "inventory": inv([("RTX 3060", 12)], price=99)}  # a new inventory
    assert [o["price"] for o in offers.build(hosts, online, [], {}, 0, memo) if o["host_id"] == "cheap"] == [99]
    offers.build(hosts, online - {"big"}, [], {}, 0, memo)
    assert "big" not in memo and "away" not in memo  # hosts that left are forgotten


def test_an_offer_is_verified_when_every_gpu_passed_the_self_check_and_shows_the_slowest():
    hosts = [{"name": "a", "inventory": inv([("H100", 80)] * 2, checked={"U0": 700.0, "U1": 650.5})},
             {"name": "b", "inventory": inv([("H100", 80)] * 2, checked={"U0": 700.0})},
             {"name": "c", "inventory": inv([("H100", 80)])}]
    got = {o["host_id"]: o for o in offers.build(hosts, {"a", "b", "c"}, [], {}, 0)}
    assert (got["a"]["verified"], got["a"]["tflops"]) == (True, 650.5)
    assert (got["b"]["verified"], got["b"]["tflops"]) == (False, 0.0)
    assert (got["c"]["verified"], got["c"]["tflops"]) == (False, 0.0)
    live = [{"host": "b", "gpus": ["U1"]}]  # the unchecked GPU rented: what is left is verified
    left = {o["host_id"]: o for o in offers.build(hosts, {"a", "b", "c"}, live, {}, 0)}
    assert (left["b"]["verified"], left["b"]["tflops"]) == (True, 700.0)
    assert offers.choose(list(got.values()), "verified=true", 1)["host_id"] == "a"
    assert offers.choose(list(left.values()), "verified=true tflops>=660", 1)["host_id"] == "b"
    with pytest.raises(BrokerError):
        offers.choose(list(got.values()), "verified=true tflops>=660", 1)


def test_offers_show_the_bandwidth_a_new_lease_gets_in_mbit_and_none_when_uncapped():
    hosts = [{"name": "capped", "inventory": inv([("RTX 4090", 24)] * 4, bandwidth=40_000_000)},
             {"name": "shared", "inventory": inv([("RTX 4090", 24)] * 4, bandwidth_total=300_000_000)},
             {"name": "free", "inventory": inv([("RTX 4090", 24)] * 4)}]
    live = [{"host": "shared", "gpus": ["U0"]}, {"host": "shared", "gpus": ["U1"]}]
    got = {o["host_id"]: o for o in offers.build(hosts, {"capped", "shared", "free"}, live, {}, 0)}
    assert (got["capped"]["inet_down"], got["capped"]["inet_up"]) == (40.0, 40.0)
    assert got["shared"]["inet_down"] == 100.0  # a third of the total: two leases run there already
    assert (got["free"]["inet_down"], got["free"]["inet_up"]) == (None, None)
    from shellrent.broker import query
    assert {o["host_id"] for o in query.select(list(got.values()), query.parse("inet_down>=100"))} == \
        {"shared", "free"}  # no cap is as fast as any
    assert [o["host_id"] for o in query.select(list(got.values()), [], query.parse_order("inet_down-"))] == \
        ["free", "shared", "capped"]
