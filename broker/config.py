"""Broker settings: the home directory layout and tunables (env: BROKER_*)."""
import os
from dataclasses import dataclass, field
from pathlib import Path


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


@dataclass
class Config:
    """Where the broker keeps its state, and its limits."""

    home: Path
    ssh_addr: tuple[str, int] = ("0.0.0.0", 2222)
    tunnel_addr: tuple[str, int] = ("0.0.0.0", 2223)
    metrics_addr: tuple[str, int] | None = None  # /metrics and /healthz, when asked for
    db_url: str | None = None  # a PostgreSQL database (broker.store.opening); None: broker.db in the home
    peer_addr: tuple[str, int] | None = None  # where the cluster's other brokers dial this one (serve --peer)
    advertise: str = ""  # the name they and hosts reach it at
    drain: float = field(default_factory=lambda: _env_float("BROKER_DRAIN", 10))  # SIGTERM: sessions' time to end
    login_timeout: float = field(default_factory=lambda: _env_float("BROKER_LOGIN_TIMEOUT", 30))
    auth_fail_limit: int = field(default_factory=lambda: int(_env_float("BROKER_AUTH_FAIL_LIMIT", 20)))
    auth_fail_window: float = 60.0
    auth_block_for: float = field(default_factory=lambda: _env_float("BROKER_AUTH_BLOCK_FOR", 300))
    keepalive: float = field(default_factory=lambda: _env_float("BROKER_KEEPALIVE", 15))
    token_ttl: float = 24 * 3600
    # Unauthenticated connections at once, in total and per source address; key tries per connection.
    max_startups: int = field(default_factory=lambda: int(_env_float("BROKER_MAX_STARTUPS", 100)))
    max_startups_per_ip: int = field(default_factory=lambda: int(_env_float("BROKER_MAX_STARTUPS_PER_IP", 10)))
    max_auth_tries: int = field(default_factory=lambda: int(_env_float("BROKER_MAX_AUTH_TRIES", 6)))
    sessions_per_renter: int = field(default_factory=lambda: int(_env_float("BROKER_SESSIONS_PER_RENTER", 64)))
    # Logged-in connections per renter at once, on this broker (each costs memory before any session).
    connections_per_renter: int = field(
        default_factory=lambda: int(_env_float("BROKER_CONNECTIONS_PER_RENTER", 64)))
    fee_percent: int = field(default_factory=lambda: int(_env_float("BROKER_FEE_PERCENT", 10)))
    offline_grace: float = field(default_factory=lambda: _env_float("BROKER_OFFLINE_GRACE", 300))
    # A lease whose host has been offline this long ends at the moment the host went (its hold freed).
    host_lost: float = field(default_factory=lambda: _env_float("BROKER_HOST_LOST", 3600))
    housekeeping: float = field(default_factory=lambda: _env_float("BROKER_HOUSEKEEPING", 2))
    # The highest price per GPU-hour a host may ask, in credits; an inventory above it is refused.
    max_price: float = field(default_factory=lambda: _env_float("BROKER_MAX_PRICE", 100))
    # The longest lease (with its extensions) and the most live leases one renter may hold.
    max_lease_days: float = field(default_factory=lambda: _env_float("BROKER_MAX_LEASE_DAYS", 30))
    max_leases: int = field(default_factory=lambda: int(_env_float("BROKER_MAX_LEASES", 10)))
    # A host whose clock is further off than this is refused (it times leases by its clock).
    # Where renters reach the broker, for `ctl ssh-config` (HOST or HOST:PORT; empty: the address and
    # port each renter connected to).
    public_host: str = field(default_factory=lambda: os.environ.get("BROKER_PUBLIC_HOST", ""))
    # Load balancers in front of the renter port that send a PROXY v2 header (addresses or networks,
    # comma-separated; broker.proxyproto). Empty: none, every peer is the client itself.
    proxy_from: str = field(default_factory=lambda: os.environ.get("BROKER_PROXY_FROM", ""))
    # Who may make an account with `ssh signup@broker NAME [CODE]` (broker.signup): closed (the
    # operator adds renters), code (with a code from `broker signup-code create`) or open; signups
    # per source address and hour; whom a person is told to ask for an account.
    signup: str = field(default_factory=lambda: os.environ.get("BROKER_SIGNUP", "closed"))
    signups_per_hour: int = field(default_factory=lambda: int(_env_float("BROKER_SIGNUPS_PER_HOUR", 5)))
    contact: str = field(default_factory=lambda: os.environ.get("BROKER_CONTACT", ""))
    # Whether renters may add hosts of their own (`ssh ctl@broker host invite NAME`): on or off.
    renter_hosts: str = field(default_factory=lambda: os.environ.get("BROKER_RENTER_HOSTS", "off"))
    max_skew: float = field(default_factory=lambda: _env_float("BROKER_MAX_SKEW", 30))
    # How long a host may take to start a container (image checks, workspace) and to stop one.
    start_timeout: float = field(default_factory=lambda: _env_float("BROKER_START_TIMEOUT", 330))
    stop_timeout: float = field(default_factory=lambda: _env_float("BROKER_STOP_TIMEOUT", 120))

    @property
    def db_path(self) -> Path:
        return self.home / "broker.db"

    @property
    def host_key_path(self) -> Path:
        return self.home / "ssh_host_ed25519_key"

    @property
    def client_key_path(self) -> Path:
        return self.home / "tunnel_client_ed25519_key"

    @property
    def peer_key_path(self) -> Path:
        """This broker's own identity among the brokers of one database (each has its own)."""
        return self.home / "peer_ed25519_key"

    @property
    def admin_socket(self) -> Path:
        return self.home / "admin.sock"

    @property
    def audit_log(self) -> Path:
        return self.home / "audit.log"


def public_address(public_host: str, here: tuple[str, int]) -> tuple[str, int]:
    """Where renters reach the broker: BROKER_PUBLIC_HOST (HOST or HOST:PORT; its port defaults to the
    one connected to), else the address and port this renter connected to (here)."""
    if not public_host:
        return here[0], here[1]
    name, sep, number = public_host.rpartition(":")
    if public_host.count(":") > 1 and not public_host.startswith("["):  # a bare IPv6 address: no port
        return public_host, here[1]
    return (name.strip("[]"), int(number)) if sep and number.isdigit() else (public_host.strip("[]"), here[1])


@dataclass(frozen=True)
class Where:
    """Where a renter reaches this broker, for the commands messages tell them to type."""

    host: str
    port: int = 22

    @classmethod
    def of(cls, public_host: str, here) -> "Where":
        return cls(*public_address(public_host, (here[0], here[1])))

    def ssh(self, user: str) -> str:
        return f"ssh {user}@{self.host}" if self.port == 22 else f"ssh -p {self.port} {user}@{self.host}"

    def sftp(self, user: str) -> str:
        return f"sftp {user}@{self.host}" if self.port == 22 else f"sftp -P {self.port} {user}@{self.host}"


def parse_addr(text: str) -> tuple[str, int]:
    """'HOST:PORT' (or ':PORT', '[::1]:PORT') to (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"bad address {text!r}: expected HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)
