"""Logins: which user names exist, which lease a renter's login reaches, and the route to its host."""
import time

from shellrent.common import protocol

from .errors import BrokerError, NotFound, Unavailable
from .route import Route


class SeveralLeases(BrokerError):
    """A renter with several active leases named none; .ids are theirs."""

    def __init__(self, text: str, ids: list[str]):
        super().__init__(text)
        self.ids = ids

    def say_which(self, command: str) -> str:
        """What ctl tells: name one, e.g. command with the first lease ({} in command)."""
        return f"you have several active leases ({' '.join(self.ids)}): say which, e.g. {command.format(self.ids[0])}"


USERS = "rent, rent+LEASE, ctl or signup"


def lease_from_username(username: str) -> tuple[str, str | None]:
    """('rent'|'ctl'|'signup', lease or None) from the login name; BrokerError for anything else."""
    base, _, lease = username.partition("+")
    if base not in ("rent", "ctl", "signup") or (base != "rent" and lease):
        raise BrokerError(f"unknown user {protocol.printable(username)[:40]!r}: log in as {USERS}")
    return base, lease or None


def pick_lease(leases: list[dict], renter: str, wanted: str | None, now: float,
               files_only: bool = False, where=None) -> dict:
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
                                     else f" (its files stay readable: {where.sftp('rent+' + wanted) if where else 'sftp rent+' + wanted + '@...'})"))
        raise NotFound(f"no lease {wanted!r} for renter {renter}")
    if not active:
        how = f"{where.ssh('ctl')} rent --hours 1, or {where.ssh('rent')} on a terminal" if where else "ctl rent"
        raise NotFound(f"renter {renter} has no active lease; rent one with: {how}")
    if len(active) > 1:
        ids = " ".join(lease["id"] for lease in active)
        raise SeveralLeases(f"several active leases ({ids}): log in as rent+LEASE, e.g. "
                            + (where.ssh("rent+" + active[0]["id"]) if where else "rent+" + active[0]["id"]),
                            [lease["id"] for lease in active])
    return active[0]


class Logins:
    def __init__(self, db, store, reach, now):
        self._db, self._store, self._reach, self._now = db, store, reach, now

    async def own_lease(self, renter: str, lease_id: str | None) -> dict:
        """The renter's lease named (or its only active one)."""
        leases = await self._db(self._store.leases, renter, not lease_id)
        return pick_lease(leases, renter, lease_id, self._now())

    async def session_target(self, renter: str, wanted: str | None, files_only: bool = False, where=None):
        """The route to the lease a renter's login reaches (here, or through the broker that holds
        its host's tunnel)."""
        leases = await self._db(self._store.leases, renter, not wanted)
        lease = pick_lease(leases, renter, wanted, self._now(), files_only, where)
        route = await self._reach.route(lease["id"], lease["host"], renter)
        if route is None:
            await self._offline(lease)
        route.record = lease  # as read for this login (the banner shows it: no second read)
        return route

    async def local_target(self, renter: str | None, lease_id, files_only: bool = False) -> Route:
        """For another broker of the cluster: the route to a lease whose host's tunnel is here,
        checked again (the renter's own lease, active or with its files kept)."""
        lid = protocol.lease_id(lease_id)
        lease = await self._db(self._store.lease, lid)
        renter = renter if renter is not None else lease["renter"]
        pick_lease([lease] if lease["renter"] == renter else [], renter, lid, self._now(), files_only)
        link = self._reach.local(lease["host"])
        if not link:
            await self._offline(lease)
        return Route(lid, lease["host"], link.conn)

    async def _offline(self, lease: dict) -> None:
        host = await self._db(self._store.host, lease["host"])
        if host["banned"]:
            raise Unavailable(f"lease {lease['id']} has ended: the operator removed its host "
                              f"(the unused time is refunded)")
        raise Unavailable(f"host of lease {lease['id']} is offline; try again shortly")
