"""Rents waiting on a host's image pull: the host's progress passed to each waiting renter, the rent
kept waiting only while progress advances (PULL_LIMIT in all), and a release that cancels the wait."""
import asyncio
import math
import time

from .errors import BrokerError, Unavailable
from .leases import format_duration

PULL_LIMIT = 3600  # seconds a rent waits on its image's pull, progress or not


class PullWaits:
    def __init__(self, config, db, store, now):
        self._config, self._db, self._store, self._now = config, db, store, now
        self._watch: dict[tuple[str, str], list] = {}  # (host, image) -> the rents waiting on its pull
        self._pulling: dict[str, asyncio.Task] = {}    # lease id -> its start task, while its image is pulled

    def waiting(self, lease_id: str) -> bool:
        return lease_id in self._pulling

    async def pull(self, link, lease: dict, say, closes: float | None) -> None:
        """Have the host pull the lease's image (listed there, not there yet), passing its progress to
        the renter; the call waits while progress comes, at most PULL_LIMIT in all. The lease's time
        starts once the image is there (the hold covers it: the length is unchanged)."""
        key, started = (lease["host"], lease["image"]), time.monotonic()
        last, most = [started], [(-1, -1)]

        def watch(view: dict) -> None:
            if (view["done"], view["bytes"]) > most[0]:  # only progress that advances keeps the rent waiting
                most[0], last[0] = (view["done"], view["bytes"]), time.monotonic()
                say(view)

        self._watch.setdefault(key, []).append(watch)
        self._pulling[lease["id"]] = asyncio.current_task()
        try:
            await asyncio.wait_for(link.call("image.pull", timeout=self._config.start_timeout,
                                             alive=lambda: last[0], image=lease["image"]), PULL_LIMIT)
        except asyncio.TimeoutError:
            raise Unavailable(f"pulling {lease['image']} took longer than {format_duration(PULL_LIMIT)}") from None
        finally:
            self._pulling.pop(lease["id"], None)
            self._watch[key].remove(watch)
            if not self._watch[key]:
                del self._watch[key]
        say(f"pulled {lease['image']} in {time.monotonic() - started:.1f}s")
        length = lease["ends_at"] - lease["created"]
        lease["ends_at"] = min(self._now() + length, closes or math.inf)
        if lease["ends_at"] < self._now() + 60:
            raise BrokerError(f"host {lease['host']}'s window closed during the pull")
        await self._db(lambda: self._store.update_lease(lease["id"], ends_at=lease["ends_at"]))

    def progress(self, host: str, view: dict) -> None:
        """A host's pull.progress event (checked): to the rents waiting on that pull."""
        for watch in list(self._watch.get((host, view["image"]), ())):
            watch(view)

    async def cancel(self, lid: str) -> dict:
        """Release a rent still waiting on its image's pull: it fails, fully refunded (the host's pull
        goes on, for the next rent)."""
        task = self._pulling[lid]
        task.cancel(msg="released during its image's pull")
        try:
            await asyncio.shield(task)
        except BaseException:  # cancelled: the start failed and refunded the lease
            pass
        return await self._db(self._store.lease, lid)
