"""How hostd reads the self-check's output and decides when to run it again."""
import json
import re

from shellrent.hostd import selfcheck
from shellrent.hostd.runtime import check_name

U = ["GPU-5a7a6b90-4a1b-9c2d-77e1-000000000301", "GPU-5a7a6b91-4a1b-9c2d-77e1-000000000301"]


def _out(*gpus, error=None) -> bytes:
    return b"torch noise on stdout\n" + json.dumps({"ok": error is None, "gpus": list(gpus), "error": error}).encode()


def test_results_map_to_uuids_by_torchs_uuid_or_by_order():
    gpus, error = selfcheck.parse(_out(
        {"index": 0, "uuid": U[1], "name": "B", "ok": True, "tflops_fp16": 300.5, "tflops_bf16": 310.0},
        {"index": 1, "uuid": None, "name": "A", "ok": True, "tflops_fp16": 150.0, "tflops_bf16": None}), U)
    assert error is None
    assert gpus[U[1]]["tflops"] == 310.0 and gpus[U[1]]["ok"]
    assert gpus[U[0]]["tflops"] == 150.0 and gpus[U[0]]["name"] == "A"


def test_failures_and_garbage_are_unverified_never_a_crash():
    gpus, error = selfcheck.parse(_out({"index": 0, "ok": False, "error": "CUDA error: \x1b[2J illegal",
                                        "tflops_fp16": float("inf")}, error="1 of 2 GPUs failed"), U)
    assert error == "1 of 2 GPUs failed" and not gpus[U[0]]["ok"] and gpus[U[0]]["tflops"] == 0.0
    assert "\x1b" not in gpus[U[0]]["error"]
    assert gpus[U[1]] == {"ok": False, "tflops": 0.0, "error": "the check did not see this GPU"}
    gpus, error = selfcheck.parse(b"Segmentation fault\n", U)
    assert "printed no result: Segmentation fault" in error and not any(g["ok"] for g in gpus.values())
    gpus, error = selfcheck.parse(b'[1, "x"]\n', U)
    assert not any(g["ok"] for g in gpus.values())


def test_verified_are_the_gpus_that_passed_and_are_still_here():
    result = {"gpus": {U[0]: {"ok": True, "tflops": 150.0}, U[1]: {"ok": False, "tflops": 0.0}}}
    assert selfcheck.verified(result, set(U)) == {U[0]: 150.0}
    assert selfcheck.verified(result, {U[1]}) == {}


def test_it_runs_again_after_a_driver_change_a_new_gpu_or_an_hour_after_a_failure():
    result = {"driver": "535.104.05", "at": 1000.0, "gpus": {U[0]: {"ok": True}, U[1]: {"ok": False}}}
    assert selfcheck.due({}, "535.104.05", U[:1], 1000)
    assert not selfcheck.due(result, "535.104.05", U[:1], 10**6)  # passed: not again for the same driver
    assert selfcheck.due(result, "550.54.14", U[:1], 1000)
    assert selfcheck.due({**result, "gpus": {U[0]: {"ok": True}}}, "535.104.05", U, 1000)
    assert not selfcheck.due(result, "535.104.05", U, 1000 + selfcheck.RETRY - 1)
    assert selfcheck.due(result, "535.104.05", U, 1000 + selfcheck.RETRY)
    assert not selfcheck.due(result, "550.54.14", [], 1000)  # nothing free to check


def test_the_check_containers_name_is_valid_for_any_owner():
    for owner in ("/umCwke7248MfYg9", "a+b/c=d", "plain"):
        assert re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+", check_name(owner))
    assert check_name("a/b") != check_name("a+b")
