import pytest

from shellrent.broker import leases
from shellrent.broker.errors import BrokerError
from shellrent.broker.leases import LeaseStateError


@pytest.mark.parametrize("text, seconds", [("90m", 5400), ("2h", 7200), ("1h30m", 5400), ("1d", 86400),
                                           ("45s", 45), ("1.5", 5400), ("2", 7200)])
def test_durations(text, seconds):
    assert leases.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "-1h", "1x", "h", "0m"])
def test_bad_durations(text):
    with pytest.raises(BrokerError, match="bad duration"):
        leases.parse_duration(text)


def test_state_machine():
    s = "pending"
    for nxt in ("starting", "active", "ending", "ended", "purged"):
        s = leases.advance(s, nxt)
    assert leases.advance("starting", "failed") == "failed"
    for bad in [("active", "failed"), ("ended", "active"), ("failed", "active"), ("pending", "active")]:
        with pytest.raises(LeaseStateError):
            leases.advance(*bad)


def test_money_is_integer_and_holds_cover_charges():
    price = leases.parse_credits("0.40")
    assert price == 400_000
    assert leases.cost(price, 2, 3600) == 800_000
    assert leases.cost(price, 1, 1) == 111  # rounded down
    assert leases.hold_for(price, 1, 1) == 112  # rounded up
    for s in (1, 59, 3599, 7201):
        assert leases.hold_for(price, 3, s) >= leases.cost(price, 3, s)
    assert leases.credits(12_500_000) == "12.50" and leases.credits(111) == "0.00"
    assert leases.credits(5_000) == "0.01" and leases.credits(4_999) == "0.00"  # two decimals, half up
    with pytest.raises(BrokerError):
        leases.parse_credits("0.0000001")


def test_billable_seconds_refunds_long_outages_only():
    assert leases.billable_seconds(0, 3600, [], 300) == 3600
    assert leases.billable_seconds(0, 3600, [(100, 200)], 300) == 3600           # short blip: billed
    assert leases.billable_seconds(0, 3600, [(100, 1000)], 300) == 2700          # long outage: not billed
    assert leases.billable_seconds(0, 3600, [(3000, 9000)], 300) == 3000         # clipped to the lease


def test_container_downtime_is_never_billed_and_overlaps_count_once():
    assert leases.billable_seconds(0, 3600, [], 300, [(100, 110)]) == 3590        # even a short one
    assert leases.billable_seconds(0, 3600, [], 300, [(3000, None)]) == 3000      # still down at the end
    # down inside a long outage: the same seconds are taken off once
    assert leases.billable_seconds(0, 3600, [(100, 1000)], 300, [(500, 1200)]) == 2500
    assert leases.covered([(0, 10), (5, 20), (30, 40)], 0, 35) == 25


def test_offline_gaps():
    ups = [(0, 100), (400, None)]
    assert leases.offline_gaps(ups, 50, 1000) == [(100, 400)]
    assert leases.offline_gaps([], 0, 10) == [(0, 10)]
    assert leases.offline_gaps([(0, 5)], 0, 10) == [(5, 10)]


def test_reliability():
    day = 86400
    assert leases.reliability(10 * day, 0, [(0, None)]) == 1.0
    assert leases.reliability(10 * day, 0, [(0, 5 * day)]) == 0.5
    assert leases.reliability(100 * day, 0, [(0, 70 * day)]) == 0.0  # only the last 30 days count
    assert leases.reliability(10 * day, 0, [(0, None)], downs=[(day, 2 * day)]) == 0.9  # containers down


def test_windows():
    w = leases.parse_window("22:00-08:00")
    assert w == (1320, 480)
    midnight = 86400 * 100
    assert leases.window_end(midnight + 3600, w) == midnight + 8 * 3600
    assert leases.window_end(midnight + 23 * 3600, w) == midnight + 86400 + 8 * 3600
    with pytest.raises(BrokerError, match="outside its availability window"):
        leases.window_end(midnight + 12 * 3600, w)
    assert leases.window_end(5, leases.parse_window("always")) is None
    with pytest.raises(BrokerError, match="bad window"):
        leases.parse_window("25:00-01:00")
