"""What hostd offers from its GPUs: never a GPU that fails a required check, is lost or is withdrawn."""
from shellrent.hostd.agent import Agent
from shellrent.hostd.config import Config
from shellrent.hostd.gpus import NvmlSource
from shellrent.hostd.gpuwatch import GpuWatch

from . import nvml_standin


async def test_the_inventory_offers_only_gpus_that_pass_every_check(tmp_path):
    agent = Agent(Config(home=tmp_path), "SHA256:x")
    nvml = nvml_standin.make("RTX 4090", "A100", "A100")
    agent._gpus = NvmlSource(nvml)
    u0, u1, u2 = (g["uuid"] for g in nvml.gpus)
    inv = agent.inventory()
    assert inv["shared"] == [u0, u1, u2] and inv["driver_version"] == "535.104.05" and inv["cuda_version"] == 12.2
    assert inv["gpus"][1] == {"index": 1, "uuid": u1, "name": "NVIDIA A100-SXM4-80GB", "memory_gb": 80.0}
    agent._gpu_failures = ["toolkit config: accept-nvidia-visible-devices-envvar-when-unprivileged is true"]
    assert agent.inventory()["shared"] == [] and len(agent.inventory()["gpus"]) == 3
    agent._gpu_failures = []
    agent.gpuwatch = GpuWatch(lambda: agent._gpus, None, agent.settings, tmp_path / "power.json")
    agent.gpuwatch.withdrawn = {u1: "in use by the provider's own process(es) 4242"}
    nvml.fail(2, "memory", nvml.NVML_ERROR_GPU_IS_LOST)
    inv = agent.inventory()
    assert inv["shared"] == [u0] and [g["uuid"] for g in inv["gpus"]] == [u0, u1]
    assert inv["checked"] == {}


async def test_a_driver_gone_means_no_gpus_offered_not_a_crash(tmp_path):
    agent = Agent(Config(home=tmp_path), "SHA256:x")
    nvml = nvml_standin.make("RTX 4090")
    agent._gpus = NvmlSource(nvml)

    def gone():
        raise nvml.NVMLError(nvml.NVML_ERROR_DRIVER_NOT_LOADED)
    nvml.nvmlDeviceGetCount = gone
    inv = agent.inventory()
    assert inv["gpus"] == [] and inv["shared"] == [] and inv["driver_version"] == ""
