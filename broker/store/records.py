"""The store's records, as every backend returns them: typed, with the JSON columns parsed once (a
lease's GPUs a list, a host's inventory a dict). Records are read-only values: change one through the
store's operations, never by mutating what a read returned."""
from typing import TypedDict


class Lease(TypedDict, total=False):
    id: str
    renter: str
    host: str
    image: str
    state: str  # broker.leases.STATES: pending, starting, active, ending, ended, purged, failed
    created: float
    ends_at: float
    container: str | None
    error: str | None
    gpus: list[str]  # the GPU UUIDs it holds
    gpu_name: str | None
    price: int  # micro-credits per GPU-hour
    fee_percent: int
    held: int  # micro-credits held for it
    started: float | None
    ended: float | None
    extensions: int
    host_ended: float | None  # when its host confirmed the container gone
    host_ends_at: float | None  # the end time its host was last told
    banned_at: float  # on_banned_hosts() only: when its host was banned
    broker: str | None  # the broker that opened it (its start is that broker's to finish)
    reason: str | None  # why it ended (protocol.END_REASONS), once it has
    auto: int  # auto-extend: the step in seconds (0: off)
    auto_note: str | None  # why auto-extend cannot extend it now (credit, window, limit), or None
    workspace: str | None  # the ended lease whose /workspace it took (ctl rent --workspace)
    disk_gb: float  # its disk share on its host, as the host said at the start (0: not said)


class Host(TypedDict, total=False):
    name: str
    fingerprint: str | None
    key: str | None
    invited: float
    joined: float | None
    last_seen: float | None
    banned: float  # 0, or when the operator banned it
    inventory: dict | None  # the checked inventory it offers (broker.inventory.check)
    inventory_error: str | None
    owner: str | None  # the renter whose own host it is (BROKER_RENTER_HOSTS), or None: the operator's


class Renter(TypedDict):
    name: str
    created: float
    keys: int  # how many keys it logs in with


class RenterKey(TypedDict):
    fingerprint: str
    key: str
    added: float


class Entry(TypedDict):
    account: str  # broker.ledger's account names
    amount: int  # micro-credits; a transaction's entries sum to zero


class Tx(TypedDict):
    id: int
    key: str  # unique: a transaction is posted once per key (broker.ledger's *_key functions)
    kind: str  # deposit, hold, refund, settle, adjust
    lease: str | None
    renter: str | None
    created: float
    memo: str | None
    entries: list[Entry]


class BrokerRow(TypedDict):
    id: str
    ssh: str  # HOST:PORT renters reach it on (behind a load balancer: its own address)
    tunnel: str  # HOST:PORT hosts dial
    peer: str  # HOST:PORT the other brokers dial
    peer_key: str  # its peer public key (OpenSSH text), pinned by the others
    started: float
    heartbeat: float  # database time
    draining: int


class Owner(TypedDict):
    host: str
    broker: str
    epoch: int
    expires: float  # database time
    peer: str
    peer_key: str
