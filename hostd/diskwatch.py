"""The disk watch: every `disk_check` seconds, end (frozen at once) a lease that holds more of the
host's disk than its share, or more of its inodes, or whose layer cannot be counted in time."""
import asyncio
import logging

from . import offload, usage
from .runtime import RuntimeError_

log = logging.getLogger("shellrent.agent")


def over_share(used: int, held: int, share: float, share_gb: float, inodes: int) -> str | None:
    """Why a lease holding `used` bytes and `held` inodes is over its share, or None."""
    if share and used > share:
        return f"{used / 1e9:.2f} GB of disk, over its {share_gb:.1f} GB share"
    if held > inodes:
        return f"over {inodes} inodes of the host's, its share"
    return None


class DiskWatch:
    def __init__(self, runtime, store, leases, every: float):
        self._runtime, self._store, self._leases, self._every = runtime, store, leases, every

    async def run(self) -> None:
        """End a lease that holds more of the host's disk than its share (/workspace, where ENOSPC
        stops it, and the writable layer, counted on the host, together), or more of its inodes; the
        renter is refunded the rest. A layer too big to count in time is over."""
        while True:
            await asyncio.sleep(self._every)
            for rec in self._store.active():
                share = (rec.get("disk_gb") or 0) * 1e9
                inodes = usage.inode_share(share) if share else 1 << 62
                try:
                    used, held = await offload.call(self._runtime.disk_used, rec["id"], inodes,
                                                    timeout=usage.WALK_TIMEOUT + 10)
                except (RuntimeError_, asyncio.TimeoutError) as exc:
                    log.warning("lease %s: cannot size its layer now: %s", rec["id"],
                                exc or "the engine did not answer")
                    continue
                except usage.UsageError as exc:
                    why = str(exc)
                else:
                    why = over_share(used, held, share, rec.get("disk_gb") or 0, inodes)
                if why:
                    log.warning("lease %s holds %s: freezing and ending it", rec["id"], why)
                    asyncio.get_running_loop().create_task(self._leases.end(rec["id"], freeze=True))
