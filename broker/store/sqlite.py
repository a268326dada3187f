"""The broker's SQLite backend: the store's operations in SQL (the only module with SQL but its schema).

Not thread-safe by itself: the server calls it from one writer thread (store.writer.Db), the CLI
directly. WAL mode and a busy timeout let the two share the file.
"""
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path

import sqlite_utils

from .sqlite_hosts import Hosts
from .sqlite_leases import Leases
from .sqlite_ledger import Ledger
from .sqlite_renters import Renters
from .sqlite_schema import MIGRATIONS, SCHEMA


class Store(Renters, Hosts, Leases, Ledger):
    """Renters and their keys, hosts and join tokens, leases, the ledger: one SQLite file."""

    def __init__(self, path: Path, now=time.time):
        self.now = now  # stamps: when a renter, key, host or transaction was made
        conn = sqlite3.connect(str(path), timeout=10, check_same_thread=False, isolation_level=None)
        self.db = sqlite_utils.Database(conn)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self._depth = 0
        self.db.conn.executescript(SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        for n, script in enumerate(MIGRATIONS[version:], version + 1):
            with self._tx():
                for stmt in filter(str.strip, script.split(";")):
                    self.db.execute(stmt)
                self.db.execute(f"PRAGMA user_version = {n}")

    def close(self) -> None:
        self.db.conn.close()

    def backup(self, path: Path) -> dict:
        """A consistent copy of the whole database in a new file (SQLite's online backup: safe
        while the broker serves); returns what it holds."""
        tmp = path.with_name(path.name + ".part")
        dst = sqlite3.connect(str(tmp))
        try:
            tmp.chmod(0o600)
            self.db.conn.backup(dst)
            counts = {t: dst.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("leases", "txs", "renters")}
        finally:
            dst.close()
        tmp.rename(path)
        return counts

    @contextmanager
    def _tx(self):
        """One write transaction, taken up front so concurrent writers queue instead of failing.

        Nested use joins the outer transaction."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self.db.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
        except BaseException:
            if self.db.conn.in_transaction:  # SQLite has already rolled back after e.g. a full disk
                self.db.execute("ROLLBACK")
            raise
        finally:
            self._depth = 0
        self.db.execute("COMMIT")

    tx = _tx

    def _insert(self, table: str, row: dict) -> None:
        cols = ", ".join(row)
        self.db.execute(f"INSERT INTO {table} ({cols}) VALUES ({', '.join('?' * len(row))})", list(row.values()))
