"""Image pulls: hostd's progress from the engine's events (recorded from a real `docker pull` of a
three-layer image from a local registry: tests/data/pull-events.jsonl), joined and failed pulls, the
broker's check of a host's progress events, and how a renter sees them (bar or plain lines)."""
import asyncio
import json
import threading
from pathlib import Path

import pytest

from shellrent.broker import inventory
from shellrent.broker.progress import StartProgress, check_view, pull_line
from shellrent.hostd.pulls import Progress, PullError, Pulls
from shellrent.common.protocol import WireError

EVENTS = [json.loads(line) for line in (Path(__file__).parent / "data" / "pull-events.jsonl").read_text().splitlines()]
SIZES = {"0fb9b170a635": 3392, "dd1c6aec8f38": 1064337, "f9acf25cca02": 6002032}
IMAGE = "127.0.0.1:5123/pulltest:1"


def test_progress_follows_the_recorded_events_to_the_end():
    p = Progress(IMAGE)
    views = []
    for event in EVENTS:
        p.feed(event)
        views.append(p.view())
    assert views[0] == {"image": IMAGE, "layers": 0, "done": 0, "bytes": 0, "total": 0}  # "Pulling from"
    assert views[3]["layers"] == 3 and views[3]["done"] == 0
    assert [v["bytes"] for v in views] == sorted(v["bytes"] for v in views)  # never goes back
    assert [v["done"] for v in views] == sorted(v["done"] for v in views)
    assert any(0 < v["bytes"] < v["total"] for v in views)  # part-way through the big layer
    assert views[-1] == {"image": IMAGE, "layers": 3, "done": 3, "bytes": sum(SIZES.values()),
                         "total": sum(SIZES.values())}


def test_a_failure_event_is_one_line_and_junk_is_ignored():
    p = Progress(IMAGE)
    for junk in (None, "text", {"status": 3}, {"status": "Downloading", "id": "../../etc"},
                 {"status": "Downloading", "id": "0fb9b170a635", "progressDetail": {"current": -5, "total": "x"}}):
        p.feed(junk)
    assert p.view()["bytes"] == 0
    with pytest.raises(PullError) as e:
        p.feed({"errorDetail": {"message": "unauthorized:\nauthentication required"},
                "error": "unauthorized:\nauthentication\trequired"})
    assert str(e.value) == "unauthorized: authentication required"


def _replay(events, gate: threading.Event | None = None, calls: list | None = None):
    def engine_pull(image, on_event):
        if calls is not None:
            calls.append(image)
        if gate:
            gate.wait(10)
        for event in events:
            on_event(event)
    return engine_pull


async def test_two_rents_join_one_pull_and_both_see_it_finish():
    calls, gate, changed = [], threading.Event(), []
    pulls = Pulls(_replay(EVENTS, gate, calls), changed=lambda: changed.append(1))
    seen_a, seen_b = [], []
    a = asyncio.create_task(pulls.pull(IMAGE, seen_a.append))
    b = asyncio.create_task(pulls.pull(IMAGE, seen_b.append))
    await asyncio.sleep(0.05)
    assert pulls.pulling() == [{"image": IMAGE, "layers": 0, "done": 0, "bytes": 0, "total": 0}]
    gate.set()
    await asyncio.gather(a, b)
    assert calls == [IMAGE] and changed == [1]  # one engine pull; hostd told to send its inventory
    for seen in (seen_a, seen_b):
        assert seen[-1]["done"] == 3 and seen[-1]["bytes"] == sum(SIZES.values())
    assert pulls.pulling() == [] and pulls.failures() == {}


async def test_a_refused_pull_fails_its_rent_in_one_line_and_is_not_retried_at_once():
    class NotFound(Exception):
        explanation = 'manifest for 127.0.0.1:5123/pulltest:nosuch not found:\nmanifest unknown'

    calls = []

    def engine_pull(image, on_event):
        calls.append(image)
        raise NotFound("404 Client Error for http+docker://localhost/...")

    pulls = Pulls(engine_pull)
    with pytest.raises(PullError) as e:
        await pulls.pull("x:nosuch")
    assert str(e.value) == "manifest for 127.0.0.1:5123/pulltest:nosuch not found: manifest unknown"
    assert pulls.failures() == {"x:nosuch": str(e.value)}
    pulls.keep(["x:nosuch"])  # the background loop: not again before RETRY
    await asyncio.sleep(0.05)
    with pytest.raises(PullError, match="^manifest for"):  # another rent at once: the same answer, no pull
        await pulls.pull("x:nosuch")
    assert calls == ["x:nosuch"]


async def test_a_stream_that_reports_an_error_midway_fails_the_pull():
    pulls = Pulls(_replay(EVENTS[:8] + [{"error": "read tcp: connection reset by peer"}] + EVENTS[8:]))
    with pytest.raises(PullError, match="^read tcp: connection reset by peer$"):
        await pulls.pull(IMAGE)


async def test_a_stalled_engine_is_given_up_after_the_idle_time():
    stuck = threading.Event()
    pulls = Pulls(_replay([], stuck), idle=0.3)
    with pytest.raises(PullError, match="the engine sent nothing for 0 s"):
        await pulls.pull(IMAGE)
    stuck.set()
    await asyncio.sleep(0.05)  # the abandoned thread's late end changes nothing
    assert "sent nothing" in pulls.failures()[IMAGE]


async def test_keep_pulls_in_the_background():
    calls = []
    pulls = Pulls(_replay(EVENTS, calls=calls))
    pulls.keep([IMAGE])
    for _ in range(100):
        if not pulls.pulling():
            break
        await asyncio.sleep(0.02)
    assert calls == [IMAGE] and pulls.pulling() == [] and pulls.failures() == {}


