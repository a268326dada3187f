"""This broker among the brokers of one database: its id and row, the heartbeat that keeps its row
and its hosts' owner rows alive and measures the database's clock (every expiry is judged on it),
which hosts it drives and at which epoch, and where the other brokers are.

A lone broker (SQLite, or PostgreSQL without --peer) keeps the same rows: its hosts are owned by it,
its clock offset is the database's (zero for SQLite)."""
import logging
import secrets
import time
from pathlib import Path

from .config import parse_addr

log = logging.getLogger("shellrent.cluster")

TTL = 10.0  # a broker or a host-owner row not renewed for this long is gone (database time)
BEAT = 2.0  # seconds between heartbeats


def broker_id(home: Path) -> str:
    """This home's broker id, made once and kept (a restarted broker is the same broker)."""
    path = home / "broker_id"
    if path.exists():
        return path.read_text().strip()
    made = "b-" + secrets.token_hex(4)
    if home.is_dir():  # a broker in a test may have no home on disk: its id lasts as long as it does
        path.write_text(made + "\n")
    return made


class Clock:
    """The database's time as this broker sees it: its own clock plus the offset the last heartbeat
    measured."""

    def __init__(self):
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


class Cluster:
    def __init__(self, db, store, ident: str, clock: Clock | None):
        self._db, self._store, self.id, self._clock = db, store, ident, clock
        self.peer_key = ""  # this broker's peer public key (set by the server with --peer)
        self.addresses = {"ssh": "", "tunnel": "", "peer": ""}
        self.epochs: dict[str, int] = {}  # the hosts this broker drives, with the epoch it took each at
        self.draining = False
        self.others: set[str] = set()  # the other live brokers' ids, as of the last heartbeat
        self.owners: dict[str, dict] = {}  # with a peer link: who drives each host, as of the last heartbeat
        self.clustered = False
        self.peer_keys: set[str] = set()  # the other live brokers' peer keys, as of the last heartbeat
        self._keys_read = 0.0
        self.sessions: dict[str, int] = {}  # renter -> open sessions and forwards here (set by the server)
        self.sessions_elsewhere: dict[str, int] = {}  # ... on the other brokers, as of the last heartbeat
        self._published: dict[str, int] | None = None
        self._beat_ok = -TTL  # monotonic time of the last heartbeat the database took
        self.on_lost = lambda hosts: None  # hosts another broker took: their tunnels here are closed
        self.on_reclaimed = lambda host, epoch: None  # a host kept at a new epoch

    def fresh(self) -> bool:
        """Whether this broker's rows are surely still alive (a heartbeat went through within TTL)."""
        return time.monotonic() - self._beat_ok < TTL - BEAT

    async def register(self) -> None:
        a = self.addresses
        await self._db(self._store.register_broker, self.id, a["ssh"], a["tunnel"], a["peer"], self.peer_key)
        await self.beat()

    async def beat(self) -> set[str]:
        """Renew this broker's rows and measure the database's clock; the hosts it has lost (another
        broker took them while this one was paused or cut off from the database)."""
        asked = time.time()
        now, owned = await self._db(self._store.beat, self.id, TTL, self.draining, sorted(self.epochs))
        answered = time.time()
        if self._clock is not None and answered - asked < 1.0:
            self._clock.offset = now - (asked + answered) / 2
        self._beat_ok = time.monotonic()
        live = await self.live()
        self.others = {b["id"] for b in live} - {self.id}
        if self.id not in {b["id"] for b in live}:
            await self.register()  # its row was dropped or had gone stale: written again
        if self.clustered:
            self._keep_keys(live)
            counts = {r: n for r, n in self.sessions.items() if n > 0}
            if counts != self._published:  # the rows count while this broker's heartbeat does
                await self._db(self._store.publish_sessions, self.id, counts)
                self._published = counts
            self.sessions_elsewhere = await self._db(self._store.sessions_elsewhere, self.id, TTL)
            self.owners = await self._db(self._store.owners)
        lost = set(self.epochs) - owned
        for host in sorted(lost):  # lapsed while the database was away, and nobody took them: kept
            epoch = await self._db(self._store.reclaim_host, host, self.id, TTL)
            if epoch is not None:
                self.epochs[host] = epoch
                self.on_reclaimed(host, epoch)
                lost.discard(host)
        for host in lost:
            log.warning("host %s is driven by another broker now: letting it go", host)
            self.epochs.pop(host, None)
        if lost:
            self.on_lost(lost)
        return lost

    async def own(self, host: str, seen: int = 0) -> int:
        """This broker drives the host from now on; the epoch the host holds it to (above `seen`,
        the highest the host says it was welcomed at)."""
        epoch = await self._db(self._store.own_host, host, self.id, TTL, seen)
        self.epochs[host] = epoch
        return epoch

    async def disown(self, host: str, epoch: int, at: float) -> bool:
        """The host's tunnel here closed at `at`: if this broker still owned it, its uptime ends then
        (one transaction: a broker that took it meanwhile keeps its own). A failure here is mended by
        the next heartbeat, which renews only the hosts whose tunnels are here."""
        if self.epochs.get(host) == epoch:
            del self.epochs[host]
        return await self._db(self._store.disown_host, host, self.id, epoch, at)

    async def live(self) -> list[dict]:
        """The brokers alive now (this one among them)."""
        return await self._db(self._store.brokers, TTL)

    async def tunnels(self) -> list[list]:
        """Where hosts can dial the live brokers' tunnels, this broker's first ([host, port] each).
        None for a lone broker: its hosts keep the address they were given (a proxy, a NAT)."""
        if not self.clustered:
            return []
        out = [self.addresses["tunnel"]]
        out += [b["tunnel"] for b in await self.live() if b["id"] != self.id and not b["draining"]]
        return [list(parse_addr(a)) for a in dict.fromkeys(out) if a]

    async def peer_key_known(self, line: str) -> bool:
        """A key not among the last heartbeat's: the brokers table read again, at most once a second
        (a stranger's flood of keys costs the store thread one read a second, not one per key)."""
        if time.monotonic() - self._keys_read < 1.0:
            return False
        self._keep_keys(await self.live())
        return line in self.peer_keys

    def _keep_keys(self, live: list[dict]) -> None:
        self._keys_read = time.monotonic()
        self.peer_keys = {b["peer_key"] for b in live if b["id"] != self.id and b["peer_key"]}

    async def leave(self) -> None:
        await self._db(self._store.drop_broker, self.id)


def join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
