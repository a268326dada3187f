"""How this broker reaches a host: by its own tunnel to it, or through the peer link to the broker of
the cluster that holds the host's tunnel now (the host-owner row), for a renter's channels and for
the few control calls a renter's request makes (broker.peerserver.CALLS)."""
from .errors import Unavailable
from .peerlink import Peers
from .route import Route


class RemoteLink:
    """A host's control calls made by the broker that holds its tunnel (HostLink's call())."""

    def __init__(self, peers: Peers, owner: dict):
        self._peers, self._owner = peers, owner
        self.name = owner["host"]

    async def call(self, op: str, timeout: float = 120, alive=None, **args) -> dict:
        lid = args.pop("id")
        msg = await self._peers.call(self._owner, "call", timeout=timeout + 10, lease=lid, op=op, args=args)
        return msg.get("reply") or {}


class Reach:
    def __init__(self, db, store, links, cluster, peers: Peers | None = None):
        self._db, self._store, self._links, self._cluster = db, store, links, cluster
        self.peers = peers  # None: a lone broker, every host it serves has its tunnel here

    def local(self, host: str):
        links = self._links()
        return links.get(host) if links else None

    async def owner(self, host: str, cached: bool = False) -> dict | None:
        """The other broker that drives the host now, or None (here, or offline). cached: as the
        last heartbeat (at most 2 s ago) saw it, when it saw one; a login takes no round trip for it."""
        if self.peers is None:
            return None
        row = self._cluster.owners.get(host) if cached and self._cluster.fresh() else None
        if row is None:
            row = await self._db(self._store.host_owner, host)
        return row if row and row["broker"] != self._cluster.id else None

    async def link(self, host: str):
        """What a control call to the host goes through, or None while it is offline."""
        link = self.local(host)
        if link:
            return link
        owner = await self.owner(host)
        return RemoteLink(self.peers, owner) if owner else None

    async def route(self, lease: str, host: str, renter: str):
        """The way to a lease's container, or None while its host is offline."""
        link = self.local(host)
        if link:
            return Route(lease, host, link.conn)
        owner = await self.owner(host, cached=True)
        if owner is None:
            return None
        try:
            return await self.peers.route(owner, lease, host, renter)
        except Unavailable:  # that broker went since the heartbeat: ask the database who has it now
            owner = await self.owner(host)
            return await self.peers.route(owner, lease, host, renter) if owner else None
