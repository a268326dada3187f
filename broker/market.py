"""The market: the offers now, built from the hosts online, their inventories, the leases holding
their GPUs and their reliability; rebuilt when something changed, and each minute."""
from . import offers as offers_mod, query
from .leases import reliability


class Market:
    def __init__(self, db, store, links, now):
        self._db, self._store, self._links, self._now = db, store, links, now
        self._cache: list[dict] | None = None
        self._at = 0.0
        self._memo: dict = {}  # offers.build keeps each host's offers here between builds
        self._gen = 0          # bumped by every change; a build started before a bump is not kept
        self._built = -1
        self.max_age = 60.0  # seconds an unchanged build is kept (a cluster's: short, other brokers rent too)

    def changed(self) -> None:
        """Inventories, connections or leases changed: build the offers afresh next time."""
        self._gen += 1

    def _build(self, now: float, online: set[str]) -> list[dict]:
        """Offers now (runs on the store thread)."""
        store = self._store
        hosts = store.joined_hosts()
        online = online | store.online_hosts()  # with tunnels to this broker or to another
        since = now - 30 * 86400
        ups, downs = store.uptimes(since), store.downs_by_host(since)
        rel = {h["name"]: reliability(now, h["joined"], ups.get(h["name"], []), downs=downs.get(h["name"], []))
               for h in hosts if h["name"] in online}
        return offers_mod.build(hosts, online, store.busy_leases(), rel, now, self._memo)

    async def current(self) -> list[dict]:
        """The offers now; rebuilt when something changed here, and after max_age (reliability, and
        what other brokers changed)."""
        now = self._now()
        if self._built == self._gen and now - self._at <= self.max_age:
            return self._cache
        gen = self._gen
        links = self._links()
        online = set(links.links) if links else set()  # read on the loop, not the store thread
        offers = await self._db(self._build, now, online)
        if gen == self._gen:
            self._cache, self._at, self._built = offers, now, gen
        return offers

    async def offers(self, text: str = "", order: str | None = None) -> list[dict]:
        filters, keys = query.parse(text), query.parse_order(order)
        offers = await self.current()
        if keys:
            return query.select(offers, filters, keys)
        return sorted(query.select(offers, filters), key=offers_mod.schedule_key)

    async def why_none(self, text: str) -> str:
        """Why `offers text` is empty (query.why_none)."""
        return query.why_none(await self.current(), text)
