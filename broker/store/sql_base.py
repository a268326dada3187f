"""What both SQL backends share beneath the SQL of store.sql_*: transactions, one at a time per store
with nested use joining the outer one, and the two statements made from a table's name. A backend
says how to begin, commit and roll back, and runs a statement (`_sql`, ? placeholders)."""
from contextlib import contextmanager


class SqlBase:
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

    def _count(self, table: str, where: str, args=()) -> int:
        return self._sql(f"SELECT count(*) FROM {table} WHERE {where}", args).fetchone()[0]

    def _insert(self, table: str, row: dict) -> None:
        self._sql(f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", row.values())
