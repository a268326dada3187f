"""The broker's SQLite store. The only module that touches the database.

Not thread-safe by itself: the server calls it from one writer thread (see server.Db), the CLI
directly. WAL mode and a busy timeout let the two share the file.
"""
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path

import sqlite_utils

from .errors import BrokerError, NotFound

LIVE_STATES = ("pending", "starting", "active", "ending")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS renters (name TEXT PRIMARY KEY, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS renter_keys (
    fingerprint TEXT PRIMARY KEY, renter TEXT NOT NULL REFERENCES renters(name), key TEXT NOT NULL,
    added REAL NOT NULL);
CREATE TABLE IF NOT EXISTS hosts (
    name TEXT PRIMARY KEY, fingerprint TEXT UNIQUE, key TEXT, invited REAL NOT NULL,
    joined REAL, last_seen REAL, banned INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS tokens (
    hash TEXT PRIMARY KEY, host TEXT NOT NULL, expires REAL NOT NULL, used REAL);
CREATE TABLE IF NOT EXISTS leases (
    id TEXT PRIMARY KEY, renter TEXT NOT NULL, host TEXT NOT NULL, image TEXT NOT NULL,
    state TEXT NOT NULL, created REAL NOT NULL, ends_at REAL NOT NULL, container TEXT, error TEXT);
CREATE INDEX IF NOT EXISTS leases_renter ON leases(renter, state);
"""


class Store:
    """Renters and their keys, hosts and join tokens, leases."""

    def __init__(self, path: Path):
        conn = sqlite3.connect(str(path), timeout=10, check_same_thread=False, isolation_level=None)
        self.db = sqlite_utils.Database(conn)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.conn.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.conn.close()

    @contextmanager
    def _tx(self):
        """One write transaction, taken up front so concurrent writers queue instead of failing."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def _insert(self, table: str, row: dict) -> None:
        cols = ", ".join(row)
        self.db.execute(f"INSERT INTO {table} ({cols}) VALUES ({', '.join('?' * len(row))})", list(row.values()))

    # renters
    def add_renter(self, name: str, fingerprint: str, key: str) -> None:
        """Create a renter with one public key."""
        with self._tx():
            if self.db["renters"].count_where("name = ?", [name]):
                raise BrokerError(f"renter {name!r} already exists")
            self._check_key_free(fingerprint)
            self._insert("renters", {"name": name, "created": time.time()})
            self._insert("renter_keys", {"fingerprint": fingerprint, "renter": name, "key": key,
                                         "added": time.time()})

    def _check_key_free(self, fingerprint: str) -> None:
        row = self.db.execute("SELECT renter FROM renter_keys WHERE fingerprint = ?", [fingerprint]).fetchone()
        if row:
            raise BrokerError(f"that key already belongs to renter {row[0]!r}")

    def renter_by_key(self, fingerprint: str) -> str | None:
        """The renter owning a key, or None."""
        row = self.db.execute("SELECT renter FROM renter_keys WHERE fingerprint = ?", [fingerprint]).fetchone()
        return row[0] if row else None

    def require_renter(self, name: str) -> None:
        if not self.db["renters"].count_where("name = ?", [name]):
            raise NotFound(f"unknown renter {name!r}")

    def renters(self) -> list[dict]:
        return list(self.db.query(
            "SELECT r.name, r.created, count(k.fingerprint) AS keys FROM renters r "
            "LEFT JOIN renter_keys k ON k.renter = r.name GROUP BY r.name ORDER BY r.name"))

    # hosts and join tokens
    def add_token(self, host: str, token_hash: str, expires: float) -> None:
        """Invite a host by name (a new name, or one that never joined)."""
        with self._tx():
            row = self.db.execute("SELECT joined FROM hosts WHERE name = ?", [host]).fetchone()
            if row and row[0]:
                raise BrokerError(f"host {host!r} has already joined")
            if not row:
                self._insert("hosts", {"name": host, "invited": time.time()})
            self._insert("tokens", {"hash": token_hash, "host": host, "expires": expires})

    def consume_token(self, token_hash: str, fingerprint: str, key: str, now: float) -> str:
        """Use a join token once: pin the host key and return the host's name."""
        with self._tx():
            row = self.db.execute(
                "SELECT host FROM tokens WHERE hash = ? AND used IS NULL AND expires > ?",
                [token_hash, now]).fetchone()
            if not row:
                raise BrokerError("join token is invalid, expired or already used")
            if self.host_by_key(fingerprint):
                raise BrokerError("this hostd key is already registered")
            self.db.execute("UPDATE tokens SET used = ? WHERE hash = ?", [now, token_hash])
            self.db.execute("UPDATE hosts SET fingerprint = ?, key = ?, joined = ? WHERE name = ?",
                            [fingerprint, key, now, row[0]])
            return row[0]

    def host_by_key(self, fingerprint: str) -> dict | None:
        rows = list(self.db.query("SELECT * FROM hosts WHERE fingerprint = ?", [fingerprint]))
        return rows[0] if rows else None

    def host(self, name: str) -> dict:
        rows = list(self.db.query("SELECT * FROM hosts WHERE name = ?", [name]))
        if not rows or not rows[0]["joined"]:
            raise NotFound(f"unknown host {name!r}")
        return rows[0]

    def hosts(self) -> list[dict]:
        return list(self.db.query("SELECT name, fingerprint, joined, last_seen, banned FROM hosts ORDER BY name"))

    def touch_host(self, name: str, now: float) -> None:
        self.db.execute("UPDATE hosts SET last_seen = ? WHERE name = ?", [now, name])

    def ban_host(self, name: str) -> None:
        self.host(name)
        self.db.execute("UPDATE hosts SET banned = 1 WHERE name = ?", [name])

    # leases
    def insert_lease(self, lease: dict) -> None:
        self._insert("leases", lease)

    def update_lease(self, lease_id: str, **fields) -> None:
        sets = ", ".join(f"{k} = ?" for k in fields)
        self.db.execute(f"UPDATE leases SET {sets} WHERE id = ?", [*fields.values(), lease_id])

    def lease(self, lease_id: str) -> dict:
        rows = list(self.db.query("SELECT * FROM leases WHERE id = ?", [lease_id]))
        if not rows:
            raise NotFound(f"no lease {lease_id!r}")
        return rows[0]

    def leases(self, renter: str | None = None, live_only: bool = False) -> list[dict]:
        where, args = [], []
        if renter:
            where.append("renter = ?")
            args.append(renter)
        if live_only:
            where.append(f"state IN ({','.join('?' * len(LIVE_STATES))})")
            args.extend(LIVE_STATES)
        sql = "SELECT * FROM leases" + (" WHERE " + " AND ".join(where) if where else "")
        return list(self.db.query(sql + " ORDER BY created", args))

    def expire_leases(self, now: float) -> int:
        """Mark active leases whose time is over as ended; returns how many."""
        return self.db.execute(
            "UPDATE leases SET state = 'ended' WHERE state = 'active' AND ends_at <= ?", [now]).rowcount
