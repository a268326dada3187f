"""The bandwidth caps in force: each active lease's bridge shaped (hostd.shaping) and its relayed
sessions paced (hostd.pacing) at the rate the settings give it (settings.lease_rate: `bandwidth`,
and no more than an even share of `bandwidth_total`). A lease is capped as its container starts,
before the start returns, and a start whose cap cannot be applied fails (the container is removed
before anyone used it); once a second the caps follow the settings and the number of leases, and
a container started again gets them on its new veth at once; every CHECK_EVERY turns they are
checked and put back where another tool took them off, and taken off where no setting asks for
them any more (a failure is logged, shown in `hostd status` and tried again the next turn)."""
import asyncio
import logging
import threading

from . import offload, settings as settings_mod, shaping
from .firewall import bridge_name
from .runtime import RuntimeError_

log = logging.getLogger("shellrent.caps")
CHECK_EVERY = 10  # turns between checks that the caps are still in place


class Caps:
    def __init__(self, settings, store, pacing, status):
        self._settings = settings  # () -> the settings in force
        self._store = store
        self.pacing = pacing  # hostd.pacing.Pacing
        self._status = status
        self._applied: dict[str, int] = {}  # lease id -> rate its bridge has (bit/s)
        self._lock = threading.Lock()  # starts (in engine threads) and sync (in another) both apply
        self.error: str | None = None
        self._turn = 0

    def rate(self, extra: int = 0) -> int:
        """Bits per second each lease gets now, with `extra` leases about to start."""
        return settings_mod.lease_rate(self._settings(), len(self._store.active()) + extra)

    def before_start(self, lease_id: str) -> None:
        """Cap a new lease's bridge (called once its container runs, before the start returns and
        before any session); RuntimeError_ when it cannot be (the start then fails)."""
        rate = self.rate(extra=1)
        if not rate:
            with self._lock:
                self._applied[lease_id] = 0  # a new bridge has no cap to take off
            return
        try:
            with self._lock:
                shaping.apply(bridge_name(lease_id), shaping.ifb_name(lease_id), rate)
                self._applied[lease_id] = rate
        except shaping.ShapingError as exc:
            raise RuntimeError_(f"this host cannot cap the lease's bandwidth: {exc}") from None

    async def revived(self, lease_id: str) -> None:
        """A lease's container started again (hostd.watch): its new veth gets the upload cap now,
        not at the next check."""
        rate = self.rate()
        if rate:
            try:
                await offload.call(self._reapply, lease_id, rate, timeout=60)
            except asyncio.TimeoutError:
                log.error("lease %s: tc did not answer in time; its cap is put back at the next check", lease_id)

    def _reapply(self, lease_id: str, rate: int) -> None:
        with self._lock:
            try:
                shaping.apply(bridge_name(lease_id), shaping.ifb_name(lease_id), rate)
                self._applied[lease_id] = rate
            except shaping.ShapingError as exc:
                self._applied.pop(lease_id, None)  # tried again next turn
                log.error("lease %s: its bandwidth cap after a restart: %s; tried again in a second", lease_id, exc)

    async def turn(self) -> None:
        """The pacing at the current rate (in the event loop, where the channels spend), then the
        bridges' caps (in a thread: tc and ip are processes)."""
        active = [r["id"] for r in self._store.active()]
        rate = settings_mod.lease_rate(self._settings(), len(active))
        self.pacing.set_rate(rate / 8)
        try:
            gone = await offload.call(self.sync, active, rate, timeout=60)
        except asyncio.TimeoutError:
            log.error("bandwidth caps: tc did not answer in time")
            return
        for lease_id in gone:
            self.pacing.forget(lease_id)
        shown = {"lease_rate": rate, "leases": len(active), "error": self.error}
        if self._status.get("bandwidth") != shown:
            self._status.set(bandwidth=shown)

    def sync(self, active: list[str], rate: int) -> list[str]:
        """Every active lease at rate, caps of ended leases gone (returned); checked every
        CHECK_EVERY turns."""
        check, self._turn = self._turn % CHECK_EVERY == 0, self._turn + 1
        errors, gone = [], []
        with self._lock:
            for lease_id in active:
                bridge, ifb = bridge_name(lease_id), shaping.ifb_name(lease_id)
                try:
                    missing = rate and check and shaping.in_place(bridge, ifb)
                    # unknown (None: after a restart) is not "uncapped": a cap left on meanwhile goes
                    stray = not rate and check and shaping.capped(bridge)
                    if self._applied.get(lease_id) != rate or missing or stray:
                        if missing:
                            log.warning("lease %s: its bandwidth cap was not in place (%s): applying it again",
                                        lease_id, missing)
                        shaping.apply(bridge, ifb, rate)
                        self._applied[lease_id] = rate
                        log.info("lease %s: bandwidth %s each way", lease_id,
                                 f"at most {rate / 1e6:g} Mbit/s" if rate else "not capped")
                except shaping.ShapingError as exc:
                    self._applied.pop(lease_id, None)  # tried again next turn
                    errors.append(f"lease {lease_id}: {exc}")
            for lease_id in set(self._applied) - set(active):
                self._applied.pop(lease_id, None)
                shaping.clear(None, shaping.ifb_name(lease_id))  # the bridge's qdiscs went with its network
                gone.append(lease_id)
            if check and shaping.available() is None:
                try:
                    over = {shaping.ifb_name(r["id"]) for r in self._store.all() if r["state"] != "active"}
                    for ifb in shaping.stray_ifbs(over - {shaping.ifb_name(i) for i in active}):
                        shaping.clear(None, ifb)
                except shaping.ShapingError as exc:
                    log.warning("bandwidth caps: cannot list the IFB devices left over: %s", exc)
        error = "; ".join(errors) or None
        if error and error != self.error:
            log.error("bandwidth caps not in force: %s", error)
        self.error = error
        return gone
