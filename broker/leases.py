"""Pure lease rules: durations, the state machine, billing arithmetic, availability windows."""
import math
import re
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from .errors import BrokerError

MICRO = 1_000_000
STATES = ("pending", "starting", "active", "ending", "ended", "purged", "failed")
LIVE = ("pending", "starting", "active", "ending")
_NEXT = {"pending": {"starting", "failed"}, "starting": {"active", "failed"},
         "active": {"ending", "ended"}, "ending": {"ended"}, "ended": {"purged"},
         "purged": set(), "failed": set()}
_DURATION = re.compile(r"^(?:([0-9]{1,6})d)?(?:([0-9]{1,7})h)?(?:([0-9]{1,9})m)?(?:([0-9]{1,10})s)?$")
MAX_DURATION = 366 * 86400  # no lease is asked for longer than a year


class LeaseStateError(BrokerError):
    """A lease cannot move to the asked state."""


def advance(state: str, new: str) -> str:
    """The new state, if the move is allowed."""
    if new not in _NEXT.get(state, ()):
        raise LeaseStateError(f"lease is {state}; it cannot become {new}")
    return new


def parse_duration(text: str) -> int:
    """Seconds from '90m', '2h', '1h30m', '1d', '45s' or a plain number of hours ('1.5')."""
    text = str(text).strip().lower()[:40]
    m = _DURATION.match(text)
    if m and any(m.groups()):
        d, h, mi, s = (int(g or 0) for g in m.groups())
        seconds = d * 86400 + h * 3600 + mi * 60 + s
    else:
        try:
            if not text.isascii() or "_" in text:
                raise InvalidOperation
            hours = Decimal(text)
        except InvalidOperation:
            raise BrokerError(f"bad duration {text!r}: use e.g. 90m, 2h, 1h30m, 1d") from None
        if not hours.is_finite():
            raise BrokerError(f"bad duration {text!r}: not a number of hours")
        seconds = int(hours * 3600) if abs(hours) <= MAX_DURATION else MAX_DURATION + 1
    if seconds <= 0:
        raise BrokerError(f"bad duration {text!r}: must be more than zero")
    if seconds > MAX_DURATION:
        raise BrokerError(f"bad duration {text!r}: at most {MAX_DURATION // 86400} days")
    return seconds


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    d, rest = divmod(seconds, 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    parts = [f"{d}d" if d else "", f"{h}h" if h else "", f"{m}m" if m else "", f"{s}s" if s and not d else ""]
    return "".join(parts) or "0s"


def parse_credits(text: str) -> int:
    """Micro-credits from a decimal string ('12.5' -> 12500000); never through a float."""
    if any(c in str(text) for c in "eE_"):
        raise BrokerError(f"bad amount {text!r}: write it out, like 12.50 (no exponents)")
    try:
        value = Decimal(str(text).strip())
    except InvalidOperation:
        raise BrokerError(f"bad amount {text!r}: expected a number like 12.50") from None
    if not value.is_finite():
        raise BrokerError(f"bad amount {text!r}: expected a number like 12.50")
    if value.as_tuple().exponent < -6:
        raise BrokerError(f"bad amount {text!r}: at most 6 decimals")
    if abs(value) > 10**9:
        raise BrokerError(f"bad amount {text!r}: at most 1000000000 credits")
    return int(value * MICRO)


def credits(micro: int) -> str:
    """'12.50' for people: two decimals everywhere they read money (rounded half up; --json output
    carries the exact micro-credits beside it)."""
    return str((Decimal(micro) / MICRO).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def cost(price: int, gpus: int, seconds: float) -> int:
    """Micro-credits for seconds of gpus at price (micro-credits per GPU-hour), rounded down."""
    return (price * gpus * int(seconds)) // 3600


def hold_for(price: int, gpus: int, seconds: int) -> int:
    """What to hold up front: the full cost, rounded up so it always covers the charge."""
    return -(-price * gpus * seconds // 3600)


def billable_seconds(start: float, end: float, gaps: list[tuple[float, float]], grace: float,
                     downs: list[tuple[float, float | None]] = ()) -> int:
    """Active seconds in [start, end) less every host-offline gap longer than grace and every time
    the lease's container was down (whatever its length; an open one runs to end)."""
    if end <= start:
        return 0
    lost = [(g0, g1) for g0, g1 in gaps if g1 - g0 > grace]
    lost += [(d0, end if d1 is None else d1) for d0, d1 in downs]
    return max(0, math.floor(end - start - covered(lost, start, end)))


def covered(intervals: list[tuple[float, float]], start: float, end: float) -> float:
    """Seconds of [start, end) inside at least one of the intervals (overlaps counted once)."""
    total, cursor = 0.0, start
    for a, b in sorted(intervals):
        a, b = max(a, cursor), min(b, end)
        if b > a:
            total += b - a
            cursor = b
    return total


def parse_window(text: str) -> tuple[int, int] | None:
    """(start, end) minutes after midnight UTC from 'HH:MM-HH:MM'; None for 'always'."""
    if text in ("", "always"):
        return None
    m = re.match(r"^(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})$", text)
    if not m:
        raise BrokerError(f"bad window {text!r}: use HH:MM-HH:MM (UTC) or always")
    h0, m0, h1, m1 = map(int, m.groups())
    if h0 > 23 or h1 > 23 or m0 > 59 or m1 > 59 or (h0, m0) == (h1, m1):
        raise BrokerError(f"bad window {text!r}")
    return h0 * 60 + m0, h1 * 60 + m1


def window_end(now: float, window: tuple[int, int] | None) -> float | None:
    """When the availability window that contains now closes; None if always open.

    Raises BrokerError when now is outside the window."""
    if window is None:
        return None
    start, end = window
    day = now - now % 86400
    minute = (now % 86400) / 60
    if start < end:
        if not start <= minute < end:
            raise BrokerError("the host is outside its availability window")
        return day + end * 60
    if minute >= start:
        return day + 86400 + end * 60
    if minute < end:
        return day + end * 60
    raise BrokerError("the host is outside its availability window")


def reliability(now: float, listed_since: float, ups: list[tuple[float, float | None]], days: int = 30,
                downs: list[tuple[float, float | None]] = ()) -> float:
    """Share of the time a host was connected while listed, over the last `days` days, less the
    time its lease containers were down while it was connected.

    A host listed for less than a day is judged as if it had been up before: its downtime counts
    against a full day, so a minute's restart does not sink a new host."""
    lo = max(listed_since, now - days * 86400)
    down = covered(offline_gaps(ups, lo, now) + [(a, now if b is None else b) for a, b in downs], lo, now)
    return round(max(0.0, 1 - down / max(now - lo, 86400)), 4)


def offline_gaps(ups: list[tuple[float, float | None]], start: float, end: float) -> list[tuple[float, float]]:
    """Times in [start, end) not covered by any connected interval."""
    gaps, cursor = [], start
    for a, b in sorted((a, b if b is not None else end) for a, b in ups):
        if b <= cursor:
            continue
        if a > cursor:
            gaps.append((cursor, min(a, end)))
        cursor = max(cursor, b)
        if cursor >= end:
            break
    if cursor < end:
        gaps.append((cursor, end))
    return [(a, b) for a, b in gaps if b > a]


def auto_step(seconds: float) -> int:
    """How much auto-extend adds before each end: an hour, or the lease's length if shorter."""
    return int(min(3600, seconds))
