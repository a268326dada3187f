"""The charge and its corrections, table by table (broker/billing.py), and the ledger's transaction
keys: one name per step, so that retrying a step never posts it twice."""
import pytest

from shellrent.broker import billing, ledger

PRICE = 3_600_000  # 3.6 credits per GPU-hour: 1,000 micro-credits per GPU-second


@pytest.mark.parametrize("case, held, gpus, start, end, ups, downs, grace, expect", [
    ("a whole hour", 10**10, 1, 0, 3600, [(0, None)], [], 60, (3600, 3_600_000)),
    ("two GPUs", 10**10, 2, 0, 100, [(0, None)], [], 60, (100, 200_000)),
    ("never more than held", 50_000, 1, 0, 100, [(0, None)], [], 60, (100, 50_000)),
    ("an offline gap past the grace is not billed", 10**10, 1, 0, 1000, [(0, 100), (400, None)], [], 60,
     (700, 700_000)),
    ("a gap within the grace is", 10**10, 1, 0, 1000, [(0, 100), (130, None)], [], 60, (1000, 1_000_000)),
    ("a down time is not billed, however short", 10**10, 1, 0, 1000, [(0, None)], [(200, 210)], 60,
     (990, 990_000)),
    ("an open down runs to the end", 10**10, 1, 0, 1000, [(0, None)], [(900, None)], 60, (900, 900_000)),
    ("nothing ran", 10**10, 1, 500, 500, [(0, None)], [], 60, (0, 0)),
    ("no GPU: no charge", 10**10, 0, 0, 1000, [(0, None)], [], 60, (1000, 0)),
])
def test_the_charge(case, held, gpus, start, end, ups, downs, grace, expect):
    assert billing.charge(held, PRICE, gpus, start, end, ups, downs, grace) == expect, case


@pytest.mark.parametrize("charged, charge, refund", [
    (1000, 700, 300),   # charged too much: the difference back
    (1000, 0, 1000),
    (1000, 1000, None),  # the same: nothing
    (700, 1000, None),   # more now: a charge never goes up after settling
    (0, 0, None),
])
def test_a_settled_charge_only_ever_goes_down(charged, charge, refund):
    assert billing.correction(charged, charge) == refund


def test_every_step_has_a_key_of_its_own():
    keys = [ledger.settle_key("l1"), ledger.hold_key("l1"), ledger.extend_key("l1", 1), ledger.extend_key("l1", 2),
            ledger.undo_key("l1", 1), ledger.adjust_key("l1", 700), ledger.adjust_key("l1", 500),
            ledger.deposit_key("n1"), ledger.settle_key("l2")]
    assert len(set(keys)) == len(keys)
    assert ledger.settle_key("l1") == "settle:l1"  # recorded in every database: never renamed
    assert ledger.provider("pc1").startswith(ledger.PROVIDERS)
