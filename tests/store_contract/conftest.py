"""The store contract: every backend of the broker's store (broker.store.api) passes these tests.
A backend joins by adding a factory to BACKENDS."""
import pytest

from shellrent.broker.store import Store



class Clock:
    def __init__(self, t: float = 1_800_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def _sqlite(request, tmp_path, clock):
    return lambda: Store(tmp_path / "broker.db", now=clock)


def _postgres(request, tmp_path, clock):
    from shellrent.broker.store.postgres import Store as PgStore
    dsn = request.getfixturevalue("pg_server").fresh_schema()
    return lambda: PgStore(dsn, now=clock)


BACKENDS = {"sqlite": _sqlite, "postgres": _postgres}


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture(params=sorted(BACKENDS))
def opener(request, tmp_path, clock):
    """opener() -> a new store on the same database each time (as each broker has its own); all closed
    at the end."""
    make, made = BACKENDS[request.param](request, tmp_path, clock), []

    def open_store():
        made.append(make())
        return made[-1]
    try:
        yield open_store
    finally:
        for s in made:
            s.close()


@pytest.fixture
def store(opener):
    return opener()


def lease(id="ab12cd34", renter="alice", host="pc1", state="pending", **kw) -> dict:
    return {"id": id, "renter": renter, "host": host, "image": "img", "state": state, "created": 1_800_000_000.0,
            "ends_at": 1_800_003_600.0, "gpus": ["GPU-1"], "gpu_name": "RTX 4090", "price": 500_000,
            "fee_percent": 10, "held": 500_000, **kw}


def joined_host(store, name="pc1", fingerprint="SHA256:host1", now=1_800_000_000.0) -> str:
    store.add_token(name, f"hash-{name}", now + 3600)
    return store.consume_token(f"hash-{name}", fingerprint, "ssh-ed25519 AAAA", now)
