"""The provider's sharing settings: a JSON file in the hostd home, validated with clear errors.

`hostd config set KEY VALUE` edits it; a running hostd notices the change within a second or two
and reports its new inventory to the broker.
"""
import json
import math
import re
from pathlib import Path

from shellrent.common import protocol

from . import firewall
from .config import write_private


class SettingsError(Exception):
    """A setting's value is not valid; str() says which and why."""


def _duration(text: str) -> float:
    m = re.fullmatch(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", text.strip())
    if not text.strip() or not m or not any(m.groups()):
        raise ValueError("use e.g. 30s, 5m, 2h, 1d")
    d, h, mi, s = m.groups()
    seconds = int(d or 0) * 86400 + int(h or 0) * 3600 + int(mi or 0) * 60 + float(s or 0)
    if seconds > 366 * 86400:
        raise ValueError("at most 366 days")
    return seconds


def _bool(text: str) -> bool:
    if text.lower() in ("true", "yes", "1", "on"):
        return True
    if text.lower() in ("false", "no", "0", "off"):
        return False
    raise ValueError("use true or false")


def _positive(kind, most: float):
    def parse(text: str):
        try:
            value = kind(text)
        except (ValueError, OverflowError):
            raise ValueError(f"expected {'a whole number' if kind is int else 'a number'}") from None
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        if not 0 <= value <= most:
            raise ValueError(f"must be from 0 to {most:g}")
        return value
    return parse


def _fake_gpus(text: str) -> str:
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, mem = part.rpartition(":")
        if not sep or not name or not mem.replace(".", "", 1).isdigit():
            raise ValueError(f"{part!r}: use MODEL:GB, e.g. 'RTX 4090:24,RTX 4090:24'")
    return text.strip()


def _gpus(text: str) -> str:
    if text.strip() != "all" and not re.fullmatch(r"\d+(,\d+)*", text.strip()):
        raise ValueError("use all, or GPU indexes like 0,2")
    return text.strip()


def _window(text: str) -> str:
    m = re.fullmatch(r"(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})", text)
    if text != "always" and not (m and int(m[1]) < 24 and int(m[3]) < 24 and int(m[2]) < 60 and int(m[4]) < 60):
        raise ValueError("use HH:MM-HH:MM (UTC, hours 00-23), e.g. 22:00-08:00, or always")
    return text


def _images(text: str) -> str:
    try:
        protocol.image_list(text)
    except protocol.WireError as exc:
        raise ValueError(f"{exc}; use e.g. shellrent-base:bookworm or *") from None
    return text.strip()


def _egress(text: str) -> str:
    firewall.parse_allow(text)
    return text.strip()


def _label(text: str) -> str:
    if len(text) > 32 or not re.fullmatch(r"[\x20-\x7e]*", text):
        raise ValueError("at most 32 printable characters")
    return text


def _every(text: str) -> float:
    seconds = _duration(text)
    if not 1 <= seconds <= 3600:
        raise ValueError("from 1s to 1h")
    return seconds


def _image(text: str) -> str:
    if text.strip():
        try:
            protocol.image(text.strip())
        except protocol.WireError as exc:
            raise ValueError(str(exc)) from None
    return text.strip()


RATE_UNITS = {"kbit": 1_000, "mbit": 1_000_000, "gbit": 1_000_000_000}
RATE_MIN, RATE_MAX = 100_000, 100_000_000_000  # 100kbit (below it an SSH session stalls) to 100gbit


def _rate(text: str) -> int:
    """Bits per second from '0' (no cap), '800kbit', '50mbit', '1.5gbit'. Only bit units: tc reads
    'mbps' as megaBYTES per second, so the byte spellings are refused rather than guessed."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-z/]*)", text.strip().lower())
    if m and m[2] == "" and float(m[1]) == 0:
        return 0
    if not m or m[2] not in RATE_UNITS:
        hint = " (bps is bytes in tc's units: use kbit, mbit or gbit)" if m and m[2].endswith(("bps", "b/s")) else ""
        raise ValueError(f"use e.g. 50mbit, 800kbit, 1gbit, or 0 for no cap{hint}")
    bits = int(round(float(m[1]) * RATE_UNITS[m[2]]))
    if not RATE_MIN <= bits <= RATE_MAX:
        raise ValueError("from 100kbit to 100gbit, or 0 for no cap")
    return bits


def shown_rate(bits: int) -> str:
    """Bits per second as `config set` takes them (50mbit); 0 is no cap."""
    if not bits:
        return "0"
    if bits % 1_000_000_000 == 0:
        return f"{bits // 1_000_000_000}gbit"
    if bits % 1_000_000 == 0:
        return f"{bits // 1_000_000}mbit"
    return f"{bits / 1000:.3f}".rstrip("0").rstrip(".") + "kbit"


def _schedule(text: str) -> str:
    for part in text.split(","):
        _duration(part)
    return text


# key: (parser, default, help)
SPEC = {
    "price": (_positive(float, 10_000), 0.40, "credits per GPU-hour"),
    "gpus": (_gpus, "all", "which GPUs to share: all, or indexes like 0,2"),
    "fake_gpus": (_fake_gpus, "", "GPUs to pretend to have when there is no NVML, e.g. 'RTX 4090:24'"),
    "cpu_per_gpu": (_positive(int, 4096), 0, "CPU cores per rented GPU (0: an even share)"),
    "ram_per_gpu": (_positive(float, 1 << 20), 0, "GB of RAM per rented GPU (0: an even share of 80%)"),
    "disk_per_gpu": (_positive(float, 1 << 30), 0, "GB of disk per rented GPU (0: an even share of free disk)"),
    "window": (_window, "always", "availability window, HH:MM-HH:MM UTC, or always"),
    "paused": (_bool, False, "take no new rentals (running ones continue)"),
    "power_limit": (_positive(int, 10_000), 0, "watts per rented GPU, restored after (0: leave as is)"),
    "watchdog": (_every, 5.0, "how often to check the processes on each GPU, e.g. 5s"),
    "check_image": (_image, "", "image with torch for the GPU self-check (empty: the first of images)"),
    "images": (_images, "shellrent-base:bookworm",
               "comma-separated lease images allowed (pulled when missing), or * for any image on this machine"),
    "egress_allow": (_egress, "", "what lease containers may reach besides the internet: IP[:PORT],CIDR[:PORT]"),
    "bandwidth": (_rate, 0, "each lease's traffic, each way, e.g. 50mbit (0: no cap)"),
    "bandwidth_total": (_rate, 0, "all leases' traffic together, each way, e.g. 200mbit (0: no cap)"),
    "geolocation": (_label, "", "where the machine is, e.g. DE"),
    "warnings": (_schedule, "15m,5m,1m", "when to warn before a lease ends"),
    "grace": (_duration, 30.0, "SIGTERM to SIGKILL at a lease's end, e.g. 30s"),
    "retention": (_duration, 172800.0, "how long /workspace is kept after a lease ends, e.g. 48h"),
}


def shown(key: str, value) -> str:
    """A value as `config set` takes it back (30s, 48h, false): show and set round-trip."""
    if SPEC[key][0] in (_duration, _every):
        seconds, out = float(value), ""
        for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
            if seconds >= size and (seconds % size == 0 or unit == "m"):
                n, seconds = divmod(seconds, size)
                out += f"{int(n)}{unit}"
        return out + (f"{seconds:g}s" if seconds or not out else "")
    if SPEC[key][0] is _rate:
        return shown_rate(int(value))
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def defaults() -> dict:
    return {k: v[1] for k, v in SPEC.items()}


def parse(key: str, text: str):
    """The typed value of one setting; SettingsError naming the key otherwise."""
    if key not in SPEC:
        raise SettingsError(f"unknown setting {key!r}; known: {', '.join(SPEC)}")
    try:
        return SPEC[key][0](str(text))
    except ValueError as exc:
        raise SettingsError(f"bad value {text!r} for {key}: {exc}") from None


def load(path: Path) -> dict:
    """Settings from path over the defaults; SettingsError on a bad file."""
    values = defaults()
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return values
    except ValueError as exc:
        raise SettingsError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise SettingsError(f"{path}: expected a JSON object")
    for key, value in raw.items():
        values[key] = parse(key, str(value))
    return values


def save(path: Path, key: str, text: str) -> dict:
    """Validate and store one setting (as the text given); returns all settings."""
    load(path)
    parse(key, text)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raw = {}
    raw[key] = str(text)
    write_private(path, json.dumps(raw, indent=1, sort_keys=True))
    return load(path)


def lease_rate(values: dict, leases: int) -> int:
    """Bits per second each lease may use, each way, with `leases` running (0: no cap): `bandwidth`,
    and no more than an even share of `bandwidth_total` (but at least 100kbit)."""
    caps = [values["bandwidth"]] if values["bandwidth"] else []
    if values["bandwidth_total"]:  # not below the smallest rate an SSH session keeps working at
        caps.append(max(RATE_MIN, values["bandwidth_total"] // max(1, leases)))
    return min(caps) if caps else 0


def warn_offsets(values: dict) -> list[float]:
    """Seconds before the end at which to warn, largest first."""
    return sorted((_duration(p) for p in values["warnings"].split(",")), reverse=True)
