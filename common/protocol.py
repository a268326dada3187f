"""The broker<->hostd wire protocol, version 2, and the formats of every id that crosses it.

One TCP connection per host, dialled by hostd; SSH runs over it with hostd as the server and the
broker as the client. Two kinds of channel, told apart by when they are opened, not by their names:

- the control channel: the first channel of the connection, a session with subsystem CONTROL that
  the broker opens right after authentication, before any renter channel exists. hostd takes
  control calls and sends events on this channel only; it refuses the CONTROL subsystem on any
  later channel and refuses every other channel until the control channel is open. One JSON
  object per line, both ways:
    broker -> hostd  {"call": N, "op": ..., ...}          a call
    hostd -> broker  {"call": N, "ok": true, ...}         its reply (or "ok": false, "error")
    hostd -> broker  {"type": ...}                        an event (no "call")
  Ops: hello (hostd replies with its join token when joining, its version, its leases and its
  inventory), welcome {"host": name} / reject {"error": ...} (the join outcome), lease.start,
  lease.stop, lease.extend, lease.discard, earnings. Events, sent only after welcome:
  {"type": "inventory", "inventory": {...}}, {"type": "lease.ended", "id", "at"},
  {"type": "lease.purged", "id"}.
- renter channels: a session carrying env LEASE_ENV=<lease id> plus the renter's own requests (pty,
  exec, shell, the sftp subsystem, signals, window changes), or a direct-tcpip channel whose
  destination host is target(lease, host) with host a loopback name.

Every value that arrives over the network is checked with the functions below before any use.
"""
import json
import math
import re

PROTO = 2
CONTROL = "shellrent-control-v2"
LEASE_ENV = "SHELLRENT_LEASE"
MAX_LINE = 1 << 20  # one control line; a peer that sends more is cut off
_TARGET = "lease."

LEASE_ID = re.compile(r"[0-9a-f]{8,32}")
NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
CONTAINER_ID = re.compile(r"[0-9a-f]{12,64}")
GPU_UUID = re.compile(r"(?:GPU|MIG)-[0-9A-Za-z-]{8,64}(?:/\d{1,3}/\d{1,3})?")
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
IMAGE = re.compile(rf"(?:[a-zA-Z0-9](?:[a-zA-Z0-9.-]*[a-zA-Z0-9])?(?::\d{{1,5}})?/)?{_COMPONENT}(?:/{_COMPONENT})*"
                   r"(?::[\w][\w.-]{0,127})?(?:@sha256:[0-9a-f]{64})?", re.ASCII)  # \w, \d: ASCII only
LOOPBACK = ("localhost", "127.0.0.1", "::1")
SIGNALS = ("ABRT", "ALRM", "FPE", "HUP", "ILL", "INT", "KILL", "PIPE", "QUIT", "SEGV", "TERM", "USR1", "USR2",
           "CONT", "STOP", "TSTP", "WINCH")
# Renter environment that may pass into a container; everything else is dropped (at both ends).
ENV_ALLOWED = ("LANG", "LANGUAGE", "TZ", "COLORTERM", "TERM_PROGRAM", "NO_COLOR")
_ENV_NAME = re.compile(r"(?:LANG|LANGUAGE|TZ|COLORTERM|TERM_PROGRAM|NO_COLOR|LC_[A-Z_]{1,32})")
# Why a lease ended: the codes a host's lease.ended event and the broker's lease.stop carry, and the
# words renters read. Any other value means "not said".
END_REASONS = {"time": "its time ran out", "released": "it was released", "stopped": "the operator stopped it",
               "lost": "its container stopped and could not be started again", "disk": "it went over its disk share",
               "gpu": "its GPU failed", "banned": "the operator removed its host", "host": "its host lost it",
               "offline": "its host went offline and did not come back"}
MAX_TIME = 4102444800.0  # 2100-01-01: no lease end or event time beyond this is real


HOST_REASONS = ("time", "lost", "disk", "gpu")  # what a host may say of an end it made itself


def end_reason(value, allowed=tuple(END_REASONS)) -> str | None:
    """A lease end's reason code from the wire, or None when it is not one (of those allowed)."""
    return value if isinstance(value, str) and value in allowed else None


class WireError(ValueError):
    """A value from the network is not in its expected format; str() says which."""


def encode(msg: dict) -> bytes:
    """One JSON line."""
    return json.dumps(msg, separators=(",", ":"), allow_nan=False).encode() + b"\n"


def decode(line: bytes) -> dict:
    """Parse one JSON line into a dict (WireError when it is not one)."""
    if len(line) > MAX_LINE:
        raise WireError("wire message too long")
    try:
        msg = json.loads(line, parse_constant=_no_constant, parse_float=_finite_float)
    except (ValueError, RecursionError) as exc:
        raise WireError(f"not JSON: {str(exc)[:80]}") from None
    if not isinstance(msg, dict):
        raise WireError("wire message is not an object")
    return msg


