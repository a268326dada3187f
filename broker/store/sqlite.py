"""The broker's SQLite backend: one file, the store's operations in the SQL of store.sql_* over it.

Not thread-safe by itself: the server calls it from one writer thread (store.writer.Db), the CLI
directly. WAL mode and a busy timeout let the two share the file.
"""
import sqlite3
import time
from pathlib import Path

import sqlite_utils

from ..errors import FULL, BrokerError
from .sql_cluster import Cluster
from .sql_codes import Codes
from .sql_hosts import Hosts
from .sql_leases import Leases
from .sql_ledger import Ledger
from .sql_renters import Renters
from .sql_base import SqlBase
from .sqlite_schema import MIGRATIONS, SCHEMA


class Store(SqlBase, Renters, Codes, Hosts, Cluster, Leases, Ledger):
    """Renters and their keys, hosts and join tokens, leases, the ledger: one SQLite file."""

    LOCK_ROW = ""  # BEGIN IMMEDIATE has locked the whole database for the transaction
    ENTRY_ID = "rowid"  # the order entries were posted in

    def __init__(self, path: Path, now=time.time):
        if sqlite3.sqlite_version_info < (3, 35):  # RETURNING (store.sql_*)
            raise BrokerError(f"the broker needs SQLite 3.35 or newer; this Python has {sqlite3.sqlite_version}")
        self.now = now  # stamps: when a renter, key, host or transaction was made
        conn = sqlite3.connect(str(path), timeout=10, check_same_thread=False, isolation_level=None)
        self.db = sqlite_utils.Database(conn)
        self._wal()
        self.db.execute("PRAGMA foreign_keys=ON")
        with self.tx():
            for stmt in filter(str.strip, SCHEMA.split(";")):
                self.db.execute(stmt)
        self._migrate()

    def _wal(self) -> None:
        """WAL mode; a new file that another store is opening at the same moment refuses the switch
        for an instant (without waiting, unlike every other statement): ask again."""
        for attempt in range(100):
            try:
                self.db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 99:
                    raise
                time.sleep(0.05)

    def _migrate(self) -> None:
        """Each step in a transaction of its own, the version read inside it: stores opened at once on
        a new file (two broker commands) take each step once."""
        while True:
            with self.tx():
                version = self.db.execute("PRAGMA user_version").fetchone()[0]
                if version >= len(MIGRATIONS):
                    return
                for stmt in filter(str.strip, MIGRATIONS[version].split(";")):
                    self.db.execute(stmt)
                self.db.execute(f"PRAGMA user_version = {version + 1}")

    def close(self) -> None:
        self.db.conn.close()

    def backup(self, path: Path) -> dict:
        """A consistent copy of the whole database in a new file (SQLite's online backup: safe
        while the broker serves); returns what it holds."""
        tmp = path.with_name(path.name + ".part")
        if not path.parent.is_dir():
            raise BrokerError(f"cannot back up to {path}: no directory {path.parent}")
        try:
            dst = sqlite3.connect(str(tmp))
            try:
                tmp.chmod(0o600)
                self.db.conn.backup(dst)
                counts = {t: dst.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                          for t in ("leases", "txs", "renters")}
            finally:
                dst.close()
            tmp.rename(path)
        except (sqlite3.Error, OSError) as exc:
            tmp.unlink(missing_ok=True)
            raise BrokerError(f"cannot back up to {path}: {exc}") from None
        return counts

    def _begin(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")  # taken up front, so concurrent writers queue instead of failing

    def _rollback(self) -> None:
        if self.db.conn.in_transaction:  # SQLite has already rolled back after e.g. a full disk
            self.db.execute("ROLLBACK")

    def _commit(self) -> None:
        self.db.execute("COMMIT")

    # what the shared SQL (store.sql_*) runs on: ? placeholders, DB-API cursors, rows as dicts
    def _sql(self, sql: str, args=()):
        return self.db.execute(sql, list(args))

    def _rows(self, sql: str, args=()) -> list[dict]:
        return list(self.db.query(sql, list(args)))

    def _many(self, sql: str, rows) -> None:
        self.db.conn.executemany(sql, rows)

    def hold_serving(self, shared: bool = False) -> None:
        """One broker serves a SQLite file: its home's run lock sees to that."""

    def db_time(self) -> float:
        """One file has one broker: its clock is the database's."""
        return self.now()

    def lock(self, *names: str) -> None:
        """Named locks until the transaction ends: in SQLite, every transaction already holds the
        database's write lock."""

    def unavailable(self, exc: BaseException) -> str | None:
        """Why the store cannot be written now (a full disk), or None for an error of another kind."""
        if isinstance(exc, sqlite3.OperationalError) and ("full" in str(exc) or "disk I/O" in str(exc)):
            return FULL
        return None
