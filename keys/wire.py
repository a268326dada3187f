"""The broker<->hostd wire protocol, version 1.

One TCP connection per host, dialled by hostd; SSH runs over it with hostd as the server and the
broker as the client. The broker opens:

- control calls: a session channel with subsystem CONTROL; it writes one JSON request line
  {"op": ..., ...} and reads one JSON reply line {"ok": true, ...} or {"ok": false, "error": "..."}.
  Ops: hello (hostd replies with its token when joining, its version and its leases),
  welcome {"host": name} / reject {"error": ...} (the join outcome), lease.start, lease.stop,
  lease.extend, lease.discard, earnings.
- events: one session channel with subsystem EVENTS, opened by the broker after welcome; hostd writes
  one JSON line per event: {"type": "inventory", "inventory": {...}}, {"type": "lease.ended", "id", "at"},
  {"type": "lease.purged", "id"}.
- renter sessions: a session channel carrying env LEASE_ENV=<lease id>; everything else (pty, exec,
  shell, subsystem, signals, window changes) is the renter's own request, relayed as is.
- renter port forwards: a direct-tcpip channel whose destination host is target(lease, host).
"""
import json

PROTO = 1
CONTROL = "shellrent-control-v1"
EVENTS = "shellrent-events-v1"
LEASE_ENV = "SHELLRENT_LEASE"
_TARGET = "lease."


def encode(msg: dict) -> bytes:
    """One JSON line."""
    return json.dumps(msg, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> dict:
    """Parse one JSON line into a dict (ValueError when it is not one)."""
    msg = json.loads(line)
    if not isinstance(msg, dict):
        raise ValueError("wire message is not an object")
    return msg


def target(lease: str, host: str) -> str:
    """direct-tcpip destination naming a host inside a lease's container."""
    return f"{_TARGET}{lease}/{host}"


def parse_target(dest: str) -> tuple[str, str] | None:
    """(lease, host) from a direct-tcpip destination, or None when it names no lease."""
    if not dest.startswith(_TARGET) or "/" not in dest:
        return None
    lease, _, host = dest[len(_TARGET):].partition("/")
    return (lease, host) if lease and host else None
