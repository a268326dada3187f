"""The broker's SQLite backend: the store's operations in SQL (the only module with SQL but its schema).

Not thread-safe by itself: the server calls it from one writer thread (store.writer.Db), the CLI
directly. WAL mode and a busy timeout let the two share the file.
"""
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path

import sqlite_utils

from .. import ledger
from ..errors import BrokerError, KeyTaken, NotFound
from ..leases import LIVE
from .sqlite_schema import MIGRATIONS, SCHEMA

MAX_DOWNS = 200  # down times kept per lease


class Store:
    """Renters and their keys, hosts and join tokens, leases."""

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

    # renters
    def add_renter(self, name: str, fingerprint: str, key: str) -> None:
        """Create a renter with one public key."""
        with self._tx():
            if self.db["renters"].count_where("name = ?", [name]):
                raise BrokerError(f"renter {name!r} already exists")
            self._check_key_free(fingerprint)
            self._insert("renters", {"name": name, "created": self.now()})
            self._insert("renter_keys", {"fingerprint": fingerprint, "renter": name, "key": key,
                                         "added": self.now()})

    def _check_key_free(self, fingerprint: str) -> None:
        row = self.db.execute("SELECT renter FROM renter_keys WHERE fingerprint = ?", [fingerprint]).fetchone()
        if row:
            raise KeyTaken(f"that key already belongs to renter {row[0]!r}")

    def renter_by_key(self, fingerprint: str) -> str | None:
        """The renter owning a key, or None."""
        row = self.db.execute("SELECT renter FROM renter_keys WHERE fingerprint = ?", [fingerprint]).fetchone()
        return row[0] if row else None

    def require_renter(self, name: str) -> None:
        if not self.db["renters"].count_where("name = ?", [name]):
            raise NotFound(f"unknown renter {name!r}")

    def renter_config(self, name: str) -> dict:
        """A renter's own settings: {"tmux": bool}."""
        row = self.db.execute("SELECT tmux FROM renters WHERE name = ?", [name]).fetchone()
        if row is None:
            raise NotFound(f"unknown renter {name!r}")
        return {"tmux": bool(row[0])}

    def set_renter_tmux(self, name: str, on: bool) -> None:
        self.require_renter(name)
        self.db.execute("UPDATE renters SET tmux = ? WHERE name = ?", [int(on), name])

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
                self._insert("hosts", {"name": host, "invited": self.now()})
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
        return list(self.db.query("SELECT name, fingerprint, joined, last_seen, banned, inventory_error FROM hosts "
                                  "ORDER BY name"))

    def touch_host(self, name: str, now: float) -> None:
        self.db.execute("UPDATE hosts SET last_seen = ? WHERE name = ?", [now, name])

    def ban_host(self, name: str) -> None:
        self.host(name)
        self.db.execute("UPDATE hosts SET banned = ? WHERE name = ? AND banned = 0", [self.now(), name])

    def banned(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT name FROM hosts WHERE banned != 0")}

    def on_banned_hosts(self) -> list[dict]:
        """Active leases whose host is banned, with the time of the ban."""
        return list(self.db.query("SELECT l.*, h.banned AS banned_at FROM leases l JOIN hosts h ON h.name = l.host "
                                  "WHERE l.state = 'active' AND h.banned != 0"))

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
            where.append(f"state IN ({','.join('?' * len(LIVE))})")
            args.extend(LIVE)
        sql = "SELECT * FROM leases" + (" WHERE " + " AND ".join(where) if where else "")
        return list(self.db.query(sql + " ORDER BY created", args))

    def leases_on(self, host: str, live_only: bool = True) -> list[dict]:
        sql = "SELECT * FROM leases WHERE host = ?"
        if live_only:
            sql += f" AND state IN ({','.join('?' * len(LIVE))})"
        return list(self.db.query(sql, [host, *(LIVE if live_only else ())]))

    def live_leases(self) -> list[dict]:
        return self.leases(live_only=True)

    def to_recover(self) -> list[dict]:
        """Leases a crash may have left half done: caught mid-start or mid-release, and leases over
        whose settlement is missing (one query, not one per lease in the whole history)."""
        return list(self.db.query(
            "SELECT * FROM leases WHERE state IN ('pending', 'starting', 'ending') OR "
            "(state IN ('ended', 'purged', 'failed') AND NOT EXISTS "
            "(SELECT 1 FROM txs WHERE txs.key = ? || leases.id))", [ledger.settle_key("")]))

    def live_count(self, renter: str) -> int:
        return self.db["leases"].count_where(f"renter = ? AND state IN ({','.join('?' * len(LIVE))})",
                                             [renter, *LIVE])

    def unsynced(self, host: str | None = None) -> list[dict]:
        """Leases whose host has not yet acknowledged what the broker decided: an end time it was
        not told, an end or a failure whose container it has not confirmed gone."""
        sql = ("SELECT * FROM leases WHERE ((state = 'active' AND (host_ends_at IS NULL OR host_ends_at != ends_at))"
               " OR (state IN ('ended', 'purged', 'failed') AND host_ended IS NULL))")
        return list(self.db.query(sql + (" AND host = ?" if host else ""), [host] if host else []))

    def acknowledged_end(self, lease: str, ends_at: float) -> None:
        """The host has been told this end time (unless the end has moved since)."""
        self.db.execute("UPDATE leases SET host_ends_at = ? WHERE id = ? AND ends_at = ?", [ends_at, lease, ends_at])

    def set_down(self, lease: str, down: float, up: float | None) -> bool:
        """A time a lease's container was not running (its host said so); up None while it still is
        not. True when this is news (a new down, or its up)."""
        with self._tx():
            row = self.db.execute("SELECT up FROM lease_downs WHERE lease = ? AND down = ?", [lease, down]).fetchone()
            if row and (row[0] is not None or up is None):
                return False
            if row:
                self.db.execute("UPDATE lease_downs SET up = ? WHERE lease = ? AND down = ?", [up, lease, down])
            elif self.db["lease_downs"].count_where("lease = ?", [lease]) >= MAX_DOWNS:
                return False  # a host reporting more is not believed further
            else:
                self.db.execute("INSERT INTO lease_downs (lease, down, up) VALUES (?, ?, ?)", [lease, down, up])
        return True

    def gauges(self) -> dict:
        """What the metrics gauges read: leases by state, credit held by live leases, and all that was
        ever settled to providers and the platform. Index lookups and small tables, never a scan of
        every ledger entry."""
        q = self.db.execute
        states = dict(q("SELECT state, count(*) FROM leases GROUP BY state").fetchall())
        held = q("SELECT COALESCE(SUM(held), 0) FROM leases WHERE state IN ('starting', 'active', 'ending')").fetchone()
        settled = q("SELECT COALESCE(SUM(amount), 0) FROM entries WHERE (account >= ? AND account < ?) OR account = ?",
                    [ledger.PROVIDERS, ledger.PROVIDERS[:-1] + ";", ledger.FEES]).fetchone()
        return {"states": states, "held": held[0], "settled": settled[0]}

    def charged(self, lease: str) -> int:
        """What a lease's renter has paid so far: provider and platform shares of its settlement and
        corrections."""
        return self.db.execute(
            "SELECT COALESCE(SUM(e.amount), 0) FROM txs t JOIN entries e ON e.tx = t.id WHERE t.lease = ? "
            "AND (e.account LIKE ? OR e.account = ?)", [lease, ledger.PROVIDERS + "%", ledger.FEES]).fetchone()[0]

    def downs(self, lease: str) -> list[tuple[float, float | None]]:
        return [tuple(r) for r in self.db.execute("SELECT down, up FROM lease_downs WHERE lease = ? ORDER BY down",
                                                  [lease])]

    def host_downs(self, host: str, since: float) -> list[tuple[float, float | None]]:
        """Times any of a host's lease containers was down, since `since` (for reliability)."""
        return self.downs_by_host(since, host).get(host, [])

    def downs_by_host(self, since: float, host: str | None = None) -> dict[str, list[tuple[float, float]]]:
        """host_downs of every host (or of one), in one query."""
        now = self.now()  # a down never outlasts its lease: a lease ended while down stops counting then
        out: dict[str, list] = {}
        for name, down, up in self.db.execute(
                "SELECT l.host, d.down, MIN(COALESCE(d.up, l.ended, ?), COALESCE(l.ended, ?)) AS up FROM lease_downs d "
                "JOIN leases l ON l.id = d.lease WHERE (d.up IS NULL OR d.up >= ?) AND (? IS NULL OR l.host = ?)",
                [now, now, since, host, host]):
            out.setdefault(name, []).append((down, up))
        return out

    def last_down(self, host: str) -> float | None:
        """When the host was last seen to go offline."""
        row = self.db.execute("SELECT MAX(down) FROM uptime WHERE host = ?", [host]).fetchone()
        return row[0] if row else None

    def busy_leases(self) -> list[dict]:
        """Leases whose GPUs are taken: live ones, and ended or failed ones whose host has not yet
        said that their container is gone."""
        return list(self.db.query(
            f"SELECT * FROM leases WHERE state IN ({','.join('?' * len(LIVE))}) "
            "OR (state IN ('ended', 'purged', 'failed') AND host_ended IS NULL)", list(LIVE)))

    # hosts: inventory and uptime
    def set_inventory(self, name: str, inventory: str | None, error: str | None = None) -> None:
        """A host's checked inventory (JSON), or None and why it was refused."""
        self.db.execute("UPDATE hosts SET inventory = ?, inventory_error = ? WHERE name = ?",
                        [inventory, error, name])

    def joined_hosts(self) -> list[dict]:
        return list(self.db.query("SELECT * FROM hosts WHERE joined IS NOT NULL AND banned = 0"))

    def host_up(self, name: str, now: float) -> None:
        with self._tx():
            self.db.execute("UPDATE uptime SET down = ? WHERE host = ? AND down IS NULL", [now, name])
            self.db.execute("INSERT INTO uptime (host, up) VALUES (?, ?)", [name, now])

    def host_down(self, name: str, now: float) -> None:
        self.db.execute("UPDATE uptime SET down = ? WHERE host = ? AND down IS NULL", [now, name])

    def close_uptimes(self) -> None:
        """After a broker restart: an interval left open ended when the host was last seen."""
        self.db.execute("UPDATE uptime SET down = (SELECT last_seen FROM hosts WHERE name = uptime.host) "
                        "WHERE down IS NULL")

    def uptimes(self, since: float) -> dict[str, list[tuple[float, float | None]]]:
        out: dict[str, list] = {}
        for host, up, down in self.db.execute(
                "SELECT host, up, down FROM uptime WHERE down IS NULL OR down >= ? ORDER BY up", [since]):
            out.setdefault(host, []).append((up, down))
        return out

    def touch_hosts(self, names: list[str], now: float) -> None:
        self.db.conn.executemany("UPDATE hosts SET last_seen = ? WHERE name = ?", [(now, n) for n in names])

    # ledger
    def posted(self, key: str) -> bool:
        """Whether a transaction with this key exists."""
        return self.db.execute("SELECT 1 FROM txs WHERE key = ?", [key]).fetchone() is not None

    def post(self, key: str, kind: str, entries: ledger.Entries, lease: str | None = None,
             renter: str | None = None, memo: str = "", now: float | None = None) -> bool:
        """Post one balanced transaction once: False (and nothing changes) if key was posted before."""
        ledger.check(entries)
        with self._tx():
            if self.db.execute("SELECT 1 FROM txs WHERE key = ?", [key]).fetchone():
                return False
            for account, amount in entries:
                if account.startswith(ledger.NON_NEGATIVE) and amount < 0:
                    if self.balance(account) + amount < 0:
                        raise ledger.LedgerError(
                            f"not enough credit: {ledger.credits_needed(self.balance(account), -amount)}")
            cur = self.db.execute("INSERT INTO txs (key, kind, lease, renter, created, memo) VALUES (?,?,?,?,?,?)",
                                  [key, kind, lease, renter, now or self.now(), memo])
            self.db.conn.executemany("INSERT INTO entries (tx, account, amount) VALUES (?, ?, ?)",
                                     [(cur.lastrowid, a, v) for a, v in entries])
        return True

    def balance(self, account: str) -> int:
        return self.db.execute("SELECT COALESCE(SUM(amount), 0) FROM entries WHERE account = ?",
                               [account]).fetchone()[0]

    def balances(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT account, SUM(amount) FROM entries GROUP BY account ORDER BY account"))

    def journal(self, renter: str | None = None) -> list[dict]:
        """Transactions with their entries, oldest first (only those touching renter, if given)."""
        where, args = "", []
        if renter:
            where, args = "WHERE t.renter = ?", [renter]
        rows = self.db.execute(
            f"SELECT t.id, t.key, t.kind, t.lease, t.renter, t.created, t.memo, e.account, e.amount "
            f"FROM txs t JOIN entries e ON e.tx = t.id {where} ORDER BY t.id, e.rowid", args).fetchall()
        out: dict[int, dict] = {}
        for tid, key, kind, lease, who, created, memo, account, amount in rows:
            tx = out.setdefault(tid, {"id": tid, "key": key, "kind": kind, "lease": lease, "renter": who,
                                      "created": created, "memo": memo, "entries": []})
            tx["entries"].append({"account": account, "amount": amount})
        return list(out.values())

    # renter keys
    def renter_keys(self, renter: str) -> list[dict]:
        return list(self.db.query("SELECT fingerprint, key, added FROM renter_keys WHERE renter = ? ORDER BY added",
                                  [renter]))

    def add_key(self, renter: str, fingerprint: str, key: str) -> None:
        with self._tx():
            self._check_key_free(fingerprint)
            self._insert("renter_keys", {"fingerprint": fingerprint, "renter": renter, "key": key,
                                         "added": self.now()})

    def remove_key(self, renter: str, fingerprint: str) -> None:
        with self._tx():
            keys = [k["fingerprint"] for k in self.renter_keys(renter)]
            if fingerprint not in keys:
                raise NotFound(f"no key {fingerprint} on your account")
            if len(keys) == 1:
                raise BrokerError("that is your only key; add another one first")
            self.db.execute("DELETE FROM renter_keys WHERE fingerprint = ?", [fingerprint])
