"""Uptime and down times, as reliability and billing read them."""
from shellrent.broker.store import MAX_DOWNS

from .conftest import joined_host, lease


def test_uptime_intervals_open_and_close(store):
    joined_host(store)
    store.host_up("pc1", 100.0)
    store.host_down("pc1", 200.0)
    store.host_up("pc1", 300.0)
    assert store.uptimes(0.0) == {"pc1": [(100.0, 200.0), (300.0, None)]}
    assert store.uptimes(250.0) == {"pc1": [(300.0, None)]}
    store.touch_hosts(["pc1"], 350.0)
    store.close_uptimes()  # a broker restart: the open interval ended when the host was last seen
    assert store.uptimes(0.0)["pc1"][-1] == (300.0, 350.0) and store.last_down("pc1") == 350.0


def test_down_times_are_news_once_and_capped(store, clock):
    store.insert_lease(lease(state="active"))
    assert store.set_down("ab12cd34", 10.0, None) is True
    assert store.set_down("ab12cd34", 10.0, None) is False  # said again
    assert store.set_down("ab12cd34", 10.0, 20.0) is True  # its end is news
    assert store.set_down("ab12cd34", 10.0, 25.0) is False  # an ended down does not move
    assert store.downs("ab12cd34") == [(10.0, 20.0)]
    assert store.host_downs("pc1", 0.0) == [(10.0, 20.0)]
    for n in range(MAX_DOWNS + 5):
        store.set_down("ab12cd34", 100.0 + n, 100.5 + n)
    assert len(store.downs("ab12cd34")) == MAX_DOWNS  # a host reporting more is not believed further


def test_a_ban_ends_offers_and_names_the_leases_on_it(store):
    joined_host(store)
    store.insert_lease(lease(state="active"))
    store.ban_host("pc1")
    assert store.banned() == {"pc1"} and store.joined_hosts() == []
    (on,) = store.on_banned_hosts()
    assert on["id"] == "ab12cd34" and on["gpus"] == ["GPU-1"] and on["banned_at"] > 0
