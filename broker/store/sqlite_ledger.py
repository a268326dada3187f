"""The SQLite backend's ledger: transactions posted once per key, their entries and balances (a part
of store.sqlite.Store)."""
from .. import ledger


class Ledger:
    """Double-entry transactions; renter and hold accounts never go below zero."""

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
