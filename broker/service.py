"""Broker use cases: renters, host joins, the market, leases and their money.

Plain code over the store, the tunnel registry and the pure rules (leases, ledger, offers, query);
no sockets of its own. Store calls run on the store's one thread (Broker.db).
"""
import asyncio
import json
import logging
import math
import re
import secrets
import time

import asyncssh

from shellrent.common import faults, protocol
from shellrent.keys import material, tokens

from . import billing, inventory as inventory_mod, ledger, offers as offers_mod, query
from .config import Config
from .errors import BrokerError, NotFound, Unavailable
from .leases import advance, credits, format_duration, hold_for, parse_window, reliability, window_end
from .hostsync import HostSync
from .channels import ChannelRegistry
from .store import Db, Store
from .tasks import Tasks
from .tunnels import HostLink, Refused, Tunnels

log = logging.getLogger("shellrent.service")

NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
DEFAULT_IMAGE = "shellrent-base:bookworm"
PULL_LIMIT = 3600  # seconds a rent waits on its image's pull, progress or not


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


def check_name(kind: str, name: str) -> str:
    """Renter and host names: lowercase letters, digits, - and _, up to 32."""
    if not NAME_RE.match(name):
        raise BrokerError(f"bad {kind} name {name!r}: use lowercase letters, digits, - and _ (max 32)")
    return name


def add_renter(store: Store, name: str, key_text: str) -> str:
    """Register a renter with one public key; returns the key's fingerprint."""
    check_name("renter", name)
    key = _one_key(key_text)
    fpr = material.fingerprint(key)
    store.add_renter(name, fpr, material.public_line(key))
    return fpr


def _one_key(key_text: str) -> asyncssh.SSHKey:
    try:
        return material.parse_authorized_keys(key_text)[0]
    except material.KeyError_ as exc:
        raise BrokerError(f"public key: {exc}") from None


def invite(store: Store, config: Config, host: str, broker_fpr: str) -> str:
    """Make a single-use join token for host; only its hash is stored."""
    check_name("host", host)
    secret = tokens.new_secret()
    store.add_token(host, tokens.hash_secret(secret), time.time() + config.token_ttl)
    return tokens.make(secret, broker_fpr)


def credit(store: Store, renter: str, amount: int) -> int:
    """Operator adds credit to a renter; returns the new balance."""
    store.require_renter(renter)
    store.post(ledger.deposit_key(secrets.token_hex(8)), "deposit", ledger.deposit(renter, amount), renter=renter)
    return store.balance(ledger.renter(renter))


def lease_from_username(username: str) -> tuple[str, str | None]:
    """('rent'|'ctl', lease or None) from the login name; BrokerError for anything else."""
    base, _, lease = username.partition("+")
    if base not in ("rent", "ctl") or (base == "ctl" and lease):
        raise BrokerError(f"unknown user {username!r}: log in as rent, rent+LEASE or ctl")
    return base, lease or None


def pick_lease(leases: list[dict], renter: str, wanted: str | None, now: float,
               files_only: bool = False) -> dict:
    """The lease a login reaches: the one named, or the only active one.

    With files_only (sftp), an ended lease whose workspace is still kept may be named too."""
    active = [lease for lease in leases if lease["state"] == "active" and lease["ends_at"] > now]
    if wanted:
        for lease in leases:
            if lease["id"] == wanted:
                if lease in active or (files_only and lease["state"] in ("ending", "ended")):
                    return lease
                if lease["state"] == "active":  # its time is up; the broker is ending it this second
                    raise BrokerError(f"lease {wanted} has ended: its time ran out at "
                                      f"{time.strftime('%H:%M:%S UTC', time.gmtime(lease['ends_at']))}")
                raise BrokerError(f"lease {wanted} is {lease['state']}, not active"
                                  + ("" if files_only or lease["state"] != "ended"
                                     else f" (its files stay readable: sftp rent+{wanted}@...)"))
        raise NotFound(f"no lease {wanted!r} for renter {renter}")
    if not active:
        raise NotFound(f"renter {renter} has no active lease; rent one with: ssh ctl@BROKER rent --hours 1")
    if len(active) > 1:
        ids = " ".join(lease["id"] for lease in active)
        raise BrokerError(f"several active leases ({ids}): log in as rent+LEASE")
    return active[0]


