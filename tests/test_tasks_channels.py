"""The broker's background tasks drain with a deadline at shutdown, and a lease's end closes every
channel tracked for it (broker/tasks.py, broker/channels.py)."""
import asyncio
import logging

from shellrent.broker.channels import ChannelRegistry
from shellrent.broker.tasks import Tasks


async def test_drain_waits_for_tasks_and_those_they_start():
    tasks, done = Tasks(), []

    async def second():
        await asyncio.sleep(0.05)
        done.append("second")

    async def first():
        await asyncio.sleep(0.05)
        tasks.spawn(second())
        done.append("first")

    tasks.spawn(first())
    await tasks.drain(5)
    assert done == ["first", "second"] and not tasks.running()


async def test_drain_cancels_what_outlives_its_deadline(caplog):
    tasks = Tasks()
    stuck = tasks.spawn(asyncio.sleep(3600))
    loop = asyncio.get_running_loop()
    began = loop.time()
    with caplog.at_level(logging.WARNING):
        await tasks.drain(0.2)
    assert loop.time() - began < 2 and stuck.cancelled() and not tasks.running()
    assert "1 background tasks did not finish in 0.2s; cancelled" in caplog.text


class Channel:
    def __init__(self):
        self.ended = None

    def end(self, why):
        self.ended = why


def test_a_leases_end_closes_its_channels_only():
    reg, a1, a2, b1 = ChannelRegistry(), Channel(), Channel(), Channel()
    for lease, ch in (("a", a1), ("a", a2), ("b", b1)):
        reg.track(lease, ch)
    reg.untrack(a2)
    assert sorted(map(id, reg.all())) == sorted(map(id, [a1, b1]))
    reg.close_lease("a", "lease a has ended")
    assert (a1.ended, a2.ended, b1.ended) == ("lease a has ended", None, None)
    assert reg.all() == [b1]
    reg.untrack(a1)  # closed already: nothing to undo
    reg.close_lease("a", "again")
    assert a1.ended == "lease a has ended"