def _no_constant(name: str):
    raise WireError(f"{name} is not a number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise WireError(f"{text[:20]} is out of range")
    return value


def number_in(value, lo: float, hi: float, integer: bool = False) -> bool:
    """Whether value is a real number (an int, if integer) from lo to hi; never a bool, NaN or inf,
    and no overflow for huge ints."""
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        return False
    if isinstance(value, float) and not math.isfinite(value):
        return False
    return lo <= value <= hi


def _match(kind: str, pattern: re.Pattern, value) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise WireError(f"bad {kind} {printable(repr(value))[:80]}")
    return value


def lease_id(value) -> str:
    """A lease id: 8 to 32 lowercase hex digits."""
    return _match("lease id", LEASE_ID, value)


def name(value, kind: str = "name") -> str:
    """A renter or host name: lowercase letters, digits, - and _, up to 32, starting with a letter."""
    return _match(kind, NAME, value)


def image(value) -> str:
    """A Docker image reference, at most 255 characters."""
    if isinstance(value, str) and len(value) > 255:
        raise WireError("bad image: longer than 255 characters")
    return _match("image", IMAGE, value)


def image_list(text: str) -> list[str]:
    """The entries of an image allow-list ('IMG,IMG', '*' for any image), each checked."""
    items = [part.strip() for part in str(text).split(",") if part.strip()]
    for item in (i for i in items if i != "*"):
        try:
            image(item)
        except WireError:
            raise WireError(f"{printable(item)[:80]!r} is not an image name") from None
    return items


def image_allowed(allowed: str, value: str) -> bool:
    """Whether an allow-list (as image_list reads it) lets this image run; the rule at both ends."""
    items = [part.strip() for part in str(allowed).split(",")]
    return "*" in items or value in items


def container_id(value) -> str:
    """A Docker container id: 12 to 64 lowercase hex digits."""
    return _match("container id", CONTAINER_ID, value)


def gpu_uuid(value) -> str:
    """An NVML GPU or MIG UUID (or the fake source's)."""
    return _match("GPU UUID", GPU_UUID, value)


def timestamp(value, kind: str = "time") -> float:
    """Seconds since the epoch: a finite number between 0 and 2100."""
    if not number_in(value, 0, MAX_TIME):
        raise WireError(f"bad {kind} {printable(repr(value))[:40]}")
    return float(value)


def lease_start(lease) -> dict:
    """The checked lease of a lease.start call: id, renter, image, ends_at, gpus; workspace (the
    ended lease whose /workspace it takes) and auto (auto-extend on) where given."""
    if not isinstance(lease, dict):
        raise WireError("lease.start needs a lease object")
    gpus = lease.get("gpus") or []
    if not isinstance(gpus, list) or len(gpus) > 64:
        raise WireError("bad GPU list")
    checked = {"id": lease_id(lease.get("id")), "renter": name(lease.get("renter"), "renter name"),
               "image": image(lease.get("image")), "ends_at": timestamp(lease.get("ends_at"), "end time"),
               "gpus": [gpu_uuid(g) for g in gpus], "auto": lease.get("auto") is True}
    if lease.get("workspace") is not None:
        checked["workspace"] = lease_id(lease["workspace"])
        if checked["workspace"] == checked["id"]:
            raise WireError("a lease cannot take its own workspace")
    return checked


def filter_env(env: dict) -> dict:
    """The allow-listed part of a renter's environment (LANG, LC_*, TZ, ...), values without NUL."""
    return {k: v for k, v in env.items()
            if isinstance(k, str) and _ENV_NAME.fullmatch(k) and isinstance(v, str) and "\0" not in v
            and len(v) <= 4096}


def target(lease: str, host: str) -> str:
    """direct-tcpip destination naming a host inside a lease's container."""
    return f"{_TARGET}{lease}/{host}"


def parse_target(dest: str) -> tuple[str, str] | None:
    """(lease, host) from a direct-tcpip destination; None unless the lease id is well formed and
    the host is a loopback name."""
    if not isinstance(dest, str) or not dest.startswith(_TARGET) or "/" not in dest:
        return None
    lease, _, host = dest[len(_TARGET):].partition("/")
    if not LEASE_ID.fullmatch(lease) or host.lower() not in LOOPBACK:
        return None
    return lease, host


_UNSAFE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069]")


def one_line(text: str) -> str:
    """printable(text) with newlines and tabs shown as \\n and \\t: for one line of a log."""
    return printable(text).replace("\n", "\\n").replace("\t", "\\t")


def printable(text: str) -> str:
    """text with every control character (escape sequences, carriage returns, bidi overrides)
    shown as \\xNN, safe to put on someone's terminal; newlines and tabs stay."""
    return _UNSAFE.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                       else f"\\u{ord(m.group()):04x}", str(text))
