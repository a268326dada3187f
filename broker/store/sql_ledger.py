"""The store's ledger: transactions posted once per key, their entries and balances, in SQL both
backends run (a part of store.sqlite.Store and store.postgres.Store)."""
from .. import ledger


def _sum(column: str) -> str:
    """A sum of integers that stays an integer in every backend (PostgreSQL's SUM of BIGINT is NUMERIC)."""
    return f"CAST(COALESCE(SUM({column}), 0) AS BIGINT)"


class Ledger:
    """Double-entry transactions; renter and hold accounts never go below zero."""

    def gauges(self) -> dict:
        """What the metrics gauges read: leases by state, credit held by live leases, and all that was
        ever settled to providers and the platform. Index lookups and small tables, never a scan of
        every ledger entry."""
        q = self._sql
        states = dict(q("SELECT state, count(*) FROM leases GROUP BY state").fetchall())
        held = q(f"SELECT {_sum('held')} FROM leases WHERE state IN ('starting', 'active', 'ending')").fetchone()
        settled = q(f"SELECT {_sum('amount')} FROM entries WHERE (account >= ? AND account < ?) OR account = ?",
                    [ledger.PROVIDERS, ledger.PROVIDERS[:-1] + ";", ledger.FEES]).fetchone()
        return {"states": states, "held": held[0], "settled": settled[0]}

    def charged(self, lease: str) -> int:
        """What a lease's renter has paid so far: provider and platform shares of its settlement and
        corrections."""
        return self._sql(
            f"SELECT {_sum('e.amount')} FROM txs t JOIN entries e ON e.tx = t.id WHERE t.lease = ? "
            "AND (e.account LIKE ? OR e.account = ?)", [lease, ledger.PROVIDERS + "%", ledger.FEES]).fetchone()[0]

    def posted(self, key: str) -> bool:
        """Whether a transaction with this key exists."""
        return self._sql("SELECT 1 FROM txs WHERE key = ?", [key]).fetchone() is not None

    def post(self, key: str, kind: str, entries: ledger.Entries, lease: str | None = None,
             renter: str | None = None, memo: str = "", now: float | None = None) -> bool:
        """Post one balanced transaction once: False (and nothing changes) if key was posted before."""
        ledger.check(entries)
        with self.tx():
            guarded = {a for a, v in entries if a.startswith(ledger.NON_NEGATIVE)
                       or (v < 0 and a.startswith(ledger.PROVIDERS) and self._owned(a))}
            self.lock(*sorted(guarded))  # balances checked
            if self._sql("SELECT 1 FROM txs WHERE key = ?", [key]).fetchone():
                return False
            for account, amount in entries:
                if account in guarded and amount < 0:
                    if self.balance(account) + amount < 0:
                        raise ledger.LedgerError(
                            f"not enough credit: {ledger.credits_needed(self.balance(account), -amount)}")
            row = self._sql("INSERT INTO txs (key, kind, lease, renter, created, memo) VALUES (?,?,?,?,?,?) "
                            "ON CONFLICT (key) DO NOTHING RETURNING id",
                            [key, kind, lease, renter, now or self.now(), memo]).fetchall()
            if not row:
                return False  # posted meanwhile by another writer: the unique key is the last defence
            tx = row[0][0]
            self._many("INSERT INTO entries (tx, account, amount) VALUES (?, ?, ?)", [(tx, a, v) for a, v in entries])
        return True

    def _owned(self, account: str) -> bool:
        """Whether a provider account is a renter's own host's: its earnings become credit (a payout),
        so it never goes below zero (a correction after a payout would make credit from nothing)."""
        row = self._sql("SELECT owner FROM hosts WHERE name = ?", [account[len(ledger.PROVIDERS):]]).fetchone()
        return bool(row and row[0])

    def unbalanced(self) -> list[str]:
        """Keys of transactions whose entries do not sum to zero (there are none: each is checked)."""
        return [r[0] for r in self._sql(
            "SELECT t.key FROM txs t JOIN entries e ON e.tx = t.id GROUP BY t.id HAVING SUM(e.amount) != 0")]

    def balance(self, account: str) -> int:
        return self._sql(f"SELECT {_sum('amount')} FROM entries WHERE account = ?",
                               [account]).fetchone()[0]

    def balances(self) -> dict[str, int]:
        return dict(self._sql(f"SELECT account, {_sum('amount')} FROM entries GROUP BY account ORDER BY account"))

    def journal(self, renter: str | None = None) -> list[dict]:
        """Transactions with their entries, oldest first (only those touching renter, if given)."""
        where, args = "", []
        if renter:
            where, args = "WHERE t.renter = ?", [renter]
        rows = self._sql(
            f"SELECT t.id, t.key, t.kind, t.lease, t.renter, t.created, t.memo, e.account, e.amount "
            f"FROM txs t JOIN entries e ON e.tx = t.id {where} ORDER BY t.id, e.{self.ENTRY_ID}", args).fetchall()
        out: dict[int, dict] = {}
        for tid, key, kind, lease, who, created, memo, account, amount in rows:
            tx = out.setdefault(tid, {"id": tid, "key": key, "kind": kind, "lease": lease, "renter": who,
                                      "created": created, "memo": memo, "entries": []})
            tx["entries"].append({"account": account, "amount": amount})
        return list(out.values())
