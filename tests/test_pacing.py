"""The relayed traffic's token buckets and tc's command lines for a lease's caps (pure)."""
import asyncio

import pytest

from shellrent.hostd import pacing, shaping


def test_a_bucket_lets_its_burst_through_then_charges_the_rate():
    b = pacing.Bucket(rate=1000, burst=500, now=0)
    assert b.take(500, 0) == 0
    assert b.take(1000, 0) == pytest.approx(1.0)    # a debt of 1000 bytes: one second at 1000 B/s
    assert b.take(0, 0.5) == pytest.approx(0.5)     # half paid off
    assert b.take(0, 1.0) == 0
    assert b.take(0, 100) == 0 and b.tokens == 500  # idle time fills it up to the burst, no more


def test_an_uncapped_bucket_never_waits_and_a_new_rate_applies_at_once():
    b = pacing.Bucket(rate=0, burst=0, now=0)
    assert b.take(10 ** 9, 0) == 0
    b.set_rate(1000, 100, now=1)
    assert b.take(1100, 1) == pytest.approx(1.0)


class Gate:
    def __init__(self):
        self.log = []

    def hold(self, why):
        self.log.append(("hold", why))

    def release(self, why):
        self.log.append(("release", why))


async def test_a_throttle_holds_the_reader_for_the_debt_of_its_lease_shared_by_its_channels():
    now = [0.0]
    p = pacing.Pacing(clock=lambda: now[0])
    p.set_rate(100_000)  # bytes per second; burst: 64 KiB
    a, b = Gate(), Gate()
    ta, tb = p.throttle("l1", "out", a), p.throttle("l1", "out", b)
    ta.spend(65536)
    assert a.log == []  # within the burst
    tb.spend(10_000)     # the same lease's bucket: this channel pays
    assert b.log == [("hold", "paced")]
    other = Gate()
    p.throttle("l2", "out", other).spend(10_000)
    assert other.log == []  # another lease has its own
    now[0] = 0.2
    await asyncio.sleep(0.15)
    assert b.log == [("hold", "paced"), ("release", "paced")]
    ta.close(), tb.close()


def test_tc_lines_cap_both_ways_and_match_every_protocol():
    lines = shaping.commands("srl-abc", ["veth1"], "sri-abc", 40_000_000)
    text = [" ".join(line) for line in lines]
    assert text[0] == "qdisc replace dev srl-abc root handle 1: htb default 10"
    assert "class replace dev srl-abc parent 1: classid 1:10 htb rate 40000000bit ceil 40000000bit burst 50000b " \
           "cburst 50000b quantum 60000" in text
    assert "qdisc replace dev veth1 handle ffff: ingress" in text
    assert "filter replace dev veth1 parent ffff: protocol all prio 1 handle 800::1 u32 match u32 0 0 action " \
           "mirred egress redirect dev sri-abc" in text
    assert "qdisc replace dev sri-abc root handle 1: htb default 10" in text
    again = [" ".join(line) for line in shaping.commands("srl-abc", ["veth1"], "sri-abc", 1_000_000, (True, True))]
    assert not any("root" in line for line in again)  # the kernel cannot replace an HTB root: classes change
    assert shaping.burst(100_000) == "16384b"
    assert shaping.ifb_name("0123456789abcdef") == "sri-0123456789a"


def test_doctor_fails_a_set_cap_without_tc():
    values = {"bandwidth": 40_000_000, "bandwidth_total": 0}
    assert shaping.finding(values, lambda tool: None)[0] == "FAIL"
    assert shaping.finding({**values, "bandwidth": 0}, lambda tool: None)[0] == "info"
    assert shaping.finding(values, lambda tool: f"/usr/sbin/{tool}")[0] == "ok"


def test_after_a_restart_a_cap_lifted_meanwhile_comes_off_and_a_new_uncapped_lease_is_left_alone(monkeypatch):
    from types import SimpleNamespace

    from shellrent.hostd import caps as caps_mod, shaping
    applied = []
    monkeypatch.setattr(shaping, "apply", lambda bridge, ifb, rate: applied.append((bridge, rate)))
    monkeypatch.setattr(shaping, "capped", lambda bridge: bridge == "srl-aa11bb22")
    monkeypatch.setattr(shaping, "available", lambda: "no tc here")  # no stray IFB listing
    store = SimpleNamespace(active=lambda: [], all=lambda: [])
    caps = caps_mod.Caps(lambda: {"bandwidth": 0, "bandwidth_total": 0}, store, None, None)
    caps.sync(["aa11bb22"], 0)  # hostd restarted: the lease's old cap is taken off
    assert applied == [("srl-aa11bb22", 0)]
    caps.before_start("cc33dd44")  # uncapped: nothing to do, now or at the next turns
    for _ in range(caps_mod.CHECK_EVERY + 1):
        caps.sync(["aa11bb22", "cc33dd44"], 0)
    assert applied == [("srl-aa11bb22", 0), ("srl-aa11bb22", 0)]  # the check finds the (faked) cap again
