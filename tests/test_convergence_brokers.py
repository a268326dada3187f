"""Two brokers on one PostgreSQL database and a host that moves between them converge: random
sequences of rent / extend / release through either broker, expiry, the host moving, a broker killed
(mid-start too) and started again, driven through the brokers' real code (store, ledger, state
machine, reconcile, sync, the peer calls) against the in-memory host of test_convergence. After every
step the ledger's invariants hold; whenever the host is connected and told everything, both records
agree: each lease settled once, no charge without a lease, no container without a paying lease."""
import asyncio
import tempfile
from pathlib import Path

from hypothesis import given, settings, strategies as st

from shellrent.broker import ledger
from shellrent.broker.config import Config
from shellrent.broker.errors import BrokerError, Unavailable
from shellrent.broker.peerserver import PeerServer
from shellrent.broker.service import Broker
from shellrent.broker.store.postgres import Store as PgStore

from .test_convergence import GPUS, PRICE, Clock, Host, _check, _settle


class Links:
    """One broker's tunnel registry: the host is in it while connected to that broker."""

    def __init__(self, host: Host, me: list):
        self.host, self._me = host, me

    @property
    def links(self):
        return {"pc1": self.host} if self.get("pc1") else {}

    def get(self, name):
        return self.host if self.host.online and self.host.broker is self._me[0] else None


class LocalPeers:
    """The peer link in-process: a call goes straight to the other broker's peer server."""

    def __init__(self, alive: dict):
        self._alive = alive  # broker id -> Broker, while it runs

    async def call(self, owner, verb, say=None, timeout=None, **args):
        target = self._alive.get(owner["broker"])
        if target is None:
            raise Unavailable("the broker that holds this host's tunnel does not answer")
        return {"ok": True, **await PeerServer(target).answer({"verb": verb, **args}, say or (lambda item: None))}


class World:
    def __init__(self, root: Path, url: str, clock: Clock):
        self.root, self.url, self.clock = root, url, clock
        self.host = Host(clock)
        self.host.broker = None
        self.alive: dict[str, Broker] = {}
        self.brokers = [self._open(i) for i in range(2)]

    def _open(self, i: int) -> Broker:
        home = self.root / f"b{i}"
        home.mkdir(exist_ok=True)
        me = [None]
        b = Broker(Config(home=home, fee_percent=10, offline_grace=300), PgStore(self.url, now=self.clock),
                   Links(self.host, me), now=self.clock, peers=LocalPeers(self.alive))
        me[0] = b
        self.alive[b.cluster.id] = b
        return b

    async def connect(self, i: int) -> None:
        """The host's tunnel goes to broker i (from wherever it was)."""
        await self.disconnect()
        b = self.brokers[i]
        self.host.online, self.host.broker = True, b
        await b.cluster.beat()
        self.epoch = (await b.hosts.welcome("pc1"))["epoch"]
        await b.host_connected(self.host, self.host.hello())

    async def disconnect(self) -> None:
        if self.host.online and self.host.broker is not None:
            b, self.host.online = self.host.broker, False
            await b.host_disconnected("pc1", self.clock(), self.epoch)

    async def kill(self, i: int, start_again: bool = True) -> None:
        """Broker i dies (its row goes stale at once) and, after a while, starts again on its home."""
        b = self.brokers[i]
        if self.host.broker is b:
            self.host.online = False  # its tunnel dies with it; the host is elsewhere by the next connect
        del self.alive[b.cluster.id]
        b.store._sql("UPDATE brokers SET heartbeat = 0 WHERE id = ?", [b.cluster.id])
        for task in b.tasks.running():
            task.cancel()
        await asyncio.sleep(0)
        b.close()
        if start_again:
            self.brokers[i] = b = self._open(i)
            await b.cluster.beat()
            await b.recover()

    async def housekeeping(self) -> None:
        for b in self.brokers:
            await _settle(b)
            await b.housekeeping()
            await _settle(b)

    def close(self) -> None:
        for b in self.brokers:
            b.close()


STEPS = st.lists(st.tuples(st.sampled_from(["rent", "extend", "release", "wait", "move", "kill", "kill_start"]),
                           st.integers(0, 1), st.integers(1, 4)), max_size=14)


@settings(max_examples=25, deadline=None)
@given(STEPS)
def test_two_brokers_and_a_moving_host_converge_under_any_sequence(pg_server, seq):
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(_run(Path(tmp), pg_server.fresh_schema(), Clock(), seq))


async def _run(root: Path, url: str, clock: Clock, seq) -> None:
    w = World(root, url, clock)
    first = w.brokers[0]
    first.store.add_renter("alice", "SHA256:alice", "k")
    first.store.post("dep", "deposit", ledger.deposit("alice", 20_000_000), renter="alice")
    first.store.add_token("pc1", "h", 2e9)
    first.store.consume_token("h", "SHA256:pc1", "k", clock())
    await w.connect(0)
    try:
        for action, i, n in seq:
            clock.now += 60
            b = w.brokers[i]
            active = [lease["id"] for lease in b.store.leases("alice") if lease["state"] == "active"]
            lid = active[n % len(active)] if active else None
            try:
                if action == "rent":
                    lease = b.renting.new_lease("alice", "pc1", "img", n * 900, [GPUS[n - 1]], "RTX", PRICE)
                    await b.db(b.renting.open_lease, lease)
                    await b.renting.launch(lease)
                elif action == "kill_start":  # broker i opens a lease and dies before starting it
                    lease = b.renting.new_lease("alice", "pc1", "img", n * 900, [GPUS[n - 1]], "RTX", PRICE)
                    await b.db(b.renting.open_lease, lease)
                    await w.kill(i)
                elif action == "extend" and lid:
                    await b.extend("alice", lid, n * 300)
                elif action == "release" and lid:
                    await b.release("alice", lid)
                elif action == "wait":
                    clock.now += n * 400
                    await w.host.tick()
                elif action == "move":
                    await w.connect(1 - w.brokers.index(w.host.broker) if w.host.broker in w.brokers else i)
                elif action == "kill":
                    await w.kill(i)
                    if not w.host.online:
                        await w.connect(1 - i)  # the host moves to the survivor
            except BrokerError:
                pass  # refused requests change nothing; the checks below say so
            if not w.host.online:
                await w.connect(0)
            await w.housekeeping()
            _check(w.host.broker, w.host)
    finally:
        w.close()
