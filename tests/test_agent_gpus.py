"""What hostd offers from its GPUs: never a GPU that fails a required check, is lost or is withdrawn."""
from types import SimpleNamespace

from shellrent.hostd import settings
from shellrent.hostd.gpus import NvmlSource
from shellrent.hostd.inventory import Inventory, build

from . import nvml_standin


class _Engine:  # what the inventory asks of the Docker engine
    def disk_free_gb(self):
        return 500.0

    def has_image(self, image):
        return image == "ubuntu:22.04"


def _inventory(nvml, health):
    return Inventory(lambda: NvmlSource(nvml), lambda: {**settings.defaults(), "images": "ubuntu:22.04,cuda:12"},
                     _Engine(), health)


def _health(failures=(), withdrawn=None):
    return SimpleNamespace(failures=list(failures), withdrawn=lambda: withdrawn or {}, verified=lambda uuids: {})


def test_the_inventory_offers_only_gpus_that_pass_every_check():
    nvml = nvml_standin.make("RTX 4090", "A100", "A100")
    u0, u1, u2 = (g["uuid"] for g in nvml.gpus)
    inv = _inventory(nvml, _health()).read()
    assert inv["shared"] == [u0, u1, u2] and inv["driver_version"] == "535.104.05" and inv["cuda_version"] == 12.2
    assert inv["gpus"][1] == {"index": 1, "uuid": u1, "name": "NVIDIA A100-SXM4-80GB", "memory_gb": 80.0}
    assert inv["ready"] == ["ubuntu:22.04"] and inv["disk_gb"] == 500 and inv["disk_per_gpu"] == 167
    failing = _inventory(nvml, _health(["toolkit config: accept-nvidia-visible-devices-envvar-when-unprivileged "
                                        "is true"])).read()
    assert failing["shared"] == [] and len(failing["gpus"]) == 3
    withdrawn = _health(withdrawn={u1: "in use by the provider's own process(es) 4242"})
    nvml.fail(2, "memory", nvml.NVML_ERROR_GPU_IS_LOST)
    inv = _inventory(nvml, withdrawn).read()
    assert inv["shared"] == [u0] and [g["uuid"] for g in inv["gpus"]] == [u0, u1]
    assert inv["checked"] == {}


def test_a_driver_gone_means_no_gpus_offered_not_a_crash():
    nvml = nvml_standin.make("RTX 4090")

    def gone():
        raise nvml.NVMLError(nvml.NVML_ERROR_DRIVER_NOT_LOADED)
    nvml.nvmlDeviceGetCount = gone
    inv = _inventory(nvml, _health()).read()
    assert inv["gpus"] == [] and inv["shared"] == [] and inv["driver_version"] == ""


def test_the_settings_choose_the_gpus_and_the_shares_per_gpu():
    gpus = [{"index": i, "uuid": f"GPU-{i}", "name": "A100", "memory_gb": 80.0} for i in range(4)]
    s = {**settings.defaults(), "gpus": "1,3", "price": 0.5}
    inv = build(s, gpus, {"driver_version": "550", "cuda_version": 12.4}, failing=False, withdrawn={"GPU-3": "x"},
                checked={}, source="fake", cores=16, ram_gb=64.0, disk_gb=1000, ready=[])
    assert inv["shared"] == ["GPU-1"] and len(inv["gpus"]) == 4
    assert (inv["cpu_per_gpu"], inv["ram_per_gpu"], inv["disk_per_gpu"], inv["price"]) == (16, 51.2, 1000, 500_000)
    s = {**s, "gpus": "all", "cpu_per_gpu": 3, "ram_per_gpu": 20, "disk_per_gpu": 100}
    inv = build(s, gpus, {}, failing=False, withdrawn={}, checked={}, source="fake", cores=16, ram_gb=64.0,
                disk_gb=1000, ready=[])
    assert len(inv["shared"]) == 4 and (inv["cpu_per_gpu"], inv["ram_per_gpu"], inv["disk_per_gpu"]) == (3, 20, 100)
