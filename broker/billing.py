"""What a lease is charged, pure: billable seconds at its price, never more than it holds, and a
charge that never goes up once settled (a correction only refunds)."""
from .leases import billable_seconds, cost, offline_gaps


def charge(held: int, price: int, gpus: int, start: float, end: float, ups: list, downs: list,
           grace: float) -> tuple[int, int]:
    """(billable seconds, charge) of a lease that ran from start to end: its host's offline gaps
    beyond the grace and the times its container was down are not billed."""
    seconds = billable_seconds(start, end, offline_gaps(ups, start, end), grace, downs)
    return seconds, min(held, cost(price, gpus, seconds))


def correction(charged: int, charge: int) -> int | None:
    """The refund that charging a settled lease again calls for, or None: a charge never goes up."""
    return charged - charge if charge < charged else None
