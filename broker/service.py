"""Broker use cases: renters, host invites and joins, leases, and which container a login reaches.

Plain code over the store and the tunnel registry; no sockets of its own.
"""
import asyncio
import re
import secrets
import time
from concurrent.futures import ThreadPoolExecutor

import asyncssh

from keys import material, tokens

from .config import Config
from .errors import BrokerError, NotFound, Unavailable
from .store import Store
from .tunnels import Tunnels

NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
DEFAULT_IMAGE = "shellrent-base:bookworm"


def check_name(kind: str, name: str) -> str:
    """Renter and host names: lowercase letters, digits, - and _, up to 32."""
    if not NAME_RE.match(name):
        raise BrokerError(f"bad {kind} name {name!r}: use lowercase letters, digits, - and _ (max 32)")
    return name


def add_renter(store: Store, name: str, key_text: str) -> str:
    """Register a renter with one public key; returns the key's fingerprint."""
    check_name("renter", name)
    try:
        key = material.parse_authorized_keys(key_text)[0]
    except material.KeyError_ as exc:
        raise BrokerError(f"renter key: {exc}") from None
    fpr = material.fingerprint(key)
    store.add_renter(name, fpr, material.public_line(key))
    return fpr


def invite(store: Store, config: Config, host: str, broker_fpr: str) -> str:
    """Make a single-use join token for host; only its hash is stored."""
    check_name("host", host)
    secret = tokens.new_secret()
    store.add_token(host, tokens.hash_secret(secret), time.time() + config.token_ttl)
    return tokens.make(secret, broker_fpr)


def lease_from_username(username: str) -> tuple[str, str | None]:
    """('rent'|'ctl', lease or None) from the login name; BrokerError for anything else."""
    base, _, lease = username.partition("+")
    if base not in ("rent", "ctl") or (base == "ctl" and lease):
        raise BrokerError(f"unknown user {username!r}: log in as rent, rent+LEASE or ctl")
    return base, lease or None


def pick_lease(leases: list[dict], renter: str, wanted: str | None, now: float) -> dict:
    """The lease a login reaches: the one named, or the only active one."""
    active = [lease for lease in leases if lease["state"] == "active" and lease["ends_at"] > now]
    if wanted:
        for lease in leases:
            if lease["id"] == wanted:
                if lease not in active:
                    raise BrokerError(f"lease {wanted} is {lease['state']}, not active")
                return lease
        raise NotFound(f"no lease {wanted!r} for renter {renter}")
    if not active:
        raise NotFound(f"renter {renter} has no active lease")
    if len(active) > 1:
        ids = " ".join(lease["id"] for lease in active)
        raise BrokerError(f"several active leases ({ids}): log in as rent+LEASE")
    return active[0]


class Broker:
    """The running broker's use cases; store calls run on one worker thread."""

    def __init__(self, config: Config, store: Store, tunnels: Tunnels | None = None):
        self.config = config
        self.store = store
        self.tunnels = tunnels
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")

    async def db(self, fn, *args):
        """Run a store call on the store's own thread."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        self._pool.shutdown()
        self.store.close()

    async def renter_for_key(self, key: asyncssh.SSHKey) -> str | None:
        return await self.db(self.store.renter_by_key, material.fingerprint(key))

    async def identify_host(self, conn: asyncssh.SSHClientConnection, key: asyncssh.SSHKey,
                            hello: dict) -> str:
        """Name of the host behind a tunnel: by its pinned key, or by joining with a token."""
        fpr = material.fingerprint(key)
        host = await self.db(self.store.host_by_key, fpr)
        now = time.time()
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

    async def session_target(self, renter: str, wanted: str | None) -> tuple[asyncssh.SSHClientConnection, str]:
        """(host connection, lease id) a renter's login reaches."""
        leases = await self.db(self.store.leases, renter, not wanted)
        lease = pick_lease(leases, renter, wanted, time.time())
        link = self.tunnels.get(lease["host"])
        if not link:
            raise Unavailable(f"host of lease {lease['id']} is offline; try again shortly")
        return link.conn, lease["id"]

    async def create_lease(self, renter: str, host: str, hours: float, image: str) -> dict:
        """Start a container for renter on host; the lease is active only once it runs."""
        if not 0 < hours <= 24 * 30:
            raise BrokerError(f"bad duration {hours} h: must be more than 0 and at most 720")
        await self.db(self.store.require_renter, renter)
        await self.db(self.store.host, host)
        link = self.tunnels.get(host)
        if not link:
            raise Unavailable(f"host {host!r} is offline")
        now = time.time()
        lease = {"id": secrets.token_hex(4), "renter": renter, "host": host, "image": image,
                 "state": "starting", "created": now, "ends_at": now + hours * 3600}
        await self.db(self.store.insert_lease, lease)
        try:
            reply = await link.call("lease.start", lease={k: lease[k] for k in ("id", "renter", "image", "ends_at")})
        except BaseException as exc:
            await self.db(lambda: self.store.update_lease(lease["id"], state="failed", error=str(exc)))
            raise
        await self.db(lambda: self.store.update_lease(lease["id"], state="active", container=reply["container"]))
        return await self.db(self.store.lease, lease["id"])

    async def stop_lease(self, lease_id: str) -> dict:
        """End a lease now: hostd stops its container (the workspace volume is kept)."""
        lease = await self.db(self.store.lease, lease_id)
        if lease["state"] not in ("starting", "active"):
            raise BrokerError(f"lease {lease_id} is already {lease['state']}")
        link = self.tunnels.get(lease["host"])
        if not link:
            raise Unavailable(f"host {lease['host']!r} is offline; cannot stop lease {lease_id} now")
        await link.call("lease.stop", id=lease_id)
        await self.db(lambda: self.store.update_lease(lease_id, state="ended", ends_at=min(lease["ends_at"], time.time())))
        return await self.db(self.store.lease, lease_id)
