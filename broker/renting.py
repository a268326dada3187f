"""Renting: pick an offer, hold the credit and take the GPUs (one transaction), start the container on
the host (pulling its image first where needed), or fail and refund it all; starts under way."""
import asyncio
import math
import secrets

from shellrent.common import faults, protocol

from . import ledger, offers as offers_mod
from .errors import BrokerError, GpusTaken, Unavailable, changed
from .workspaces import check_kept
from .leases import auto_step, advance, format_duration, hold_for

DEFAULT_IMAGE = "shellrent-base:bookworm"


def _ready(offer: dict, image: str) -> bool:
    """Whether the offer's host has the image already (any image allowed there must be there)."""
    return image in offer["ready"] or "*" in protocol.image_list(offer["images"])


def _quietly(progress, item) -> None:
    """Tell the renter how the start goes; a renter who has gone does not stop it."""
    if progress:
        try:
            progress(item)
        except Exception:
            pass


def check_length(config, seconds: float) -> None:
    longest = config.max_lease_days * 86400
    if seconds > longest:
        raise BrokerError(f"a lease may last at most {format_duration(longest)} on this broker "
                          f"(operator limit BROKER_MAX_LEASE_DAYS={config.max_lease_days:g})")


class Renting:
    def __init__(self, config, db, store, reach, cluster, market, pulls, tasks, now, sync):
        self._config, self._db, self._store, self._reach, self._cluster = config, db, store, reach, cluster
        self._market, self._pulls, self._tasks, self._now = market, pulls, tasks, now
        self._sync = sync  # tell a host what it has not acknowledged (hostsync)
        self._rent_lock = asyncio.Lock()
        self.in_flight: set[str] = set()  # leases whose start call is under way in this process

    def open_lease(self, lease: dict) -> dict:
        """Insert a pending lease, take its GPUs and hold its credit, atomically (store thread). The
        host's GPUs and the renter's count are locked first, so that two rents, through this broker or
        another, cannot take one GPU or pass the limit together."""
        self._market.changed()
        store = self._store
        renter, host = lease["renter"], lease["host"]
        with store.tx():
            store.lock(*sorted({ledger.hold_account(renter), ledger.renter(renter), f"host:{host}"}))
            taken = set(lease["gpus"]) & store.busy_gpus(host)
            if taken:
                raise GpusTaken(f"the GPU(s) of that offer on {host} were just rented by someone else; "
                                f"nothing was charged: try again")
            if lease.get("workspace"):
                check_kept(store, lease)
            live = store.live_count(renter)
            if live >= self._config.max_leases:
                raise BrokerError(f"you have {live} live leases, the most this broker allows per renter "
                                  f"(operator limit BROKER_MAX_LEASES={self._config.max_leases}); release one first")
            store.insert_lease(lease)
            if lease["held"]:
                store.post(ledger.hold_key(lease["id"]), "hold", ledger.hold(lease["renter"], lease["held"]),
                           lease=lease["id"], renter=lease["renter"],
                           memo=f"{format_duration(lease['ends_at'] - lease['created'])} on {lease['host']}")
        return lease

    def new_lease(self, renter: str, host: str, image: str, seconds: int, gpus: list[str] = (),
                  gpu_name: str | None = None, price: int = 0) -> dict:
        check_length(self._config, seconds)
        now = self._now()
        return {"id": secrets.token_hex(4), "renter": renter, "host": host, "image": image, "state": "pending",
                "created": now, "ends_at": now + seconds, "gpus": list(gpus), "gpu_name": gpu_name,
                "price": price, "fee_percent": self._config.fee_percent,
                "held": hold_for(price, len(gpus), seconds), "broker": self._cluster.id}

    async def launch(self, lease: dict, progress=None, pull: bool = False, closes: float | None = None) -> dict:
        """Start the lease on its host (pulling its image there first when pull), here or, when its
        host's tunnel is on another broker of the cluster, by that broker. It runs as a task of its
        own: a renter who cuts the connection meanwhile does not cancel it; it completes (the lease
        is in `ctl ls`) or fails."""
        self.in_flight.add(lease["id"])
        local = self._reach.local(lease["host"]) or not await self._reach.owner(lease["host"])
        start = self._start_on_host(lease, progress, pull, closes) if local else \
            self._start_elsewhere(lease, progress, pull, closes)
        task = self._tasks.spawn(start)
        task.add_done_callback(lambda _: self.in_flight.discard(lease["id"]))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled() and not asyncio.current_task().cancelling():  # released while pulling
                raise BrokerError(f"lease {lease['id']} was released during its image's pull: "
                                  f"fully refunded") from None
            raise

    async def launch_here(self, lid: str, progress, pull: bool, closes, caller: str | None = None) -> dict:
        """Another broker's renter rented on a host whose tunnel is here: the start is this broker's
        from now on (the lease's broker), so that it completes or fails here whatever becomes of
        that broker. Only the broker that opened the lease (caller) may hand it over."""
        lease = await self._db(self._store.lease, lid)
        if caller is not None and lease["broker"] != caller:
            raise BrokerError(f"lease {lid} is not that broker's to start")
        if not self._reach.local(lease["host"]):
            raise Unavailable(f"host {lease['host']!r} is offline")
        changed(await self._db(lambda: self._store.update_lease(lid, expect_state="pending", broker=self._cluster.id)),
                f"lease {lid}")
        lease["broker"] = self._cluster.id
        return await self.launch(lease, progress, pull, closes)

    async def _start_elsewhere(self, lease: dict, progress, pull: bool, closes) -> dict:
        """The broker that holds the host's tunnel starts it (the lease becomes that broker's). If the
        call fails on the way (the link dropped, this broker stops), the lease is what decides: a start
        that broker took is left to it and followed here; one it never took is failed and refunded."""
        lid = lease["id"]
        try:
            owner = await self._reach.owner(lease["host"])
            if owner is None:
                raise Unavailable(f"host {lease['host']!r} is offline")
            await self._reach.peers.call(owner, "launch", lambda item: _quietly(progress, item),
                                         timeout=self._config.start_timeout * 13, lease=lid, pull=pull, closes=closes)
        except BaseException as exc:
            now = await self._db(self._store.lease, lid)
            if now["broker"] == self._cluster.id or isinstance(exc, BrokerError) and not isinstance(exc, Unavailable):
                await self._db(self.fail, lid, str(exc) or type(exc).__name__)  # refused there, or never taken
                self._market.changed()
                raise
            if isinstance(exc, asyncio.CancelledError):
                raise  # this broker stops: the start is the other broker's
            return await self._follow(lid, exc)
        self._market.changed()
        return await self._db(self._store.lease, lid)

    async def _follow(self, lid: str, why: BaseException) -> dict:
        """A start another broker took, after the call to it failed: its outcome, read from the lease
        (failed by that broker, or by the others once that broker is gone)."""
        deadline = self._now() + self._config.start_timeout * 13
        while self._now() < deadline:
            lease = await self._db(self._store.lease, lid)
            if lease["state"] == "active":
                self._market.changed()
                return lease
            if lease["state"] not in ("pending", "starting"):
                raise BrokerError(f"lease {lid} did not start: {lease['error'] or lease['state']}")
            await asyncio.sleep(0.5)
        raise Unavailable(f"lease {lid}: its start was left to the broker that holds its host ({why}); "
                          f"see ctl ls")

    async def _start_on_host(self, lease: dict, progress, pull: bool = False, closes: float | None = None) -> dict:
        """Active only once its container runs; any failure fails and refunds it in one transaction
        and has the host discard whatever it made."""
        lid = lease["id"]

        def say(item):
            _quietly(progress, item)

        try:
            await self._set_state(lease, "starting")
            await faults.point("rent.starting")
            link = self._reach.local(lease["host"])
            if not link:
                raise Unavailable(f"host {lease['host']!r} is offline")
            if pull:
                await self._pulls.pull(link, lease, say, closes)
            say(f"starting the container on {lease['host']}...")
            reply = await link.call("lease.start", timeout=self._config.start_timeout, lease={
                "id": lid, "renter": lease["renter"], "image": lease["image"], "ends_at": lease["ends_at"],
                "gpus": lease["gpus"], "auto": bool(lease.get("auto")),
                **({"workspace": lease["workspace"]} if lease.get("workspace") else {})})
            try:
                container = protocol.container_id(reply.get("container"))
            except protocol.WireError:
                raise Unavailable(f"host {lease['host']} answered lease.start without a container id") from None
            disk = reply.get("disk_gb", 0)  # its disk share there (a taken workspace keeps its size)
            await faults.point("rent.started")
            await self._db(self._activate, lease, container, disk if protocol.number_in(disk, 0, 1 << 30) else 0)
        except BaseException as exc:
            error = str(exc) or type(exc).__name__
            try:
                await self._db(self.fail, lid, error)
            finally:
                self._market.changed()
                self._sync(lease["host"])  # the host discards what it made, now or when it is back
            raise
        self._market.changed()
        return await self._db(self._store.lease, lid)

    def _activate(self, lease: dict, container: str, disk_gb: float = 0) -> None:
        """The lease runs (store thread); one that took an ended lease's workspace ends that lease's
        files view in the same transaction (the files are the new lease's now)."""
        with self._store.tx():
            changed(self._store.update_lease(lease["id"], expect_state="starting", state="active", container=container,
                                             started=self._now(), host_ends_at=lease["ends_at"], disk_gb=disk_gb),
                    f"lease {lease['id']}")
            if lease.get("workspace"):
                self._store.update_lease(lease["workspace"], expect_state="ended", state="purged")

    def fail(self, lid: str, error: str) -> None:
        """Fail a lease that did not start and refund all it held, in one transaction (store thread);
        a failed lease not yet refunded is refunded."""
        store = self._store
        with store.tx():
            lease = store.lease(lid, for_update=True)
            if lease["state"] in ("pending", "starting"):
                changed(store.update_lease(lid, expect_state=lease["state"], state="failed", error=error[:300],
                                           host_ended=None), f"lease {lid}")
            elif lease["state"] != "failed":
                return
            store.post(ledger.settle_key(lid), "refund",
                       ledger.settle(lease["renter"], lease["host"], lease["held"], 0, 0),
                       lease=lid, renter=lease["renter"], memo="lease failed to start: full refund")

    async def _set_state(self, lease: dict, state: str) -> None:
        advance(lease["state"], state)
        was, lease["state"] = lease["state"], state
        changed(await self._db(lambda: self._store.update_lease(lease["id"], expect_state=was, state=state)),
                f"lease {lease['id']}")

    async def create_lease(self, renter: str, host: str, hours: float, image: str) -> dict:
        """Admin: a lease on a named host, no GPUs, no charge."""
        if not (math.isfinite(hours) and 0 < hours <= 24 * 30):
            raise BrokerError(f"bad duration {hours} h: must be more than 0 and at most 720")
        await self._db(self._store.require_renter, renter)
        inv = (await self._db(self._store.host, host))["inventory"] or {}
        if not await self._reach.link(host):
            raise Unavailable(f"host {host!r} is offline")
        lease = await self._db(self.open_lease, self.new_lease(renter, host, image, int(hours * 3600)))
        listed = image in protocol.image_list(inv.get("images", ""))
        return await self.launch(lease, pull=listed and image not in inv.get("ready", [image]))

    async def rent(self, renter: str, text: str, seconds: int, gpus: int, image: str, progress=None,
                   auto: bool = False, workspace: str | None = None) -> dict:
        """Pick an offer, hold the credit, start the container; all or nothing. auto: extend it by a
        step before each end while credit and limits allow; workspace: the renter's ended lease
        whose /workspace it takes (the query then names that lease's host)."""
        if gpus < 1:
            raise BrokerError("--gpus must be at least 1")
        check_length(self._config, seconds)
        for tries_left in (1, 0):
            async with self._rent_lock:  # one rent of this broker picks at a time
                offer = await self._pick(text, gpus, image)
                self._check_fit(offer, seconds)
                lease = self.new_lease(renter, offer["host_id"], image, seconds, offer["gpus"][:gpus],
                                       offer["gpu_name"], offer["price"])
                lease.update(auto=auto_step(seconds) if auto else 0, workspace=workspace)
                try:
                    await self._db(self.open_lease, lease)
                    break
                except GpusTaken:  # another broker's rent took them: the offers afresh, once
                    self._market.changed()
                    if not tries_left:
                        raise
        pull = not _ready(offer, image)
        return await self.launch(lease, progress, pull, offer["window_end"])

    async def _pick(self, text: str, gpus: int, image: str) -> dict:
        """The best offer for the query whose host allows the image, among those that have it
        already if any fits (the others pull it first); a one-line error naming the images that are
        allowed when none does."""
        offers = await self._market.offers(text)
        allowing = [o for o in offers if protocol.image_allowed(o["images"], image)]
        if offers and not allowing:
            allowed = sorted({i for o in offers for i in protocol.image_list(o["images"])})
            raise BrokerError(f"image {image!r} is not allowed by the matching offers; allowed: {', '.join(allowed)}")
        ready = [o for o in allowing if _ready(o, image) and o["num_gpus"] >= gpus]
        return offers_mod.choose(ready or allowing, text, gpus)

    def _check_fit(self, offer: dict, seconds: int) -> None:
        closes = offer["window_end"]
        if closes and self._now() + seconds > closes:
            raise BrokerError(f"host {offer['host_id']} is available for at most "
                              f"{format_duration(closes - self._now())} from now")

    async def quote(self, text: str, seconds: int, gpus: int, image: str = DEFAULT_IMAGE) -> tuple[dict, int]:
        check_length(self._config, seconds)
        offer = await self._pick(text, gpus, image)
        return offer, hold_for(offer["price"], gpus, seconds)
