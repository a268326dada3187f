"""Provider -> broker and other renters: a hostile host (FakeHost, the real tunnel protocol) forges
events about other hosts' leases, lies about end times, sends bad inventories and escape sequences.
The real broker takes none of it: other leases and the ledger stay as they were, one bad host leaves
the market while the others stay, nothing reaches a terminal raw."""
import asyncio
import json
import time

import pytest

from shellrent.common import protocol

from ..cluster import Cluster
from .fakehost import GPU, FakeHost, inventory

pytestmark = [pytest.mark.docker, pytest.mark.hostile]


async def until(predicate, what: str, timeout: float = 30):
    """Poll a blocking predicate (run in a thread, so the fake hosts keep answering)."""
    deadline = time.monotonic() + timeout
    while not (result := await asyncio.to_thread(predicate)):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.1)
    return result


async def ctl(c: Cluster, *args):
    return await asyncio.to_thread(c.ssh, *args, user="ctl")


def _json(c: Cluster, *args):
    r = c.ssh(*args, "--json", user="ctl")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _hosts_offered(c: Cluster) -> set[str]:
    return {o["host_id"] for o in _json(c, "offers")}


def _lease(c: Cluster, lid: str) -> dict:
    return next(x for x in json.loads(c.broker("lease", "list", "--json").stdout) if x["id"] == lid)


def _ledger(c: Cluster) -> dict:
    return json.loads(c.broker("ledger", "--json").stdout)


async def _join(c: Cluster, name: str, inv: dict | None = None) -> FakeHost:
    token = c.broker("host", "invite", name).stdout.decode().splitlines()[-1]
    host = FakeHost(token, inv)
    await host.connect(c.tunnel_port)
    return host