class Broker(HostSync):
    """The running broker's use cases."""

    def __init__(self, config: Config, store: Store, tunnels: Tunnels | None = None, now=time.time):
        super().__init__()
        self.config = config
        self.store = store
        self.now = now  # the clock every use case reads (tests pass their own)
        self.tunnels = tunnels
        self._db = Db(store)
        self._rent_lock = asyncio.Lock()
        self._market_cache: list[dict] | None = None
        self._market_at = 0.0
        self._offer_memo: dict = {}  # offers.build keeps each host's offers here between builds
        self._market_gen = 0    # bumped by every change; a build started before a bump is not kept
        self._market_built = -1
        self.channels = ChannelRegistry()  # renters' open channels, by lease
        self.tasks = Tasks()
        self._launching: set[str] = set()  # leases whose start call is under way in this process
        self._pull_watch: dict[tuple[str, str], list] = {}  # (host, image) -> the rents waiting on its pull
        self._pulling: dict[str, asyncio.Task] = {}  # lease id -> its start task, while its image is pulled
        self._syncing: dict[str, asyncio.Task] = {}  # lease id -> the task telling its host what changed
        self._retry: dict[str, tuple[float, int]] = {}  # lease id -> (next try, tries) after a failed sync
        self._full_logged = False

    def _background(self, coro) -> asyncio.Task:
        return self.tasks.spawn(coro)

    def market_changed(self) -> None:
        """Inventories, connections or leases changed: build the offers afresh next time."""
        self._market_gen += 1

    async def db(self, fn, *args):
        """Run a store call on the store's own thread (store.writer.Db)."""
        return await self._db.run(fn, *args)

    def close(self) -> None:
        self._db.close()

    # logins
    async def renter_for_key(self, key: asyncssh.SSHKey) -> str | None:
        return await self.db(self.store.renter_by_key, material.fingerprint(key))

    async def session_target(self, renter: str, wanted: str | None,
                             files_only: bool = False) -> tuple[asyncssh.SSHClientConnection, str]:
        """(host connection, lease id) a renter's login reaches."""
        leases = await self.db(self.store.leases, renter, not wanted)
        lease = pick_lease(leases, renter, wanted, self.now(), files_only)
        link = self.tunnels.get(lease["host"])
        if not link:
            host = await self.db(self.store.host, lease["host"])
            if host["banned"]:
                raise Unavailable(f"lease {lease['id']} has ended: the operator removed its host "
                                  f"(the unused time is refunded)")
            raise Unavailable(f"host of lease {lease['id']} is offline; try again shortly")
        return link.conn, lease["id"]

    # hosts
    async def identify_host(self, conn: asyncssh.SSHClientConnection, key: asyncssh.SSHKey,
                            hello: dict) -> str:
        """Name of the host behind a tunnel: by its pinned key, or by joining with a token. A host
        whose clock is off by more than max_skew is refused: it times leases by that clock."""
        fpr = material.fingerprint(key)
        theirs = hello.get("time")
        if isinstance(theirs, (int, float)) and not isinstance(theirs, bool) and math.isfinite(theirs):
            skew = theirs - self.now()
            if abs(skew) > self.config.max_skew:
                raise BrokerError(f"the host's clock is {abs(skew):.0f} s {'ahead of' if skew > 0 else 'behind'} "
                                  f"the broker's (at most {self.config.max_skew:.0f} s allowed): set its time "
                                  f"(e.g. enable NTP); hostd reconnects by itself")
        host = await self.db(self.store.host_by_key, fpr)
        now = self.now()
        if host:
            if host["banned"]:
                raise BrokerError(f"host {host['name']} is banned")
            name = host["name"]
        elif hello.get("token"):
            name = await self.db(self.store.consume_token, tokens.hash_secret(hello["token"]), fpr,
                                 material.public_line(key), now)
        else:
            raise BrokerError("this host is not registered: run `hostd join BROKER:PORT TOKEN` first")
        await self.db(self.store.touch_host, name, now)
        return name

    async def host_connected(self, link: HostLink, hello: dict) -> None:
        """Record uptime and inventory, settle what changed while apart, follow the host's events."""
        now = self.now()
        self.market_changed()
        await self.db(self.store.host_up, link.name, now)
        if hello.get("inventory") is not None:
            await self._set_inventory(link.name, hello["inventory"])
        theirs = hello.get("leases")
        await self._reconcile(link, theirs if isinstance(theirs, dict) else {})
        self._background(self._send_earnings(link.name))

    async def _set_inventory(self, host: str, raw) -> None:
        """Keep a host's inventory if every field checks out; otherwise keep the host out of offers."""
        try:
            inv, error = json.dumps(inventory_mod.check(raw, int(self.config.max_price * 1_000_000))), None
        except inventory_mod.InventoryError as exc:
            inv, error = None, str(exc)
            log.warning("host %s: inventory refused (%s); its offers are withdrawn", host, error)
        await self.db(self.store.set_inventory, host, inv, error)
        self.market_changed()

    async def host_disconnected(self, name: str, at: float | None = None) -> None:
        self.market_changed()
        await self.db(self.store.host_down, name, min(at or self.now(), self.now()))

    async def _send_earnings(self, host: str) -> None:
        link = self.tunnels.get(host) if self.tunnels else None
        if link:
            earned = await self.db(self.store.balance, ledger.provider(host))
            try:
                await link.call("earnings", timeout=10, earned=earned)
            except Unavailable:
                pass

    # the market
    def _market(self, now: float, online: set[str]) -> list[dict]:
        """Offers now (runs on the store thread)."""
        hosts = self.store.joined_hosts()
        since = now - 30 * 86400
        ups, downs = self.store.uptimes(since), self.store.downs_by_host(since)
        rel = {h["name"]: reliability(now, h["joined"], ups.get(h["name"], []), downs=downs.get(h["name"], []))
               for h in hosts if h["name"] in online}
        return offers_mod.build(hosts, online, self.store.busy_leases(), rel, now, self._offer_memo)

    async def market(self) -> list[dict]:
        """The offers now; rebuilt when something changed, and each minute for reliability."""
        now = self.now()
        if self._market_built == self._market_gen and now - self._market_at <= 60:
            return self._market_cache
        gen = self._market_gen
        online = set(self.tunnels.links) if self.tunnels else set()  # read on the loop, not the store thread
        offers = await self.db(self._market, now, online)
        if gen == self._market_gen:
            self._market_cache, self._market_at, self._market_built = offers, now, gen
        return offers

    async def offers(self, text: str = "", order: str | None = None) -> list[dict]:
        filters, keys = query.parse(text), query.parse_order(order)
        offers = await self.market()
        if keys:
            return query.select(offers, filters, keys)
        return sorted(query.select(offers, filters), key=offers_mod.schedule_key)

    # leases
    def _open(self, lease: dict) -> dict:
        """Insert a pending lease and hold its credit, atomically (store thread)."""
        self.market_changed()
        with self.store.tx():
            live = self.store.live_count(lease["renter"])
            if live >= self.config.max_leases:
                raise BrokerError(f"you have {live} live leases, the most this broker allows per renter "
                                  f"(operator limit BROKER_MAX_LEASES={self.config.max_leases}); release one first")
            self.store.insert_lease(lease)
            if lease["held"]:
                self.store.post(ledger.hold_key(lease["id"]), "hold", ledger.hold(lease["renter"], lease["held"]),
                                lease=lease["id"], renter=lease["renter"],
                                memo=f"{format_duration(lease['ends_at'] - lease['created'])} on {lease['host']}")
        return lease

    def _check_length(self, seconds: float) -> None:
        longest = self.config.max_lease_days * 86400
        if seconds > longest:
            raise BrokerError(f"a lease may last at most {format_duration(longest)} on this broker "
                              f"(operator limit BROKER_MAX_LEASE_DAYS={self.config.max_lease_days:g})")

    def _new_lease(self, renter: str, host: str, image: str, seconds: int, gpus: list[str] = (),
                   gpu_name: str | None = None, price: int = 0) -> dict:
        self._check_length(seconds)
        now = self.now()
        return {"id": secrets.token_hex(4), "renter": renter, "host": host, "image": image, "state": "pending",
                "created": now, "ends_at": now + seconds, "gpus": json.dumps(list(gpus)), "gpu_name": gpu_name,
                "price": price, "fee_percent": self.config.fee_percent,
                "held": hold_for(price, len(gpus), seconds)}

    async def _launch(self, lease: dict, progress=None, pull: bool = False, closes: float | None = None) -> dict:
        """Start the lease on its host (pulling its image there first when pull). It runs as a task
        of its own: a renter who cuts the connection meanwhile does not cancel it; it completes (the
        lease is in `ctl ls`) or fails."""
        self._launching.add(lease["id"])
        task = self._background(self._start_on_host(lease, progress, pull, closes))
        task.add_done_callback(lambda _: self._launching.discard(lease["id"]))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled() and not asyncio.current_task().cancelling():  # released while pulling
                raise BrokerError(f"lease {lease['id']} was released during its image's pull: "
                                  f"fully refunded") from None
            raise

    async def _start_on_host(self, lease: dict, progress, pull: bool = False, closes: float | None = None) -> dict:
        """Active only once its container runs; any failure fails and refunds it in one transaction
        and has the host discard whatever it made."""
        lid = lease["id"]

        def say(item):
            _quietly(progress, item)

        try:
            await self._set_state(lease, "starting")
            await faults.point("rent.starting")
            link = self.tunnels.get(lease["host"])
            if not link:
                raise Unavailable(f"host {lease['host']!r} is offline")
            if pull:
                await self._pull(link, lease, say, closes)
            say(f"starting the container on {lease['host']}...")
            reply = await link.call("lease.start", timeout=self.config.start_timeout, lease={
                "id": lid, "renter": lease["renter"], "image": lease["image"], "ends_at": lease["ends_at"],
                "gpus": json.loads(lease["gpus"])})
            try:
                container = protocol.container_id(reply.get("container"))
            except protocol.WireError:
                raise Unavailable(f"host {lease['host']} answered lease.start without a container id") from None
            await faults.point("rent.started")
            await self.db(lambda: self.store.update_lease(lid, state="active", container=container,
                                                          started=self.now(), host_ends_at=lease["ends_at"]))
        except BaseException as exc:
            error = str(exc) or type(exc).__name__
            try:
                await self.db(self._fail, lid, error)
            finally:
                self.market_changed()
                self.sync(lease["host"])  # the host discards what it made, now or when it is back
            raise
        self.market_changed()
        return await self.db(self.store.lease, lid)

    async def _pull(self, link, lease: dict, say, closes: float | None) -> None:
        """Have the host pull the lease's image (listed there, not there yet), passing its progress to
        the renter; the call waits while progress comes, at most PULL_LIMIT in all. The lease's time
        starts once the image is there (the hold covers it: the length is unchanged)."""
        key, started = (lease["host"], lease["image"]), time.monotonic()
        last, most = [started], [(-1, -1)]

        def watch(view: dict) -> None:
            if (view["done"], view["bytes"]) > most[0]:  # only progress that advances keeps the rent waiting
                most[0], last[0] = (view["done"], view["bytes"]), time.monotonic()
                say(view)

        self._pull_watch.setdefault(key, []).append(watch)
        self._pulling[lease["id"]] = asyncio.current_task()
        try:
            await asyncio.wait_for(link.call("image.pull", timeout=self.config.start_timeout, alive=lambda: last[0],
                                             image=lease["image"]), PULL_LIMIT)
        except asyncio.TimeoutError:
            raise Unavailable(f"pulling {lease['image']} took longer than {format_duration(PULL_LIMIT)}") from None
        finally:
            self._pulling.pop(lease["id"], None)
            self._pull_watch[key].remove(watch)
            if not self._pull_watch[key]:
                del self._pull_watch[key]
        say(f"pulled {lease['image']} in {time.monotonic() - started:.1f}s")
        length = lease["ends_at"] - lease["created"]
        lease["ends_at"] = min(self.now() + length, closes or math.inf)
        if lease["ends_at"] < self.now() + 60:
            raise BrokerError(f"host {lease['host']}'s window closed during the pull")
        await self.db(lambda: self.store.update_lease(lease["id"], ends_at=lease["ends_at"]))

    def pull_progress(self, host: str, view: dict) -> None:
        """A host's pull.progress event (checked): to the rents waiting on that pull."""
        for watch in list(self._pull_watch.get((host, view["image"]), ())):
            watch(view)

    def _fail(self, lid: str, error: str) -> None:
        """Fail a lease that did not start and refund all it held, in one transaction (store thread);
        a failed lease not yet refunded is refunded."""
        with self.store.tx():
            lease = self.store.lease(lid)
            if lease["state"] in ("pending", "starting"):
                self.store.update_lease(lid, state="failed", error=error[:300], host_ended=None)
            elif lease["state"] != "failed":
                return
            self.store.post(ledger.settle_key(lid), "refund",
                            ledger.settle(lease["renter"], lease["host"], lease["held"], 0, 0),
                            lease=lid, renter=lease["renter"], memo="lease failed to start: full refund")

    async def _set_state(self, lease: dict, state: str) -> None:
        advance(lease["state"], state)
        lease["state"] = state
        await self.db(lambda: self.store.update_lease(lease["id"], state=state))

    async def create_lease(self, renter: str, host: str, hours: float, image: str) -> dict:
        """Admin: a lease on a named host, no GPUs, no charge."""
        if not (math.isfinite(hours) and 0 < hours <= 24 * 30):
            raise BrokerError(f"bad duration {hours} h: must be more than 0 and at most 720")
        await self.db(self.store.require_renter, renter)
        inv = json.loads((await self.db(self.store.host, host))["inventory"] or "{}")
        if not self.tunnels.get(host):
            raise Unavailable(f"host {host!r} is offline")
        lease = await self.db(self._open, self._new_lease(renter, host, image, int(hours * 3600)))
        listed = image in protocol.image_list(inv.get("images", ""))
        return await self._launch(lease, pull=listed and image not in inv.get("ready", [image]))

    async def rent(self, renter: str, text: str, seconds: int, gpus: int, image: str, progress=None) -> dict:
        """Pick an offer, hold the credit, start the container; all or nothing."""
        if gpus < 1:
            raise BrokerError("--gpus must be at least 1")
        self._check_length(seconds)
        async with self._rent_lock:  # GPUs are taken by the lease row, so one rent picks at a time
            offer = await self._pick(text, gpus, image)
            self._check_fit(offer, seconds)
            lease = self._new_lease(renter, offer["host_id"], image, seconds, offer["gpus"][:gpus],
                                    offer["gpu_name"], offer["price"])
            await self.db(self._open, lease)
        pull = not _ready(offer, image)
        return await self._launch(lease, progress, pull, offer["window_end"])

    async def _pick(self, text: str, gpus: int, image: str) -> dict:
        """The best offer for the query whose host allows the image, among those that have it
        already if any fits (the others pull it first); a one-line error naming the images that are
        allowed when none does."""
        offers = await self.offers(text)
        allowing = [o for o in offers if protocol.image_allowed(o["images"], image)]
        if offers and not allowing:
            allowed = sorted({i for o in offers for i in protocol.image_list(o["images"])})
            raise BrokerError(f"image {image!r} is not allowed by the matching offers; allowed: {', '.join(allowed)}")
        ready = [o for o in allowing if _ready(o, image) and o["num_gpus"] >= gpus]
        return offers_mod.choose(ready or allowing, text, gpus)

    def _check_fit(self, offer: dict, seconds: int) -> None:
        closes = offer["window_end"]
        if closes and self.now() + seconds > closes:
            raise BrokerError(f"host {offer['host_id']} is available for at most "
                              f"{format_duration(closes - self.now())} from now")

    async def quote(self, text: str, seconds: int, gpus: int, image: str = DEFAULT_IMAGE) -> tuple[dict, int]:
        self._check_length(seconds)
        offer = await self._pick(text, gpus, image)
        return offer, hold_for(offer["price"], gpus, seconds)

    async def _own_lease(self, renter: str, lease_id: str | None) -> dict:
        leases = await self.db(self.store.leases, renter, not lease_id)
        return pick_lease(leases, renter, lease_id, self.now())

    async def extend(self, renter: str, lease_id: str | None, seconds: int) -> dict:
        """More time on an active lease, if the host has it and the credit covers it. The new end
        and its hold are one transaction; telling the host runs as its own task (a cut connection
        does not stop it). A host that refuses undoes it; one that does not answer is told later."""
        lease = await self._own_lease(renter, lease_id)
        lid = lease["id"]
        link = self.tunnels.get(lease["host"])
        if not link:
            raise Unavailable(f"host {lease['host']!r} is offline; cannot extend now")
        host = await self.db(self.store.host, lease["host"])
        window = json.loads(host["inventory"]).get("window", "always") if host.get("inventory") else "always"
        closes = window_end(self.now(), parse_window(window))
        added, n = await self.db(self._add_time, lid, seconds, closes)
        await faults.point("extend.held")
        return await asyncio.shield(self._background(self._tell_extension(link, lid, seconds, added, n)))

    async def _tell_extension(self, link: HostLink, lid: str, seconds: int, added: int, n: int) -> dict:
        lease = await self.db(self.store.lease, lid)
        try:
            await link.call("lease.extend", id=lid, ends_at=lease["ends_at"])
        except Refused:
            await self.db(self._undo_time, lid, seconds, added, n)
            raise
        except Unavailable as exc:
            log.warning("lease %s: host did not confirm the extension (%s); it is told when it answers", lid, exc)
            return lease
        await self.db(self.store.acknowledged_end, lid, lease["ends_at"])
        return await self.db(self.store.lease, lid)

    def _add_time(self, lid: str, seconds: int, closes: float | None = None) -> tuple[int, int]:
        """Hold credit for more time and move the end (store thread); returns the amount held and
        the extension's number. The limits are checked again here, on the row as it is now, so that
        concurrent extensions cannot pass them together."""
        with self.store.tx():
            lease = self.store.lease(lid)
            if lease["state"] != "active":
                raise BrokerError(f"lease {lid} is {lease['state']}; only active leases can be extended")
            self._check_length(lease["ends_at"] + seconds - (lease["started"] or lease["created"]))
            if closes and lease["ends_at"] + seconds > closes:
                raise BrokerError(f"host {lease['host']} is available only until "
                                  f"{time.strftime('%H:%M UTC', time.gmtime(closes))}")
            n = lease["extensions"] + 1
            amount = hold_for(lease["price"], len(json.loads(lease["gpus"])), seconds)
            if amount:
                self.store.post(ledger.extend_key(lid, n), "hold", ledger.hold(lease["renter"], amount), lease=lid,
                                renter=lease["renter"], memo=f"extend {format_duration(seconds)}")
            self.store.update_lease(lid, ends_at=lease["ends_at"] + seconds, held=lease["held"] + amount,
                                    extensions=n)
        return amount, n

    def _undo_time(self, lid: str, seconds: int, amount: int, n: int) -> None:
        """Take back extension n that the host refused (store thread). Once the lease is settled
        there is nothing to take back: settling returned all that was held."""
        with self.store.tx():
            lease = self.store.lease(lid)
            if self.store.posted(ledger.settle_key(lid)) or lease["state"] != "active":
                log.warning("lease %s: extension %d refused after the lease ended; nothing to undo", lid, n)
                return
            if amount and not self.store.post(ledger.undo_key(lid, n), "refund",
                                              ledger.release(lease["renter"], amount), lease=lid,
                                              renter=lease["renter"], memo="extension refused by the host"):
                return  # undone before
            self.store.update_lease(lid, ends_at=lease["ends_at"] - seconds, held=lease["held"] - amount,
                                    host_ends_at=None)

    async def release(self, renter: str | None, lease_id: str | None) -> dict:
        """End a lease now: billing stops at this moment (settled in the same transaction as the
        end); the host then stops the container, told until it acknowledges."""
        if renter and lease_id and lease_id in self._pulling:
            lease = await self.db(self.store.lease, lease_id)
            if lease["renter"] == renter:
                return await self._cancel_pull(lease_id)
        if renter:
            lease = await self._own_lease(renter, lease_id)
        else:
            lease = await self.db(self.store.lease, lease_id)
            if lease["state"] in ("pending", "starting"):
                raise BrokerError(f"lease {lease_id} is starting; stop it once it is active")
            if lease["state"] != "active":
                raise BrokerError(f"lease {lease_id} is already {lease['state']}")
        return await asyncio.shield(self._background(self._release(lease["id"], self.now())))

    async def _cancel_pull(self, lid: str) -> dict:
        """Release a rent still waiting on its image's pull: it fails, fully refunded (the host's pull
        goes on, for the next rent)."""
        task = self._pulling[lid]
        task.cancel(msg="released during its image's pull")
        try:
            await asyncio.shield(task)
        except BaseException:  # cancelled: _start_on_host failed and refunded the lease
            pass
        return await self.db(self.store.lease, lid)

    async def _release(self, lid: str, at: float) -> dict:
        await self.end_lease(lid, at)
        await faults.point("release.settled")
        try:
            async with asyncio.timeout(self.config.stop_timeout):
                # a push already under way (an extension being told) may come first: then the stop
                for _ in range(2):
                    if await asyncio.shield(self.sync_lease(lid)) and \
                            (await self.db(self.store.lease, lid))["host_ended"] is not None:
                        break
        except TimeoutError:
            log.warning("lease %s: host has not confirmed the stop yet; it is told until it does", lid)
        return await self.db(self.store.lease, lid)

    async def end_lease(self, lid: str, at: float) -> None:
        """Mark a lease ended at `at` (never before its start nor after now) and settle it, in one
        transaction; settling twice charges once. The renters' channels to it are closed."""
        charged = await self.db(self._end, lid, at)
        self.channels.close_lease(lid, f"lease {lid} has ended")
        if charged is not None:
            lease = await self.db(self.store.lease, lid)
            log.info("lease %s ended; charged %s", lid, credits(charged))
            self._background(self._send_earnings(lease["host"]))

    def _end(self, lid: str, at: float) -> int | None:
        self.market_changed()
        with self.store.tx():
            lease = self.store.lease(lid)
            if lease["state"] in ("active", "ending"):
                end = min(max(at, lease["started"] or lease["created"]), lease["ends_at"], self.now())
                self.store.update_lease(lid, state="ended", ended=end)
            elif lease["state"] in ("ended", "purged"):
                end = lease["ended"] or lease["ends_at"]
            else:
                return None
            start = lease["started"] or end
            seconds, charge = self._charge(lease, start, end)
            posted = self.store.post(
                ledger.settle_key(lid), "settle",
                ledger.settle(lease["renter"], lease["host"], lease["held"], charge, lease["fee_percent"]),
                lease=lid, renter=lease["renter"],
                memo=f"{format_duration(seconds)} billed of {format_duration(end - start)}")
        return charge if posted else None

    def _charge(self, lease: dict, start: float, end: float) -> tuple[int, int]:
        """(billable seconds, charge) of a lease that ran from start to end (store thread)."""
        return billing.charge(lease["held"], lease["price"], len(json.loads(lease["gpus"])), start, end,
                              self.store.uptimes(start - 1).get(lease["host"], []), self.store.downs(lease["id"]),
                              self.config.offline_grace)

    def _end_earlier(self, lid: str, at: float) -> None:
        """The host says a settled lease's container stopped before the broker's end (store thread)."""
        with self.store.tx():
            lease = self.store.lease(lid)
            end = max(at, lease["started"] or lease["created"])
            if lease["state"] in ("ended", "purged") and end < (lease["ended"] or lease["ends_at"]):
                self.store.update_lease(lid, ended=end)
                self._reprice(lid)

    def _reprice(self, lid: str) -> None:
        """Charge a settled lease again with what is known now (down times or an earlier end the host
        reported late); refund what was charged too much, in one transaction keyed by the new charge.
        A charge never goes up after settling (store thread)."""
        with self.store.tx():
            lease = self.store.lease(lid)
            if lease["state"] not in ("ended", "purged") or not lease["started"]:
                return
            charged = self.store.charged(lid)
            seconds, charge = self._charge(lease, lease["started"], lease["ended"])
            if billing.correction(charged, charge):
                self.store.post(ledger.adjust_key(lid, charge), "refund",
                                ledger.adjust(lease["renter"], lease["host"], charged, charge, lease["fee_percent"]),
                                lease=lid, renter=lease["renter"],
                                memo=f"corrected: {format_duration(seconds)} billed of "
                                     f"{format_duration(lease['ended'] - lease['started'])}")

    async def housekeeping(self) -> None:
        """End leases whose time is over; fail starts that lost their caller; tell hosts what they
        have not acknowledged; keep host last-seen times fresh."""
        now = self.now()
        try:
            for lease in await self.db(self.store.on_banned_hosts):  # banned: its leases end, refunded
                log.warning("lease %s ends: its host %s was banned", lease["id"], lease["host"])
                await self.end_lease(lease["id"], lease["banned_at"] if lease["banned_at"] > 1 else now)
            for name in (await self.db(self.store.banned)) & set(self.tunnels.links if self.tunnels else ()):
                log.warning("host %s is banned: closing its tunnel", name)
                self.market_changed()
                self.tunnels.links[name].conn.close()
            for lease in await self.db(self.store.live_leases):
                if lease["state"] == "active" and lease["ends_at"] <= now:
                    await self.end_lease(lease["id"], lease["ends_at"])
                elif lease["state"] in ("pending", "starting") and lease["id"] not in self._launching \
                        and now - lease["created"] > 5:
                    await self.db(self._fail, lease["id"], "the broker lost the start (restart or full disk)")
            if self.tunnels:
                await self._sync_all(None)
                await self.db(self.store.touch_hosts, list(self.tunnels.links), now)
            self._full_logged = False
        except Unavailable as exc:
            if not self._full_logged:
                log.error("housekeeping: %s", exc)
                self._full_logged = True

    async def recover(self) -> None:
        """After a restart, every state a crash can leave: leases caught mid-start fail and are
        refunded (their hosts discard them); ended or failed leases not yet settled are settled;
        what hosts were not told is told when they connect (sync)."""
        await self.db(self.store.close_uptimes)
        for lease in await self.db(self.store.to_recover):
            lid = lease["id"]
            if lease["state"] in ("pending", "starting"):
                log.warning("lease %s was %s when the broker stopped: failing it", lid, lease["state"])
                await self.db(self._fail, lid, "broker restarted during start")
            elif lease["state"] == "ending":  # written by older brokers during a release
                await self.end_lease(lid, lease["ended"] or self.now())
            elif lease["state"] in ("ended", "purged"):
                await self.end_lease(lid, lease["ended"] or lease["ends_at"])
            elif lease["state"] == "failed":
                await self.db(self._fail, lid, lease["error"] or "failed")

    # account
    async def balance(self, renter: str) -> dict:
        bal = await self.db(self.store.balance, ledger.renter(renter))
        held = await self.db(self.store.balance, ledger.hold_account(renter))
        return {"renter": renter, "balance": bal, "held": held}

    async def history(self, renter: str) -> list[dict]:
        return await self.db(self.store.journal, renter)
