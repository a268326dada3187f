"""A host's inventory is checked field by field; anything off names the field."""
import copy

import pytest

from shellrent.broker.inventory import InventoryError, check

GPU = "GPU-fake-00112233445566778899aabb"
GOOD = {"gpus": [{"index": 0, "uuid": GPU, "name": "RTX 4090", "memory_gb": 24.0}], "shared": [GPU],
        "checked": {GPU: 150.0},
        "gpu_source": "fake", "driver_version": "fake", "cuda_version": 12.2, "cpu_cores": 8, "ram_gb": 32.0,
        "disk_gb": 100, "cpu_per_gpu": 4, "ram_per_gpu": 16.0, "disk_per_gpu": 50, "price": 400_000,
        "window": "22:00-08:00", "paused": False, "geolocation": "DE", "images": "*", "ready": [], "version": "0.2.0",
        "retention": 3600.0, "bandwidth": 40_000_000, "bandwidth_total": 0}
CEILING = 100_000_000


def test_a_good_inventory_comes_back_clean():
    assert check({**GOOD, "extra": "dropped"}, CEILING) == GOOD


@pytest.mark.parametrize("field,value,named", [
    ("price", -1, "price"), ("price", CEILING + 1, "price"), ("price", 1.5, "price"), ("price", True, "price"),
    ("cpu_cores", "8", "cpu_cores"), ("ram_gb", float("nan"), "ram_gb"), ("disk_gb", float("inf"), "disk_gb"),
    ("geolocation", "\x1b[2J", "geolocation"), ("geolocation", "x" * 33, "geolocation"),
    ("window", "25:00-01:00", "window"), ("paused", "no", "paused"), ("images", "a b", "images"),
    ("gpus", "many", "gpus"), ("gpus", [{"index": 0, "uuid": "x", "name": "a", "memory_gb": 1}], "gpus"),
    ("gpus", [{"index": 0, "uuid": GPU, "name": "A" * 65, "memory_gb": 24}], "name"),
    ("gpus", [{"index": 0, "uuid": GPU, "name": "a", "memory_gb": 1}] * 2, "gpus"),
    ("shared", ["GPU-fake-ffffffffffffffffffffffff"], "shared"), ("cuda_version", "12", "cuda_version"),
    ("checked", {"GPU-fake-ffffffffffffffffffffffff": 100.0}, "checked"), ("checked", {GPU: -1}, "checked"),
    ("bandwidth", -1, "bandwidth"), ("bandwidth", 1.5, "bandwidth"), ("bandwidth", "50mbit", "bandwidth"),
    ("bandwidth_total", 10 ** 13, "bandwidth_total"),
    ("checked", {GPU: float("nan")}, "checked"), ("checked", [GPU], "checked"),
    ("version", "\u202e", "version"), ("cpu_cores", 10**400, "cpu_cores"), ("price", -10**400, "price"),
])
def test_each_bad_field_is_named(field, value, named):
    inv = copy.deepcopy(GOOD)
    inv[field] = value
    with pytest.raises(InventoryError, match=f"^{named}"):
        check(inv, CEILING)


@pytest.mark.parametrize("inv", [None, [], "inventory", 3])
def test_not_an_object(inv):
    with pytest.raises(InventoryError, match="must be an object"):
        check(inv, CEILING)


def test_a_host_that_names_no_bandwidth_has_no_cap():
    old = {k: v for k, v in GOOD.items() if not k.startswith("bandwidth")}
    clean = check(old, CEILING)
    assert (clean["bandwidth"], clean["bandwidth_total"]) == (0, 0)
