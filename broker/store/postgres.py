"""The broker's PostgreSQL backend: the store's operations in the SQL of store.sql_* over a database
that several brokers share. Reads that check before they write lock what they read (FOR UPDATE, and
transaction-scoped advisory locks by name: the accounts whose balance a posting checks, a host's GPUs
and a renter's live leases while a lease is opened); the schema is
migrated under a transaction-scoped advisory lock, so brokers that start at once migrate it once.

Like the SQLite backend it is called from one thread at a time (store.writer.Db, or the CLI).
"""
import hashlib
import time

import psycopg
from psycopg.rows import dict_row

from ..errors import FULL
from .postgres_schema import MIGRATIONS
from .sql_hosts import Hosts
from .sql_leases import Leases
from .sql_ledger import Ledger
from .sql_renters import Renters
from .sql_tx import Transactions

MIGRATION_LOCK = 0x5e11_0001  # pg_advisory_xact_lock key of schema migrations
UNREACHABLE = "the broker's database does not answer: nothing was changed; try again later"


def _pg(sql: str) -> str:
    """The shared SQL's ? placeholders as psycopg's (no shared statement holds a literal ? or %)."""
    return sql.replace("%", "%%").replace("?", "%s")


class Store(Transactions, Renters, Hosts, Leases, Ledger):
    """Renters and their keys, hosts and join tokens, leases, the ledger: one PostgreSQL database."""

    LOCK_ROW = " FOR UPDATE"
    ENTRY_ID = "id"

    def __init__(self, dsn: str, now=time.time):
        self.now = now
        self._dsn = dsn
        self._conn: psycopg.Connection | None = None
        self._migrate()

    def _connection(self) -> psycopg.Connection:
        """The connection, made again after the database went away (between transactions only)."""
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = psycopg.connect(self._dsn, autocommit=True, connect_timeout=10)
        return self._conn

    def _migrate(self) -> None:
        with self._tx():
            self._sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
            self._sql("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = self._sql("SELECT version FROM schema_version").fetchone()
            if row is None:
                self._sql("INSERT INTO schema_version (version) VALUES (0)")
            version = row[0] if row else 0
            for n, script in enumerate(MIGRATIONS[version:], version + 1):
                self._connection().execute(script)
                self._sql("UPDATE schema_version SET version = ?", [n])

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

    def _begin(self) -> None:
        self._connection().execute("BEGIN")

    def _rollback(self) -> None:
        if not self._conn.broken:
            self._conn.execute("ROLLBACK")

    def _commit(self) -> None:
        self._conn.execute("COMMIT")

    # what the shared SQL (store.sql_*) runs on
    def _sql(self, sql: str, args=()):
        return self._connection().execute(_pg(sql), list(args))

    def _rows(self, sql: str, args=()) -> list[dict]:
        with self._connection().cursor(row_factory=dict_row) as cur:
            return cur.execute(_pg(sql), list(args)).fetchall()

    def _many(self, sql: str, rows) -> None:
        with self._connection().cursor() as cur:
            cur.executemany(_pg(sql), list(rows))

    def _count(self, table: str, where: str, args=()) -> int:
        return self._sql(f"SELECT count(*) FROM {table} WHERE {where}", args).fetchone()[0]

    def _insert(self, table: str, row: dict) -> None:
        self._sql(f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", row.values())

    def lock(self, *names: str) -> None:
        """Transaction-scoped advisory locks, one per name (a 64-bit hash of it), in the order given
        (callers give them sorted: no deadlock between two transactions)."""
        for name in names:
            key = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)
            self._sql("SELECT pg_advisory_xact_lock(?)", [key])

    def unavailable(self, exc: BaseException) -> str | None:
        if isinstance(exc, psycopg.errors.DiskFull):
            return FULL
        if isinstance(exc, psycopg.OperationalError):
            return UNREACHABLE
        return None