async def _rent(c: Cluster, host: str) -> str:
    r = await ctl(c, "rent", f"host_id={host}", "--hours", "1", "--yes", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["id"]


@pytest.fixture
async def market(fresh_cluster):
    c = fresh_cluster
    c.broker("renter", "credit", "alice", "10")
    hosts = {name: await _join(c, name) for name in ("honest", "evil")}
    await until(lambda: _hosts_offered(c) == {"honest", "evil"}, "both hosts' offers")
    yield c, hosts
    for host in hosts.values():
        host.close()


async def test_a_host_speaks_only_for_its_own_leases_and_never_bills_past_now(market):
    c, hosts = market
    a, b = await _rent(c, "honest"), await _rent(c, "evil")
    ledger_before = _ledger(c)
    evil = hosts["evil"]
    evil.send({"type": "lease.ended", "id": a, "at": time.time()})
    evil.send({"type": "lease.purged", "id": a})
    evil.send({"type": "lease.ended", "id": "../../etc", "at": 1})
    evil.send({"type": "lease.ended", "id": b, "at": time.time() + 10**6})  # "it ran for a week"
    await until(lambda: _lease(c, b)["state"] == "ended", "evil's own lease to end")
    now = time.time()
    assert _lease(c, a)["state"] == "active"
    assert [t for t in _ledger(c)["transactions"] if t["lease"] == a] == \
        [t for t in ledger_before["transactions"] if t["lease"] == a]  # only its hold
    lease_b = _lease(c, b)
    assert lease_b["started"] <= lease_b["ended"] <= now
    settle = next(t for t in _ledger(c)["transactions"] if t["key"] == f"settle:{b}")
    paid = sum(e["amount"] for e in settle["entries"] if not e["account"].startswith(("hold:", "renter:")))
    assert paid <= 1_000_000 * (now - lease_b["started"] + 1) / 3600  # what really passed, not the hour

    # A host's word can end its own lease early: from its start, so the renter gets it all back.
    hosts["honest"].send({"type": "lease.ended", "id": a, "at": 0})
    await until(lambda: _lease(c, a)["state"] == "ended", "the honest host's report")
    settle = next(t for t in _ledger(c)["transactions"] if t["key"] == f"settle:{a}")
    assert {e["account"] for e in settle["entries"]} == {"hold:alice", "renter:alice"}
    assert all(sum(e["amount"] for e in t["entries"]) == 0 for t in _ledger(c)["transactions"])


BAD_INVENTORIES = {
    "negative price": {"price": -1},
    "price above the ceiling": {"price": 10**12},
    "escape in geolocation": {"geolocation": "\x1b[2J\x1b]0;owned\x07"},
    "huge GPU name": {"gpus": [{"index": 0, "uuid": GPU, "name": "A" * 1000, "memory_gb": 24.0}]},
    "number as text": {"cpu_cores": "8"},
    "shares a GPU it lacks": {"shared": ["GPU-fake-ffffffffffffffffffffffff"]},
    "GPUs not a list": {"gpus": "many"},
    "bad window": {"window": "99:99-00:00"},
    "bad image": {"images": "a b;c"},
    "bad UUID": {"gpus": [{"index": 0, "uuid": "\x1b[31m", "memory_gb": 24.0, "name": "x"}], "shared": []},
    "not an object": None,
}


async def test_bad_inventories_take_only_that_host_off_the_market(market):
    c, hosts = market
    evil = hosts["evil"]
    for case, over in BAD_INVENTORIES.items():
        evil.send({"type": "inventory", "inventory": inventory(**over) if over is not None else [1, 2]})
        await until(lambda: _hosts_offered(c) == {"honest"}, f"evil's offers to go ({case})")
        errors = {h["name"]: h["inventory_error"] for h in json.loads(c.broker("host", "list", "--json").stdout)}
        assert errors["evil"] and errors["honest"] is None, case
        evil.send({"type": "inventory", "inventory": inventory()})
        await until(lambda: _hosts_offered(c) == {"honest", "evil"}, f"evil's offers to come back ({case})")
    table = (await ctl(c, "offers")).stdout
    assert b"\x1b" not in table
    # Not even JSON (a bare NaN): the broker drops that host's connection; the others trade on.
    evil.send(b'{"type":"inventory","inventory":{"price":NaN}}\n')
    await until(lambda: _hosts_offered(c) == {"honest"}, "evil to be cut off")
    assert evil.conn.is_closed() or await asyncio.wait_for(evil.conn.wait_closed(), 10) is None
    await _rent(c, "honest")


async def test_host_words_never_reach_a_terminal_raw(market):
    c, hosts = market
    balance = _json(c, "balance")["balance_micro"]
    hosts["evil"].start_error = "\x1b]0;owned\x07\x1b[2J\rall clear\nsecond line\x9b31m"
    r = await ctl(c, "rent", "host_id=evil", "--hours", "1", "--yes")
    assert r.returncode == 2
    err = r.stderr.decode()
    progress, error = err.split("\n", 1)  # without a terminal, the start's progress goes to stderr first
    assert progress == "starting the container on evil..."
    assert error.count("\n") == 1 and error.startswith("ctl: ")
    assert not any(ch in err for ch in "\x1b\x07\r\x9b"), repr(err)
    assert "\\x1b]0;owned" in err
    assert _json(c, "balance")["balance_micro"] == balance  # failed, fully refunded
    assert [x["state"] for x in _json(c, "ls")] == ["failed"]


@pytest.mark.parametrize("reply", [{"ok": True}, {"ok": True, "container": ["x"]}, {"ok": "yes"},
                                   {"ok": True, "container": "../../x"}], ids=["none", "list", "ok-text", "path"])
async def test_a_start_without_a_container_fails_and_refunds(market, reply):
    c, hosts = market
    balance = _json(c, "balance")["balance_micro"]
    hosts["evil"].start_reply = reply
    r = await ctl(c, "rent", "host_id=evil", "--hours", "1", "--yes")
    assert r.returncode == 2 and r.stderr.decode().count("\n") == 2, r.stderr  # the progress line, the error
    after = _json(c, "balance")
    assert (after["balance_micro"], after["held_micro"]) == (balance, 0)
    assert [x["state"] for x in _json(c, "ls")] == ["failed"]


async def test_a_gpu_whose_container_may_still_run_is_not_offered(market):
    c, hosts = market
    honest = hosts["honest"]
    honest.stop_state = "ending"  # the host has not confirmed that the container is gone
    a = await _rent(c, "honest")
    r = await ctl(c, "release", a)
    assert r.returncode == 0, r.stderr
    assert _lease(c, a)["state"] == "ended"
    assert _hosts_offered(c) == {"evil"}
    honest.send({"type": "lease.ended", "id": a, "at": time.time()})
    await until(lambda: _hosts_offered(c) == {"honest", "evil"}, "the GPU once its container is gone")
    assert protocol.LEASE_ID.fullmatch(a)
