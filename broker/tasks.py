"""The broker's background tasks (a start, a release, telling a host): they outlive the renter's
connection that began them, and the server drains them with a deadline when it stops."""
import asyncio
import logging

log = logging.getLogger("shellrent.tasks")


class Tasks:
    """A set of running tasks; each leaves it when done."""

    def __init__(self):
        self._tasks: set[asyncio.Task] = set()

    def spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def running(self) -> list[asyncio.Task]:
        return list(self._tasks)

    async def drain(self, timeout: float) -> None:
        """Wait up to timeout for the tasks under way (and those they start); cancel what is left."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._tasks and loop.time() < deadline:
            await asyncio.wait(list(self._tasks), timeout=deadline - loop.time())
        if self._tasks:
            log.warning("stopping: %d background tasks did not finish in %gs; cancelled", len(self._tasks), timeout)
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
