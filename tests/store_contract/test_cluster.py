"""The brokers of one database and who drives each host (store.sql_cluster), on the database's clock."""
from .conftest import joined_host


def _register(store, bid, peer="127.0.0.1:1"):
    return store.register_broker(bid, "127.0.0.1:22", "127.0.0.1:23", peer, f"ssh-ed25519 KEY{bid}")


def test_a_broker_is_alive_while_it_beats_on_the_databases_clock(store):
    at = _register(store, "b-1")
    assert abs(at - store.db_time()) < 5
    (row,) = store.brokers(10)
    assert (row["id"], row["peer"], row["peer_key"], row["draining"]) == ("b-1", "127.0.0.1:1", "ssh-ed25519 KEYb-1", 0)
    now, owned = store.beat("b-1", 10, draining=True)
    assert owned == set() and now >= at and store.brokers(10)[0]["draining"] == 1
    assert store.brokers(-1) == []  # not heard from within -1 s: every row is stale by then
    store.drop_broker("b-1")
    assert store.brokers(10) == []


def test_epochs_only_grow_and_a_former_owner_cannot_disown_what_another_took(store):
    joined_host(store)
    _register(store, "b-1")
    _register(store, "b-2")
    e1 = store.own_host("pc1", "b-1", 10)
    e2 = store.own_host("pc1", "b-2", 10)  # the host moved
    assert e2 > e1
    owner = store.host_owner("pc1")
    assert (owner["broker"], owner["epoch"], owner["peer_key"]) == ("b-2", e2, "ssh-ed25519 KEYb-2")
    assert store.disown_host("pc1", "b-1", e1) is False  # its old tunnel closing changes nothing
    assert store.host_owner("pc1")["broker"] == "b-2"
    assert store.beat("b-1", 10, hosts=["pc1"])[1] == set() and store.beat("b-2", 10, hosts=["pc1"])[1] == {"pc1"}
    assert store.online_hosts() == {"pc1"} and store.owned_elsewhere("b-1") == {"pc1"}
    assert {h: (o["broker"], o["peer"]) for h, o in store.owners().items()} == {"pc1": ("b-2", "127.0.0.1:1")}
    assert store.disown_host("pc1", "b-2", e2) is True
    assert store.host_owner("pc1") is None and store.online_hosts() == set()
    assert store.own_host("pc1", "b-1", 10) > e2  # a row is never reset: no epoch is given twice


def test_a_dead_brokers_hosts_are_closed_once_and_others_hosts_are_left_alone(store):
    for name in ("pc1", "pc2"):
        joined_host(store, name, fingerprint=f"SHA256:{name}")
        store.host_up(name, 100.0)
        store.touch_hosts([name], 150.0)
    _register(store, "b-1")
    _register(store, "b-2")
    store.own_host("pc1", "b-1", -1)  # b-1 stopped renewing it: expired
    store.own_host("pc2", "b-2", 10)
    assert store.host_owner("pc1") is None
    assert store.expire_owners() == ["pc1"]
    assert store.expire_owners() == []  # done once, by whichever broker ran it first
    ups = store.uptimes(0.0)
    assert ups["pc1"] == [(100.0, 150.0)] and ups["pc2"] == [(100.0, None)]
    store.close_uptimes("b-1")  # b-1 restarts: pc2 is b-2's, its interval stays open
    assert store.uptimes(0.0)["pc2"] == [(100.0, None)] and store.host_owner("pc2")["broker"] == "b-2"
    store.drop_broker("b-2")
    assert store.host_owner("pc2") is None


def test_a_lapsed_row_is_taken_back_by_the_broker_that_still_holds_the_tunnel_unless_another_took_it(store):
    joined_host(store)
    store.host_up("pc1", 100.0)
    store.touch_hosts(["pc1"], 150.0)
    _register(store, "b-1")
    _register(store, "b-2")
    e1 = store.own_host("pc1", "b-1", -1)  # lapsed: the database was away longer than the ttl
    assert store.reclaim_host("pc1", "b-1", 10) == e1 + 1 and store.host_owner("pc1")["broker"] == "b-1"
    store.own_host("pc1", "b-1", -1)
    assert store.expire_owners() == ["pc1"]  # another broker noticed first: the uptime closed
    e3 = store.reclaim_host("pc1", "b-1", 10)
    assert e3 is not None and store.uptimes(0.0)["pc1"][-1][1] is None  # and opened again
    store.own_host("pc1", "b-2", 10)  # the host moved
    assert store.reclaim_host("pc1", "b-1", 10) is None and store.host_owner("pc1")["broker"] == "b-2"


def test_a_heartbeat_releases_a_row_whose_tunnel_is_not_here_and_closes_its_uptime(store):
    joined_host(store)
    store.host_up("pc1", 100.0)
    store.touch_hosts(["pc1"], 150.0)
    _register(store, "b-1")
    store.own_host("pc1", "b-1", 10)  # its disconnect was never recorded (the database blinked)
    assert store.beat("b-1", 10, hosts=[])[1] == set()
    assert store.host_owner("pc1") is None and store.uptimes(0.0)["pc1"] == [(100.0, 150.0)]
    e = store.own_host("pc1", "b-1", 10)
    store.host_up("pc1", 160.0)
    assert store.disown_host("pc1", "b-1", e, at=170.0) is True  # the uptime ends with the row, at once
    assert store.uptimes(0.0)["pc1"][-1] == (160.0, 170.0)
    store.host_up("pc1", 200.0)
    assert store.disown_host("pc1", "b-1", e, at=210.0) is False and store.uptimes(0.0)["pc1"][-1] == (200.0, None)


def test_each_renters_sessions_elsewhere_count_while_their_broker_is_alive(store):
    _register(store, "b-1")
    _register(store, "b-2")
    _register(store, "b-3")
    store.publish_sessions("b-2", {"alice": 3, "bob": 1})
    store.publish_sessions("b-3", {"alice": 2})
    assert store.sessions_elsewhere("b-1", 10) == {"alice": 5, "bob": 1}
    assert store.sessions_elsewhere("b-2", 10) == {"alice": 2}
    store.publish_sessions("b-2", {"alice": 1})  # replaced, not added
    assert store.sessions_elsewhere("b-1", 10) == {"alice": 3}
    store._sql("UPDATE brokers SET heartbeat = 0 WHERE id = 'b-3'")  # b-3 died: its sessions with it
    assert store.sessions_elsewhere("b-1", 10) == {"alice": 1}
    store.drop_broker("b-2")
    assert store.sessions_elsewhere("b-1", 10) == {}


def test_a_new_owner_goes_above_the_epoch_the_host_last_saw(store):
    joined_host(store)
    _register(store, "b-1")
    assert store.own_host("pc1", "b-1", 10) == 1
    assert store.own_host("pc1", "b-1", 10, above=41) == 42  # a database restored from an older backup
    assert store.own_host("pc1", "b-1", 10, above=3) == 43  # and never below what the row had
