"""Pacing of the renter traffic hostd relays for a lease (its sessions and port forwards, both ways):
one token bucket per lease and direction, shared by all of that lease's channels.

A bucket never holds bytes back itself: the data a channel has already read or written goes on,
the bucket runs into debt, and the caller pauses that channel's reading (hostd's read of the
renter's channel, or of the container's pipe or socket) until the debt is paid off at the rate.
So memory stays bounded by one read per channel, and SSH's window or the kernel's socket buffers
push back on the sender.
"""
import asyncio
import time


class Bucket:
    """A token bucket of `rate` bytes per second holding at most `burst` bytes (pure: `now` is given)."""

    def __init__(self, rate: float, burst: float, now: float):
        self.rate, self.burst = rate, burst
        self.tokens = burst
        self._at = now

    def take(self, n: int, now: float) -> float:
        """Spend n bytes; the seconds the caller must wait before its next read (0: none)."""
        if not self.rate:
            return 0.0
        self.tokens = min(self.burst, self.tokens + (now - self._at) * self.rate) - n
        self._at = now
        return -self.tokens / self.rate if self.tokens < 0 else 0.0

    def set_rate(self, rate: float, burst: float, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + (now - self._at) * self.rate) if self.rate else burst
        self.rate, self.burst, self._at = rate, burst, now
        self.tokens = min(self.tokens, burst)


def burst_for(rate: float) -> float:
    """50 ms worth of bytes, at least 64 KiB (two SSH packets)."""
    return max(65536.0, rate / 20)


class Pacing:
    """The buckets of every lease on this host, all at one rate (bytes per second; 0: no pacing)."""

    def __init__(self, clock=time.monotonic):
        self.rate = 0.0
        self._clock = clock
        self._buckets: dict[tuple[str, str], Bucket] = {}

    def set_rate(self, rate: float) -> None:
        if rate == self.rate:
            return
        self.rate = rate
        now = self._clock()
        for bucket in self._buckets.values():
            bucket.set_rate(rate, burst_for(rate), now)

    def bucket(self, lease_id: str, way: str) -> Bucket:
        """The lease's bucket for 'in' (to the container) or 'out' (from it)."""
        key = (lease_id, way)
        if key not in self._buckets:
            self._buckets[key] = Bucket(self.rate, burst_for(self.rate), self._clock())
        return self._buckets[key]

    def forget(self, lease_id: str) -> None:
        for way in ("in", "out"):
            self._buckets.pop((lease_id, way), None)

    def throttle(self, lease_id: str, way: str, gate, why: str = "paced") -> "Throttle":
        return Throttle(self, self.bucket(lease_id, way), gate, why)


class Throttle:
    """One channel's side of a lease's bucket: spend(n) after each read holds `gate` (a
    shellrent.common.flow.Gate, or anything with hold/release) for as long as the bucket is in debt."""

    def __init__(self, pacing: Pacing, bucket: Bucket, gate, why: str):
        self._pacing, self._bucket, self._gate, self._why = pacing, bucket, gate, why
        self._timer: asyncio.TimerHandle | None = None

    def spend(self, n: int) -> None:
        if not self._bucket.rate:  # uncapped: nothing to count (every relayed write comes here)
            return
        wait = self._bucket.take(n, self._pacing._clock())
        if wait > 0 and self._timer is None:
            self._gate.hold(self._why)
            self._timer = asyncio.get_running_loop().call_later(wait, self._again)

    def _again(self) -> None:
        self._timer = None
        wait = self._bucket.take(0, self._pacing._clock())  # another channel of the lease may have spent
        if wait > 0:
            self._timer = asyncio.get_running_loop().call_later(wait, self._again)
            return
        self._gate.release(self._why)

    def close(self) -> None:
        if self._timer:
            self._timer.cancel()
            self._timer = None
