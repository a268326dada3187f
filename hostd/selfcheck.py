"""The GPU self-check as hostd runs it: gpu_check.py in a throwaway container on the shared GPUs.

hostd runs it after joining and whenever the driver or the set of GPUs changes; what it measured
becomes each GPU's TFLOPS and `verified` in the offers. The result is kept in the home directory
(selfcheck.json), so a restart does not run it again for the same driver and GPUs.
"""
import json
import logging
import time
from pathlib import Path

from shellrent.common import protocol

from .config import write_private

log = logging.getLogger("shellrent.selfcheck")
SCRIPT = Path(__file__).with_name("gpu_check.py")
MOUNTED = "/etc/shellrent/gpu-check.py"  # where leases and the check container see it
MAX_TFLOPS = 100_000
RETRY = 3600.0  # seconds before a GPU that failed the check is checked again


def load(path: Path) -> dict:
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(result, dict) or not isinstance(result.get("gpus"), dict) \
            or not all(isinstance(r, dict) for r in result["gpus"].values()):
        return {}  # not ours: checked again
    return result


def due(result: dict, driver: str, uuids: list[str], now: float) -> bool:
    """Whether to run the check on these GPUs: never run, a driver change, a GPU it has not seen, or
    one that failed RETRY ago or more (a lease may have taken it mid-check)."""
    seen = result.get("gpus", {})
    failed = any(not seen.get(u, {}).get("ok") for u in uuids)
    return bool(uuids) and (result.get("driver") != driver or not set(uuids) <= set(seen)
                            or (failed and now - result.get("at", 0) >= RETRY))


def verified(result: dict, known: set[str]) -> dict[str, float]:
    """{uuid: TFLOPS} of the GPUs that passed the last check (for the inventory)."""
    return {u: r["tflops"] for u, r in result.get("gpus", {}).items()
            if u in known and r.get("ok") and protocol.number_in(r.get("tflops"), 0, MAX_TFLOPS)}


def parse(output: bytes, uuids: list[str]) -> tuple[dict, str | None]:
    """Per-GPU results from the script's --json output; uuids are the GPUs given, in NVML order,
    which is the order the container sees them in (CUDA_DEVICE_ORDER=PCI_BUS_ID)."""
    try:
        report = json.loads(output.decode(errors="replace").strip().splitlines()[-1])
        if not isinstance(report, dict) or not isinstance(report.get("gpus"), list):
            raise ValueError("not a report")
    except (ValueError, IndexError):
        tail = protocol.printable(output.decode(errors="replace").strip())[-200:]
        return ({u: {"ok": False, "tflops": 0.0, "error": "no result"} for u in uuids},
                f"the check printed no result: {tail}")
    found = [g for g in report["gpus"] if isinstance(g, dict)]
    named = {g.get("uuid") for g in found} & set(uuids)
    unnamed = iter(u for u in uuids if u not in named)  # the rest in order: torch named no UUID
    gpus = {}
    for g in found:
        uuid = g.get("uuid") if g.get("uuid") in uuids else next(unnamed, None)
        if uuid is None or uuid in gpus:
            continue
        best = max((t for t in (g.get("tflops_fp16"), g.get("tflops_bf16"))
                    if protocol.number_in(t, 0, MAX_TFLOPS)), default=0.0)
        gpus[uuid] = {"ok": g.get("ok") is True, "tflops": round(float(best), 1), "name": protocol.printable(
            str(g.get("name", "")))[:64], "error": protocol.printable(str(g.get("error") or ""))[:200] or None}
    for u in uuids:
        gpus.setdefault(u, {"ok": False, "tflops": 0.0, "error": "the check did not see this GPU"})
    error = report.get("error")
    return gpus, protocol.printable(str(error))[:300] if error else None


def run(runtime, image: str, uuids: list[str], device_ids: list[str], driver: str, path: Path,
        on_created=lambda cid: None) -> dict:
    """Run the check (blocking; call it from a thread) and store the result. on_created gets the
    check container's id before it starts."""
    started = time.time()
    try:
        code, output = runtime.run_check(image, device_ids, uuids, str(SCRIPT), on_created)
        gpus, error = parse(output, uuids)
        if code != 0 and not error:
            error = f"the check exited with status {code}"
    except Exception as exc:  # the engine, the image: the check could not run
        gpus, error = {u: {"ok": False, "tflops": 0.0, "error": "not run"} for u in uuids}, str(exc)
    result = {"driver": driver, "image": image, "at": started, "seconds": round(time.time() - started, 1),
              "gpus": gpus, "error": error}
    write_private(path, json.dumps(result))
    ok = [u for u, r in gpus.items() if r["ok"]]
    if error:
        log.warning("GPU self-check in %s: %s (%d of %d GPUs passed)", image, error, len(ok), len(uuids))
    else:
        log.info("GPU self-check in %s: %s", image, ", ".join(f"{gpus[u]['tflops']:g} TFLOPS" for u in uuids))
    return result