def test_the_broker_checks_a_hosts_progress_event():
    good = {"type": "pull.progress", "image": IMAGE, "layers": 3, "done": 1, "bytes": 10, "total": 20}
    assert check_view(good) == {k: v for k, v in good.items() if k != "type"}
    for bad in ({"image": "Bad Image"}, {"layers": -1}, {"done": 4}, {"bytes": True}, {"total": 1.5},
                {"bytes": 1 << 60}, {"bytes": 21}):
        with pytest.raises(WireError):
            check_view({**good, **bad})


def test_a_hosts_ready_images_must_be_listed_ones():
    inv = {"gpus": [], "shared": [], "cpu_cores": 2, "ram_gb": 8, "disk_gb": 100, "cpu_per_gpu": 2, "ram_per_gpu": 8,
           "disk_per_gpu": 100, "price": 400000, "images": "shellrent-base:bookworm, a/b:1"}
    assert inventory.check(inv, 10**9)["ready"] == ["shellrent-base:bookworm", "a/b:1"]  # an older hostd
    assert inventory.check({**inv, "ready": ["a/b:1"]}, 10**9)["ready"] == ["a/b:1"]
    for bad in (["c/d:1"], "a/b:1", [1], ["*"]):
        with pytest.raises(inventory.InventoryError, match="^ready: "):
            inventory.check({**inv, "ready": bad}, 10**9)


def _views():
    total = sum(SIZES.values())
    return [{"image": IMAGE, "layers": 3, "done": d, "bytes": b, "total": total}
            for d, b in ((0, 0), (0, 1000), (1, 3392), (1, 4000), (3, total))]


def test_a_terminal_sees_one_bar_redrawn_in_place():
    out = []
    show = StartProgress(out.append, terminal=True)
    show("starting...")
    for view in _views():
        show(view)
    show("starting the container on pc1...")
    text = b"".join(out).decode()
    assert text.startswith("starting...\r\n\rpulling 127.0.0.1:5123/pulltest:1 [------------------------] 0/3")
    assert text.count("\r\n") == 3  # redrawn, never scrolled
    assert text.count("\rpulling ") == 3  # at each layer done; between them, at most 5 times a second
    assert "[########################] 3/3 layers, 7.1/7.1 MB\r\nstarting the container on pc1...\r\n" in text


def test_without_a_terminal_plain_lines_at_each_layer_only():
    out = []
    show = StartProgress(out.append, terminal=False)
    for view in _views():
        show(view)
    assert b"".join(out).decode().splitlines() == [
        "pulling 127.0.0.1:5123/pulltest:1: 0/3 layers, 0.0/7.1 MB",
        "pulling 127.0.0.1:5123/pulltest:1: 1/3 layers, 0.0/7.1 MB",
        "pulling 127.0.0.1:5123/pulltest:1: 3/3 layers, 7.1/7.1 MB"]


def test_a_gone_renter_does_not_stop_the_start_and_hostile_names_are_shown_escaped():
    def closed(_):
        raise BrokenPipeError()
    StartProgress(closed, terminal=True)(_views()[0])  # no exception
    assert pull_line({**_views()[0], "image": "a\x1b[2J"}, bar=False).startswith("pulling a\x1b")  # raw here...
    out = []
    StartProgress(out.append, terminal=False)({**_views()[0], "image": "a\x1b[2J"})
    assert b"\x1b" not in b"".join(out) and b"a\\x1b[2J" in b"".join(out)  # ...escaped on the way out


async def test_a_background_failure_does_not_keep_a_rent_from_trying():
    calls = []

    def engine_pull(image, on_event):
        calls.append(image)
        if len(calls) == 1:
            raise ConnectionRefusedError("dial tcp 127.0.0.1:5123: connect: connection refused")
        _replay(EVENTS)(image, on_event)

    pulls = Pulls(engine_pull)
    pulls.keep([IMAGE])
    for _ in range(100):
        if pulls.failures():
            break
        await asyncio.sleep(0.02)
    assert "connection refused" in pulls.failures()[IMAGE]
    await pulls.pull(IMAGE)  # the registry is back: the rent pulls at once
    assert calls == [IMAGE, IMAGE] and pulls.failures() == {}


def test_a_flood_of_views_is_a_few_redraws_and_none_for_a_renter_who_does_not_read():
    out = []
    show = StartProgress(out.append, terminal=True)
    for i in range(10000):
        show({"image": IMAGE, "layers": 3, "done": i % 2, "bytes": i, "total": 10000})
    assert len(out) == 2  # 0 done, then 1 done: the rest came within REDRAW_EVERY
    out = []
    StartProgress(out.append, terminal=False, backlog=lambda: 1 << 20)(_views()[0])
    assert out == []


async def test_a_stalled_background_pull_is_given_up_by_the_background_loop():
    stuck = threading.Event()
    pulls = Pulls(_replay([], stuck), idle=0.2)
    pulls.keep([IMAGE])
    await asyncio.sleep(0.3)
    pulls.keep([IMAGE])  # the next turn: given up, not started again before RETRY
    assert pulls.pulling() == [] and "sent nothing" in pulls.failures()[IMAGE]
    stuck.set()


async def test_rents_sharing_one_watcher_make_it_hear_each_view_once():
    gate, heard = threading.Event(), []
    pulls = Pulls(_replay(EVENTS, gate))
    both = asyncio.gather(pulls.pull(IMAGE, heard.append), pulls.pull(IMAGE, heard.append))
    await asyncio.sleep(0.05)
    gate.set()
    await both
    alone = []
    await Pulls(_replay(EVENTS)).pull(IMAGE, alone.append)
    assert heard == alone and heard[-1]["done"] == 3  # not each view twice
