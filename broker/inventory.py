"""A host's inventory, checked field by field before the market sees it. Pure.

A host is not trusted: every field must have its type, lie in its range and, for text, be short and
printable. What is not listed here is dropped. check() returns a clean copy or raises
InventoryError naming the first bad field; the broker then keeps that host out of the offers.
"""
import re

from shellrent.common import protocol

from .errors import BrokerError
from .leases import parse_window

MAX_GPUS = 64
MAX_TFLOPS = 100_000
MAX_RATE = 10 ** 12  # bits per second
_TEXT = re.compile(r"[\x20-\x7e]*")


class InventoryError(BrokerError):
    """An inventory field is missing or invalid; str() names it."""


RETENTION = 172800.0  # hostd's default retention


def _num(inv: dict, key: str, lo: float, hi: float, integer: bool = False):
    v = inv.get(key)
    if not protocol.number_in(v, lo, hi, integer):
        raise InventoryError(f"{key}: expected {'a whole number' if integer else 'a number'} "
                             f"from {lo:g} to {hi:g}")
    return v


def _text(inv: dict, key: str, longest: int, default: str | None = None) -> str:
    v = inv.get(key, default)
    if not isinstance(v, str) or len(v) > longest or not _TEXT.fullmatch(v):
        raise InventoryError(f"{key}: expected printable text of at most {longest} characters")
    return v


def _gpu(g) -> dict:
    if not isinstance(g, dict):
        raise InventoryError("gpus: each GPU must be an object")
    try:
        uuid = protocol.gpu_uuid(g.get("uuid"))
    except protocol.WireError as exc:
        raise InventoryError(f"gpus: {exc}") from None
    return {"index": _num(g, "index", 0, 1023, integer=True), "uuid": uuid, "name": _text(g, "name", 64),
            "memory_gb": _num(g, "memory_gb", 0, 4096)}


def _images(text: str) -> str:
    try:
        protocol.image_list(text)
    except protocol.WireError as exc:
        raise InventoryError(f"images: {exc}") from None
    return text


def _ready(inv: dict, listed: str) -> list[str]:
    """The listed images present on the host (hostd pulls the others); a host that does not say has
    them all."""
    names = [i for i in protocol.image_list(listed) if i != "*"]
    ready = inv.get("ready", names)
    if not isinstance(ready, list) or not all(isinstance(i, str) and i in names for i in ready):
        raise InventoryError("ready: expected images of the listed ones")
    return list(dict.fromkeys(ready))


def check(inv, max_price: int) -> dict:
    """A clean copy of a host's inventory; InventoryError on the first bad field.

    max_price is the operator's ceiling in micro-credits per GPU-hour."""
    if not isinstance(inv, dict):
        raise InventoryError("inventory must be an object")
    gpus = inv.get("gpus")
    if not isinstance(gpus, list) or len(gpus) > MAX_GPUS:
        raise InventoryError(f"gpus: expected a list of at most {MAX_GPUS}")
    gpus = [_gpu(g) for g in gpus]
    uuids = [g["uuid"] for g in gpus]
    if len(set(uuids)) != len(uuids):
        raise InventoryError("gpus: the same UUID twice")
    shared = inv.get("shared")
    if not isinstance(shared, list) or not all(isinstance(u, str) and u in uuids for u in shared):
        raise InventoryError("shared: expected UUIDs of the listed GPUs")
    window = _text(inv, "window", 16, "always")
    try:
        parse_window(window)
    except BrokerError:
        raise InventoryError("window: expected HH:MM-HH:MM or always") from None
    paused = inv.get("paused", False)
    if not isinstance(paused, bool):
        raise InventoryError("paused: expected true or false")
    cuda = inv.get("cuda_version", 0)
    checked = inv.get("checked", {})
    if not isinstance(checked, dict) or not all(u in uuids and protocol.number_in(t, 0, MAX_TFLOPS)
                                                for u, t in checked.items()):
        raise InventoryError(f"checked: expected TFLOPS from 0 to {MAX_TFLOPS} of the listed GPUs")
    images = _images(_text(inv, "images", 1024, "*"))
    return {
        "gpus": gpus, "shared": list(dict.fromkeys(shared)), "checked": checked,
        "gpu_source": _text(inv, "gpu_source", 16, ""),
        "driver_version": _text(inv, "driver_version", 32, ""),
        "cuda_version": _num({"cuda_version": cuda}, "cuda_version", 0, 100),
        "cpu_cores": _num(inv, "cpu_cores", 1, 65536, integer=True), "ram_gb": _num(inv, "ram_gb", 0, 1 << 20),
        "disk_gb": _num(inv, "disk_gb", 0, 1 << 30),
        "cpu_per_gpu": _num(inv, "cpu_per_gpu", 0, 65536), "ram_per_gpu": _num(inv, "ram_per_gpu", 0, 1 << 20),
        "disk_per_gpu": _num(inv, "disk_per_gpu", 0, 1 << 30),
        "price": _num(inv, "price", 0, max_price, integer=True), "window": window, "paused": paused,
        "geolocation": _text(inv, "geolocation", 32, ""), "images": images,
        "ready": _ready(inv, images),
        "version": _text(inv, "version", 32, ""),
        # how long an ended lease's /workspace is kept (a host that does not say: hostd's default)
        "retention": _num({"retention": inv.get("retention", RETENTION)}, "retention", 0, 366 * 86400),
        # bits per second per lease and for all leases together; 0 (and a host that does not say): no cap
        "bandwidth": _num({"bandwidth": inv.get("bandwidth", 0)}, "bandwidth", 0, MAX_RATE, integer=True),
        "bandwidth_total": _num({"bandwidth_total": inv.get("bandwidth_total", 0)}, "bandwidth_total", 0,
                                MAX_RATE, integer=True),
    }
