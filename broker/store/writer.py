"""The broker's one store thread: every store call of the running broker runs on it, in order, and a
backend's failure to write (as the backend's `unavailable` names it) becomes one domain error,
Unavailable, here and nowhere else."""
import asyncio
from concurrent.futures import ThreadPoolExecutor

from ..errors import Unavailable


class Db:
    """Runs store calls on the store's own thread (the datasette pattern: one writer, no locks)."""

    def __init__(self, store):
        self.store = store
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")

    async def run(self, fn, *args):
        """fn(*args) on the store thread. A full disk is one clear error; the store's transaction
        rolled back, so nothing was half written."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        except Exception as exc:
            why = self.store.unavailable(exc)  # the backend says which of its errors these are
            if why:
                raise Unavailable(why) from None
            raise

    def close(self) -> None:
        """Wait for the calls under way, then close the store."""
        self._pool.shutdown()
        self.store.close()
