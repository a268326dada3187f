"""Auto-extend's rounds: which leases are due, a failure noted once and told to the host, retried
after a pause, and an extension made meanwhile elsewhere left alone."""
from types import SimpleNamespace

from shellrent.broker.autoextend import LEAD, REFUSED_RETRY, RETRY, AutoExtend, lead
from shellrent.broker.errors import BrokerError, Changed, Refused, Unavailable


class FakeStore:
    def __init__(self):
        self.notes = {}

    def update_lease(self, lid, expect_state=None, **fields):
        self.notes[lid] = fields["auto_note"]
        return True


class FakeLink:
    def __init__(self):
        self.calls = []

    async def call(self, op, **kw):
        self.calls.append((op, kw))
        return {"ok": True}


async def _db(fn, *args):
    return fn(*args)


def _lease(lid, left, auto=3600, host="pc1", note=None):
    return {"id": lid, "state": "active", "auto": auto, "host": host, "ends_at": 1000.0 + left, "auto_note": note}


def test_a_lease_is_due_a_little_before_its_end():
    assert lead(3600) == LEAD and lead(20) == 10 and lead(20) < LEAD


async def test_due_leases_on_this_brokers_hosts_are_extended_the_others_left():
    tried = []

    async def auto(lease, link):
        tried.append(lease["id"])
        raise BrokerError("not enough credit")
    job = AutoExtend(_db, FakeStore(), SimpleNamespace(auto=auto))
    links = SimpleNamespace(links={"pc1": FakeLink()})
    live = [_lease("a", 100), _lease("b", LEAD + 100), _lease("c", 100, auto=0), _lease("d", 100, host="pc2"),
            {**_lease("e", 100), "state": "starting"}]
    assert await job.run(live, links, 1000.0) and tried == ["a"]
    assert not await job.run(live, links, 1000.0 + RETRY - 1)  # a refusal is not tried again so soon
    assert not await job.run([], None, 1000.0)


async def test_a_refusal_is_noted_and_told_once_and_cleared_when_it_extends():
    outcome = [BrokerError("not enough credit: this needs 0.20 credits and the balance is 0.10")]

    async def auto(lease, link):
        if outcome[0]:
            raise outcome[0]
    store, link = FakeStore(), FakeLink()
    job = AutoExtend(_db, store, SimpleNamespace(auto=auto))
    links = SimpleNamespace(links={"pc1": link})
    await job.run([_lease("a", 100)], links, 1000.0)
    assert store.notes == {"a": "not enough credit: this needs 0.20 credits and the balance is 0.10"}
    assert link.calls == [("lease.auto", {"id": "a", "auto": True, "note": store.notes["a"]})]
    await job.run([_lease("a", 100, note=store.notes["a"])], links, 1000.0 + RETRY)
    assert len(link.calls) == 1  # the same reason: not told again
    outcome[0] = None
    await job.run([_lease("a", 80, note=store.notes["a"])], links, 1000.0 + 2 * RETRY)
    assert store.notes == {"a": None} and link.calls[-1] == ("lease.auto", {"id": "a", "auto": True, "note": ""})


async def test_an_extension_made_meanwhile_or_a_host_that_does_not_answer_is_not_noted():
    for exc in (Changed("extended meanwhile"), Unavailable("host pc1 did not answer")):
        async def auto(lease, link, exc=exc):
            raise exc
        store, link = FakeStore(), FakeLink()
        await AutoExtend(_db, store, SimpleNamespace(auto=auto)).run(
            [_lease("a", 100)], SimpleNamespace(links={"pc1": link}), 1000.0)
        assert store.notes == {} and link.calls == []


async def test_a_host_that_refuses_is_noted_and_not_asked_every_round():
    tries = []

    async def auto(lease, link):
        tries.append(lease["id"])
        raise Refused("host pc1 refused lease.extend: lease a is not active on this host")
    store, link = FakeStore(), FakeLink()
    job = AutoExtend(_db, store, SimpleNamespace(auto=auto))
    links = SimpleNamespace(links={"pc1": link})
    await job.run([_lease("a", 100)], links, 1000.0)
    assert store.notes["a"].startswith("its host refused the extension (host pc1 refused")
    for later in (RETRY, 2 * RETRY, REFUSED_RETRY - 1):
        await job.run([_lease("a", 100, note=store.notes["a"])], links, 1000.0 + later)
    assert tries == ["a"]
    await job.run([_lease("a", 100, note=store.notes["a"])], links, 1000.0 + REFUSED_RETRY)
    assert tries == ["a", "a"]


async def test_after_an_extension_the_lease_is_due_again_before_its_new_end_however_short_the_step():
    tries = []

    async def auto(lease, link):
        tries.append(lease["ends_at"])
    job = AutoExtend(_db, FakeStore(), SimpleNamespace(auto=auto))
    links = SimpleNamespace(links={"pc1": FakeLink()})
    await job.run([_lease("a", 5, auto=10)], links, 1000.0)
    await job.run([_lease("a", 5, auto=10)], links, 1000.0 + 10)  # 10 s later: due again, under RETRY
    assert len(tries) == 2
