"""The broker's Prometheus metrics (`broker serve --metrics 127.0.0.1:9464`).

Counters are bumped where things happen (logins, relayed bytes, ctl commands); gauges are read from
the broker's state at each scrape (hosts, sessions, leases by state, credits held and settled).
"""
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry()
LOGINS = Counter("shellrent_broker_logins", "Renter logins that passed key authentication", registry=REGISTRY)
FAILED_LOGINS = Counter("shellrent_broker_failed_logins", "Key authentications refused", registry=REGISTRY)
RELAYED = Counter("shellrent_broker_relayed_bytes", "Bytes relayed between renters and containers",
                  ["direction"], registry=REGISTRY)
TO_HOST, TO_RENTER = RELAYED.labels("to_host"), RELAYED.labels("to_renter")
CTL = Histogram("shellrent_broker_ctl_seconds", "ctl commands by name and how long they took", ["command"],
                buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10), registry=REGISTRY)
HOSTS = Gauge("shellrent_broker_hosts_connected", "Hosts connected now", registry=REGISTRY)
SESSIONS = Gauge("shellrent_broker_renter_sessions", "Renter sessions open now, by kind", ["kind"],
                 registry=REGISTRY)
LEASES = Gauge("shellrent_broker_leases", "Leases by state", ["state"], registry=REGISTRY)
HELD = Gauge("shellrent_broker_credits_held", "Credits held for live leases", registry=REGISTRY)
SETTLED = Gauge("shellrent_broker_credits_settled", "Credits paid to providers and in fees, all time",
                registry=REGISTRY)
KINDS = ("shell", "exec", "sftp", "forward")
COMMANDS = ("offers", "rent", "ls", "show", "extend", "release", "balance", "history", "keys", "ssh-config",
            "config", "help")


def command(name: str) -> str:
    """The label for a ctl command: its name, or "other" (renters choose the words)."""
    return name if name in COMMANDS else "other"


def session_kind(session) -> str:
    req = getattr(session, "_req", None)
    if req is None:
        return "forward"
    return "sftp" if req.get("subsystem") else "exec" if req.get("command") else "shell"


async def refresh(broker) -> None:
    snap = await broker.db(broker.store.gauges)
    HOSTS.set(len(broker.tunnels.links) if broker.tunnels else 0)
    counts = dict.fromkeys(KINDS, 0)
    for s in broker.channels.all():
        counts[session_kind(s)] += 1
    for kind, n in counts.items():
        SESSIONS.labels(kind).set(n)
    for state in ("starting", "active", "ending", "ended", "purged", "failed"):
        LEASES.labels(state).set(snap["states"].get(state, 0))
    HELD.set(snap["held"] / 1e6)
    SETTLED.set(snap["settled"] / 1e6)
