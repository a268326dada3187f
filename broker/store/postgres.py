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
import psycopg.conninfo
from psycopg.rows import dict_row

from ..errors import FULL, BrokerError, Unavailable
from .postgres_schema import MIGRATIONS
from .sql_cluster import Cluster
from .sql_codes import Codes
from .sql_hosts import Hosts
from .sql_leases import Leases
from .sql_ledger import Ledger
from .sql_renters import Renters
from .sql_base import SqlBase

MIGRATION_LOCK = 0x5e11_0001  # pg_advisory_xact_lock key of schema migrations
SERVING_LOCK = 0x5e11_0002  # a lone broker holds it alone, the brokers of a cluster share it
UNREACHABLE = "the broker's database does not answer: nothing was changed; try again later"
UNKNOWN = ("the broker's database went away while the change was being committed: it may or may not have been "
           "recorded; check (e.g. ctl ls, ctl balance) before trying again")
# What a connection gets unless its URL says otherwise: a dead peer noticed in about 30 s (not the
# kernel's 15 minutes, with the store's one thread waiting), no statement or lock waited on for ever,
# and floats sent exactly (acknowledged_end compares an end time read back).
DEFAULTS = {"connect_timeout": "10", "keepalives": "1", "keepalives_idle": "10", "keepalives_interval": "5",
            "keepalives_count": "3", "tcp_user_timeout": "30000",
            "options": "-c lock_timeout=10s -c statement_timeout=30s -c idle_in_transaction_session_timeout=60s "
                       "-c extra_float_digits=3"}


def _pg(sql: str) -> str:
    """The shared SQL's ? placeholders as psycopg's (no shared statement holds a literal ? or %)."""
    return sql.replace("%", "%%").replace("?", "%s")


class Store(SqlBase, Renters, Codes, Hosts, Cluster, Leases, Ledger):
    """Renters and their keys, hosts and join tokens, leases, the ledger: one PostgreSQL database."""

    LOCK_ROW = " FOR UPDATE"
    ENTRY_ID = "id"

    def __init__(self, dsn: str, now=time.time):
        self.now = now
        self._dsn = dsn
        self._conn: psycopg.Connection | None = None
        self._serving = False
        self._migrate()

    def _connection(self) -> psycopg.Connection:
        """The connection, made again after the database went away (between transactions only: in
        one, the rest of it would not be atomic)."""
        if self._conn is None or self._conn.closed or self._conn.broken:
            if self._depth:
                raise psycopg.OperationalError("the connection was lost in a transaction")
            given = psycopg.conninfo.conninfo_to_dict(self._dsn)
            self._conn = psycopg.connect(self._dsn, autocommit=True,
                                         **{k: v for k, v in DEFAULTS.items() if k not in given})
            if self._serving:  # the lock went with the old connection: take it again, or stop serving
                self._take_serving()
        return self._conn

    def hold_serving(self, shared: bool = False) -> None:
        """A broker that serves alone (no peer link: its starts, housekeeping and uptimes are its own)
        excludes every other; brokers of a cluster (serve --peer) share the database. Refused in one
        line when the other kind serves it."""
        self._connection()
        self._serving = "shared" if shared else "alone"
        self._take_serving()

    def _take_serving(self) -> None:
        shared = self._serving == "shared"
        fn = "pg_try_advisory_lock_shared" if shared else "pg_try_advisory_lock"
        if not self._conn.execute(f"SELECT {fn}({SERVING_LOCK})").fetchone()[0]:
            self._serving = False
            raise BrokerError("a broker without --peer already serves this database: start every broker of one "
                              "database with --peer" if shared else
                              "another broker already serves this database: to serve it from several, start "
                              "each with --peer HOST:PORT")

    def _migrate(self) -> None:
        with self.tx():
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
        try:
            if not self._conn.broken:
                self._conn.execute("ROLLBACK")
        except psycopg.Error:
            pass  # the connection went: the server rolls back; the original error is the one to raise

    def _commit(self) -> None:
        try:
            self._conn.execute("COMMIT")
        except psycopg.OperationalError:
            raise Unavailable(UNKNOWN) from None

    # what the shared SQL (store.sql_*) runs on
    def _sql(self, sql: str, args=()):
        return self._connection().execute(_pg(sql), list(args))

    def _rows(self, sql: str, args=()) -> list[dict]:
        with self._connection().cursor(row_factory=dict_row) as cur:
            return cur.execute(_pg(sql), list(args)).fetchall()

    def _many(self, sql: str, rows) -> None:
        with self._connection().cursor() as cur:
            cur.executemany(_pg(sql), list(rows))

    def db_time(self) -> float:
        """The database server's clock, which every broker of it judges expiries by."""
        return self._sql("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()[0]

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
