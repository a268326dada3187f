"""hostd's GPU health: the required checks of `hostd doctor` (while one fails no GPU is offered), the
GPU self-check when it is due, and the watchdog loop (hostd.gpuwatch) with what it shows in the status."""
import asyncio
import json
import logging
import time

from shellrent.common import protocol

from . import metrics as hostd_metrics, offload, selfcheck
from .gpuwatch import GpuWatch

log = logging.getLogger("shellrent.agent")


class GpuHealth:
    def __init__(self, config, gpus, settings, store, runtime, emit, status, end_lease):
        self._config = config
        self._gpus = gpus  # () -> the GPU source
        self._settings = settings
        self._store = store
        self._runtime = runtime
        self._emit = emit
        self._status = status
        self._end_lease = end_lease  # async (lease id) -> None
        self.watch = GpuWatch(gpus, store, settings, config.power_path)
        self._selfcheck = selfcheck.load(config.home / "selfcheck.json")  # the last result
        self._wake = asyncio.Event()
        self._kills: list[dict] = []
        self._check_task: asyncio.Task | None = None
        self.failures: list[str] = []
        self.failures = self.required()

    def withdrawn(self) -> dict:
        return self.watch.withdrawn

    def verified(self, uuids: set[str]) -> dict:
        return selfcheck.verified(self._selfcheck, uuids)

    def wake(self) -> None:
        """Look again now (a lease started or ended: its GPUs' power limits)."""
        self._wake.set()

    def required(self) -> list[str]:
        """The required GPU checks that fail (driver, container toolkit and its config)."""
        from .doctor import gpu_failures
        try:
            failures = gpu_failures(self._gpus(), self._runtime.client.info())
        except Exception as exc:  # the checks themselves broke: say so, offer nothing
            failures = [f"the GPU checks could not run: {exc}"]
        for why in set(failures) - set(self.failures):
            log.error("offering no GPUs until this is fixed (see `hostd doctor`): %s", why)
        if self.failures and not failures:
            log.info("the required GPU checks pass now: offering GPUs")
        return failures

    async def recheck(self) -> None:
        """Run the required checks again (a provider who fixed the driver or toolkit: no restart needed)."""
        try:
            self.failures = await offload.call(self.required, timeout=30)
        except asyncio.TimeoutError:
            log.warning("the GPU checks did not finish in time")

    async def run(self) -> None:
        """The GPU watchdog and power limits, every `watchdog` seconds and at once when woken."""
        try:
            while True:
                await self._pass()
                try:
                    await asyncio.wait_for(self._wake.wait(), self._settings()["watchdog"])
                except asyncio.TimeoutError:
                    pass
                self._wake.clear()
        finally:
            if self._check_task:
                self._check_task.cancel()

    async def _pass(self) -> None:
        try:
            result = await offload.call(self.watch.pass_once, timeout=60)
        except Exception as exc:  # a GPU source that hangs or breaks: say so, try again
            log.error("GPU watchdog: %s", exc or "timed out")
            return
        for report in result["killed"]:
            self._emit(report)
        for lid, uuid in result["lost"].items():
            log.error("lease %s: its GPU %s is lost: ending the lease", lid, uuid)
            asyncio.get_running_loop().create_task(self._end_lease(lid))
        hostd_metrics.KILLS.inc(len(result["killed"]))
        self._kills = (self._kills + result["killed"])[-20:]
        status = {"gpu_problems": result["problems"], "gpu_kills": self._kills, "gpu_failures": self.failures}
        if any(self._status.get(k) != v for k, v in status.items()):
            self._status.set(**status)

    def self_check(self, inv: dict) -> None:
        """Start the GPU self-check when it is due (never run, a new driver, a new GPU)."""
        if self._check_task and not self._check_task.done():
            return
        held = {u for r in self._store.holding() for u in json.loads(r["gpus"] or "[]")}
        uuids = [u for u in inv.get("shared", []) if u not in held]
        driver = inv.get("driver_version", "")
        if not selfcheck.due(self._selfcheck, driver, uuids, time.time()):
            return
        s = self._settings()
        if self._gpus().kind == "fake" and not s["check_image"]:
            return  # fake GPUs are checked only in an image made for them (tests)
        image = s["check_image"] or next((i for i in protocol.image_list(s["images"]) if i != "*"), "")
        if not image:
            log.warning("GPU self-check: set check_image to an image with torch")
            return
        log.info("GPU self-check of %d GPU(s) in %s", len(uuids), image)
        self._check_task = asyncio.get_running_loop().create_task(self._run_check(image, uuids, driver))

    async def _run_check(self, image: str, uuids: list[str], driver: str) -> None:
        try:
            self._selfcheck = await offload.call(
                selfcheck.run, self._runtime, image, uuids, self._gpus().device_ids(uuids), driver,
                self._config.home / "selfcheck.json", self.watch.checking.add, timeout=900)
        except asyncio.TimeoutError:
            log.error("GPU self-check did not finish in 15 minutes")
        except Exception:  # a bug: say it once, and do not run it again until the next start
            log.exception("GPU self-check failed")
            self._check_task = asyncio.get_running_loop().create_future()  # never done: no new check
