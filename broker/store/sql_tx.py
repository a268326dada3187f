"""The store's transactions: one at a time per store, nested use joining the outer one (a part of both
SQL backends, which say how to begin, commit and roll back)."""
from contextlib import contextmanager


class Transactions:
    _depth = 0

    @contextmanager
    def tx(self):
        """One transaction; everything in it is written, or nothing."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._begin()
        self._depth = 1
        try:
            yield
        except BaseException:
            self._rollback()
            raise
        finally:
            self._depth = 0
        self._commit()

    def _tx(self):
        return self.tx()
