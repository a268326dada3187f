"""hostd's clock in the broker's time: what times leases and stamps what hostd records and reports.

A provider's clock may be off (by up to BROKER_MAX_SKEW, or the broker refuses the host). The broker
measures the offset at every connect and every CLOCK_EVERY seconds after (over the control channel,
from the round trip's midpoint) and tells hostd; hostd then ends each lease at the broker's end, and
every end, down and last-seen time it keeps is in the broker's time, so that skew moves no charge.
The last offset is kept in the home, so times stamped before the next connect are translated too.
"""
import json
import logging
import math
import time
from pathlib import Path

from shellrent.common import faults

log = logging.getLogger("shellrent.clock")
MOST = 3600.0  # an offset the broker could never have measured (it refuses a host past its max skew)


class Clock:
    def __init__(self, path: Path | None = None):
        self._path = path
        self.offset = 0.0  # this machine's clock less the broker's
        if path:
            try:
                self.offset = _checked(json.loads(path.read_text())["offset"])
            except (OSError, ValueError, KeyError, TypeError):
                pass

    @staticmethod
    def host() -> float:
        """This machine's own clock (the faults module can put it off, for tests)."""
        return time.time() + faults.clock_offset()

    def now(self) -> float:
        """The broker's time now."""
        return self.host() - self.offset

    def engine(self, stamp: float | None) -> float | None:
        """A time the Docker engine stamped (this machine's clock, really the real one in tests), in the
        broker's time."""
        return None if stamp is None else stamp + faults.clock_offset() - self.offset

    def set(self, offset) -> bool:
        """The offset the broker measured; kept in the home when it moved by more than 50 ms (then True)."""
        offset = _checked(offset)
        if abs(offset - self.offset) < 0.05:
            return False
        if abs(offset - self.offset) >= 1:
            log.info("clock: this machine's clock is %.1f s %s the broker's", abs(offset),
                     "ahead of" if offset > 0 else "behind")
        self.offset = offset
        if self._path:
            tmp = self._path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"offset": offset}))
            tmp.replace(self._path)
        return True


def _checked(offset) -> float:
    if isinstance(offset, bool) or not isinstance(offset, (int, float)) or not math.isfinite(offset) \
            or abs(offset) > MOST:
        raise ValueError(f"not a clock offset: {str(offset)[:40]}")
    return float(offset)
