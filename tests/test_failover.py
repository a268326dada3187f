"""hostd's side of several brokers: which brokers' tunnels it believes, the order it dials them in,
and the epoch below which it refuses a broker's calls (a paused or cut-off former owner)."""
import asyncio
from types import SimpleNamespace

from shellrent.hostd import tunnel
from shellrent.hostd.control import Control


def test_only_well_formed_broker_addresses_are_kept_and_at_most_sixteen():
    raw = [["10.0.0.2", 2223], ["b3.example", 2223], ["bad host", 1], ["x", 0], ["x", True], ["x", "22"],
           "10.0.0.9:2223", ["a" * 300, 1], ["::1", 65535]]
    assert tunnel.brokers_from(raw) == [["10.0.0.2", 2223], ["b3.example", 2223], ["::1", 65535]]
    assert tunnel.brokers_from("10.0.0.2:2223") == [] and tunnel.brokers_from(None) == []
    assert len(tunnel.brokers_from([["h", n] for n in range(1, 40)])) == tunnel.MAX_BROKERS


def test_the_address_given_is_dialled_first_then_each_learned_broker_once():
    assert tunnel.candidates(["a", 1], [["b", 2], ["a", 1], ["c", 3], ["b", 2]]) == [["a", 1], ["b", 2], ["c", 3]]
    assert tunnel.candidates(["a", 1], []) == [["a", 1]]


def test_after_losing_a_broker_the_next_one_is_dialled_even_when_the_list_changed_meanwhile():
    assert tunnel.next_dial([["a", 1], ["b", 2], ["c", 3]], ["c", 3]) == ["a", 1]
    assert tunnel.next_dial([["a", 1], ["c", 3]], ["c", 3]) == ["a", 1]  # c's own list: never c again at once
    assert tunnel.next_dial([["a", 1], ["b", 2]], ["z", 9]) == ["a", 1]
    assert tunnel.next_dial([["a", 1]], ["a", 1]) == ["a", 1]  # the only one


class _Daemon:
    def __init__(self):
        self.loop = asyncio.get_running_loop()
        self.learned = []
        self.status = SimpleNamespace(set=lambda **kw: None)
        self.clock = SimpleNamespace(host=lambda: 0.0, set=lambda offset: False)
        self.leases = None
        self.outbox = SimpleNamespace(attach=lambda ch: None, detach=lambda ch: None)

    def learn_brokers(self, raw):
        self.learned.append(raw)

    def emit(self, event):
        pass


async def test_a_call_below_the_highest_epoch_welcomed_is_refused():
    d = _Daemon()
    control = Control(d, None)
    assert (await control.call({"op": "welcome", "host": "pc1", "epoch": 3, "brokers": [["b", 2]]}))["ok"]
    assert d.learned == [[["b", 2]]]
    assert (await control.call({"op": "clock", "epoch": 3}))["ok"]
    for stale in (2, 0, -1, "3", True, 2.5):
        reply = await control.call({"op": "clock", "epoch": stale})
        assert reply["ok"] is False and "stale broker" in reply["error"], stale
    reply = await control.call({"op": "welcome", "host": "pc1", "epoch": 2})  # the old owner welcomes again
    assert reply["ok"] is False and control.epoch == 3
    assert (await control.call({"op": "welcome", "host": "pc1", "epoch": 4}))["ok"] and control.epoch == 4
    assert (await control.call({"op": "brokers", "epoch": 4, "brokers": [["c", 3]]}))["ok"]
    assert d.learned[-1] == [["c", 3]]
    assert (await control.call({"op": "clock", "epoch": 5}))["ok"] and control.epoch == 5  # the owner took it again
    assert not (await control.call({"op": "clock", "epoch": 4}))["ok"]
    assert not (await control.call({"op": "clock", "epoch": 1 << 63}))["ok"]


async def test_a_ban_from_a_stale_broker_or_without_an_epoch_stops_nothing():
    d = _Daemon()
    ended = []
    d.store = SimpleNamespace(all=lambda: [{"id": "ab12cd34", "state": "active"}])
    d.leases = SimpleNamespace(end=lambda lid, why: ended.append((lid, why)) or asyncio.sleep(0))
    control = Control(d, None)
    assert (await control.call({"op": "welcome", "host": "pc1", "epoch": 3}))["ok"]
    for stale in ({"epoch": 2}, {}):
        await control.call({"op": "reject", "error": "banned", "banned": True, **stale})
    await asyncio.sleep(0)
    assert ended == []
    await control.call({"op": "reject", "error": "banned", "banned": True, "epoch": 3})
    await asyncio.sleep(0)
    assert ended == [("ab12cd34", "banned")]
