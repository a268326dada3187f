"""Hosts: invitations, who is behind a tunnel (its pinned key or a join token, and its clock), its
connects and disconnects, the inventory it offers and the earnings it is told."""
import json
import logging
import math
import socket
import time

from shellrent.keys import material, tokens

from . import inventory as inventory_mod, ledger
from .accounts import check_name
from .config import public_address
from .errors import Banned, BrokerError, Unavailable

log = logging.getLogger("shellrent.service")


def invite(store, config, host: str, broker_fpr: str) -> str:
    """Make a single-use join token for host; only its hash is stored."""
    check_name("host", host)
    secret = tokens.new_secret()
    store.add_token(host, tokens.hash_secret(secret), time.time() + config.token_ttl)
    return tokens.make(secret, broker_fpr)


def join_address(config) -> str:
    """HOST:PORT a provider's `hostd join` dials: BROKER_PUBLIC_HOST's name (else the address the
    tunnel listens on, else this machine's name) and the tunnel port the running broker serves on."""
    try:
        bound, port = json.loads((config.home / "serve.json").read_text())["tunnel"]
    except (OSError, ValueError, KeyError, TypeError):
        bound, port = config.tunnel_addr
    name = public_address(config.public_host, ("", port))[0] or ("" if bound in ("0.0.0.0", "::", "") else bound) or socket.gethostname()
    return f"[{name}]:{port}" if ":" in name else f"{name}:{port}"


def skew_error(theirs, now: float, max_skew: float) -> str | None:
    """Why a host whose hello says its clock reads `theirs` is refused (it times leases by that
    clock), or None; a hello without a usable time is not judged."""
    if not (isinstance(theirs, (int, float)) and not isinstance(theirs, bool) and math.isfinite(theirs)):
        return None
    skew = theirs - now
    if abs(skew) <= max_skew:
        return None
    return (f"the host's clock is {abs(skew):.0f} s {'ahead of' if skew > 0 else 'behind'} the broker's (at most "
            f"{max_skew:.0f} s allowed): set its time (e.g. enable NTP); hostd reconnects by itself")


class Hosts:
    def __init__(self, config, db, store, links, market, tasks, now, reconcile, cluster):
        self._config, self._db, self._store, self._links, self._cluster = config, db, store, links, cluster
        self._market, self._tasks, self._now = market, tasks, now
        self._reconcile = reconcile  # hostsync: the host's record and the broker's, agreed at connect

    async def identify(self, conn, key, hello: dict) -> str:
        """Name of the host behind a tunnel: by its pinned key, or by joining with a token. A host
        whose clock is off by more than max_skew is refused: it times leases by that clock."""
        fpr = material.fingerprint(key)
        why = skew_error(hello.get("time"), self._now(), self._config.max_skew)
        if why:
            raise BrokerError(why)
        host = await self._db(self._store.host_by_key, fpr)
        now = self._now()
        if host:
            if host["banned"]:
                raise Banned(f"host {host['name']} is banned by the broker's operator")
            name = host["name"]
        elif hello.get("token"):
            name = await self._db(self._store.consume_token, tokens.hash_secret(hello["token"]), fpr,
                                  material.public_line(key), now)
        else:
            here = conn.get_extra_info("sockname") or ("the broker", "")
            raise BrokerError(f"this host is not registered: run `hostd join {here[0]}:{here[1]} TOKEN` first, "
                              f"with a token from the broker's operator (broker host invite NAME)")
        await self._db(self._store.touch_host, name, now)
        return name

    async def connected(self, link, hello: dict) -> None:
        """Record uptime and inventory, settle what changed while apart, follow the host's events."""
        now = self._now()
        self._market.changed()
        await self._db(self._store.host_up, link.name, now)
        if hello.get("inventory") is not None:
            await self.set_inventory(link.name, hello["inventory"])
        theirs = hello.get("leases")
        await self._reconcile(link, theirs if isinstance(theirs, dict) else {})
        self._tasks.spawn(self.send_earnings(link.name))

    async def set_inventory(self, host: str, raw) -> None:
        """Keep a host's inventory if every field checks out; otherwise keep the host out of offers."""
        try:
            inv, error = inventory_mod.check(raw, int(self._config.max_price * 1_000_000)), None
        except inventory_mod.InventoryError as exc:
            inv, error = None, str(exc)
            log.warning("host %s: inventory refused (%s); its offers are withdrawn", host, error)
        await self._db(self._store.set_inventory, host, inv, error)
        self._market.changed()
        links = self._links()
        link = links.get(host) if links else None
        if link:  # the provider's `hostd status` says why its offers are withdrawn (or that they are not)
            self._tasks.spawn(self._verdict(link, error))

    async def _verdict(self, link, error: str | None) -> None:
        try:
            await link.call("inventory.verdict", timeout=10, error=error)
        except Unavailable:
            pass

    async def welcome(self, name: str, seen: int = 0) -> dict:
        """What a host is told when it is welcomed here: the epoch this broker drives it at (it
        refuses calls of a lower one) and where every live broker's tunnel is (it moves to another
        when it loses this one)."""
        brokers = await self._cluster.tunnels()
        return {"epoch": await self._cluster.own(name, seen), "brokers": brokers}

    async def disconnected(self, name: str, at: float | None = None, epoch: int | None = None) -> None:
        """The host's tunnel here closed; its uptime ends unless another broker holds it by now."""
        self._market.changed()
        at = min(at or self._now(), self._now())
        if epoch is not None:
            await self._cluster.disown(name, epoch, at)
        else:
            await self._db(self._store.host_down, name, at)

    async def send_earnings(self, host: str) -> None:
        links = self._links()
        link = links.get(host) if links else None
        if link:
            earned = await self._db(self._store.balance, ledger.provider(host))
            try:
                await link.call("earnings", timeout=10, earned=earned)
            except Unavailable:
                pass
