"""Login slots (broker.startups), pure: sources, waiting for a slot, and which connection makes room."""
import asyncio

from shellrent.broker import startups
from shellrent.broker.startups import Startups


class Conn:
    def __init__(self, ip):
        self.ip, self.aborted = ip, False

    def get_extra_info(self, name):
        return (self.ip, 1234)

    def abort(self):
        self.aborted = True


def test_sources_are_addresses_and_ipv6_prefixes():
    assert startups.source(("10.0.0.1", 22)) == "10.0.0.1"
    assert startups.source(("2001:db8:1:2::5", 22, 0, 0)) == startups.source(("2001:db8:1:2:ffff::9", 22, 0, 0))
    assert startups.source(("::ffff:10.0.0.1", 22, 0, 0)) == "10.0.0.1"
    assert startups.source(None) == "?"


async def test_a_burst_from_one_source_waits_for_slots_instead_of_being_dropped():
    s = Startups(total=100, per_ip=2)
    started, aborted, conns = [], [], []

    def arrive(i):
        def start():
            conn = Conn("10.0.0.1")
            conns.append(conn)
            s.admit(conn)
            started.append(i)
        s.arrive(("10.0.0.1", 1), start, lambda: aborted.append(i))

    for i in range(5):
        arrive(i)
    assert started == [0, 1] and not aborted  # three wait, banner held back
    s.done(conns[0])
    await asyncio.sleep(0)
    assert started == [0, 1, 2]
    s.done(conns[1])
    s.done(conns[2])
    await asyncio.sleep(0)
    assert started == [0, 1, 2, 3, 4] and not aborted


async def test_at_the_total_a_quiet_connection_makes_room_and_a_talking_one_stays(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(startups.time, "monotonic", lambda: now[0])
    s = Startups(total=3, per_ip=10)
    talker, idle1, idle2 = Conn("10.0.0.1"), Conn("10.0.0.2"), Conn("10.0.0.2")
    for c in (talker, idle1, idle2):
        s.admit(c)
    now[0] += 5
    s.heard(talker)  # a slow honest login keeps talking
    newcomer = Conn("10.0.0.3")
    s.admit(newcomer)
    await asyncio.sleep(0)
    assert idle1.aborted and not talker.aborted and not idle2.aborted
    # Every connection talking: a newcomer waits rather than evicting anyone.
    for c in (talker, idle2, newcomer):
        s.heard(c)
    waited = []
    s.arrive(("10.0.0.4", 1), lambda: waited.append("started"), lambda: waited.append("aborted"))
    assert waited == []
    s.done(talker)
    await asyncio.sleep(0)
    assert waited == ["started"]


async def test_waiting_is_bounded_per_source(monkeypatch):
    monkeypatch.setattr(startups, "WAIT_PER_SOURCE", 3)
    s = Startups(total=100, per_ip=1)
    s.admit(Conn("10.0.0.1"))
    out = []
    for i in range(5):
        s.arrive(("10.0.0.1", 1), lambda: out.append("start"), lambda i=i: out.append(f"abort{i}"))
    assert out == ["abort3", "abort4"]


async def test_newcomers_queue_behind_the_waiting_and_a_talking_waiter_goes_first(monkeypatch):
    """Churn from many addresses took every slot that opened, past a slow login waiting for one."""
    now = [1000.0]
    monkeypatch.setattr(startups.time, "monotonic", lambda: now[0])
    s = Startups(total=2, per_ip=10)
    held = [Conn("10.0.0.1"), Conn("10.0.0.2")]
    for c in held:
        s.admit(c)
    order = []

    def arrive(name, ip, sent=False):
        s.arrive((ip, 1), lambda: (order.append(name), s.admit(Conn(ip))), lambda: order.append(f"dropped {name}"),
                 lambda: sent)
    arrive("idle", "10.0.1.1")
    arrive("honest", "10.0.1.2", sent=True)  # its version line is in the kernel already
    assert order == []
    now[0] += 5                              # the held ones went quiet: room for two, and nobody jumped ahead
    arrive("flood", "10.0.1.3")
    assert order[:2] == ["honest", "idle"], order
    s._tick and s._tick.cancel()


async def test_at_the_waiting_cap_an_idle_waiter_makes_room(monkeypatch):
    monkeypatch.setattr(startups, "WAIT_TOTAL", 3)
    s = Startups(total=1, per_ip=10)
    s.admit(Conn("10.0.0.1"))
    s.heard(next(iter(s._heard)))
    out = []
    for i, sent in enumerate([False, True, False]):
        s.arrive((f"10.0.2.{i}", 1), lambda: out.append("start"), lambda i=i: out.append(f"drop{i}"), lambda sent=sent: sent)
    s.arrive(("10.0.3.1", 1), lambda: out.append("start"), lambda: out.append("drop newcomer"), lambda: True)
    assert out == ["drop0"]                      # the oldest idle one, not the newcomer nor the talker
    for i in (2, 3):
        s.arrive((f"10.0.4.{i}", 1), lambda: None, lambda i=i: out.append(f"drop{i + 10}"), lambda: True)
    assert out == ["drop0", "drop2", "drop13"]   # then the other idle one; then, all talking, the newcomer
    s._tick and s._tick.cancel()
