"""The store's leases and their down times, in SQL both backends run (a part of store.sqlite.Store
and store.postgres.Store)."""
import json

from .. import ledger
from ..errors import NotFound
from ..leases import LIVE
from .records import Lease

MAX_DOWNS = 200  # down times kept per lease


def lease_record(row: dict) -> Lease:
    """A leases row as a record: its GPUs parsed from their JSON column."""
    row["gpus"] = json.loads(row.get("gpus") or "[]")
    return row


def _states(expect: str | tuple[str, ...]) -> tuple[str, ...]:
    return (expect,) if isinstance(expect, str) else tuple(expect)


class Leases:
    """Leases, what their hosts acknowledged, and the times their containers were down."""

    def insert_lease(self, lease: Lease) -> None:
        self._insert("leases", {**lease, "gpus": json.dumps(list(lease.get("gpus") or []))})

    def update_lease(self, lease_id: str, expect_state: str | tuple[str, ...] | None = None, **fields) -> bool:
        """Set fields of a lease; with expect_state, only while it is in that state (or one of them).
        Whether it was written."""
        if "gpus" in fields:
            fields["gpus"] = json.dumps(list(fields["gpus"]))
        sets = ", ".join(f"{k} = ?" for k in fields)
        sql, args = f"UPDATE leases SET {sets} WHERE id = ?", [*fields.values(), lease_id]
        if expect_state is not None:
            states = _states(expect_state)
            sql += f" AND state IN ({','.join('?' * len(states))})"
            args += states
        return self._sql(sql, args).rowcount == 1

    def lease(self, lease_id: str, for_update: bool = False) -> Lease:
        """One lease (NotFound). for_update: the row stays locked until the transaction ends (the
        backend's LOCK_ROW; in SQLite every transaction already holds the database's write lock)."""
        rows = self._rows("SELECT * FROM leases WHERE id = ?" + (self.LOCK_ROW if for_update else ""), [lease_id])
        if not rows:
            raise NotFound(f"no lease {lease_id!r}")
        return lease_record(rows[0])

    def leases(self, renter: str | None = None, live_only: bool = False) -> list[dict]:
        where, args = [], []
        if renter:
            where.append("renter = ?")
            args.append(renter)
        if live_only:
            where.append(f"state IN ({','.join('?' * len(LIVE))})")
            args.extend(LIVE)
        sql = "SELECT * FROM leases" + (" WHERE " + " AND ".join(where) if where else "")
        return [lease_record(r) for r in self._rows(sql + " ORDER BY created", args)]

    def leases_on(self, host: str, live_only: bool = True) -> list[dict]:
        sql = "SELECT * FROM leases WHERE host = ?"
        if live_only:
            sql += f" AND state IN ({','.join('?' * len(LIVE))})"
        return [lease_record(r) for r in self._rows(sql, [host, *(LIVE if live_only else ())])]

    def live_leases(self) -> list[dict]:
        return self.leases(live_only=True)

    def to_recover(self) -> list[dict]:
        """Leases a crash may have left half done: caught mid-start or mid-release, and leases over
        whose settlement is missing (one query, not one per lease in the whole history)."""
        return [lease_record(r) for r in self._rows(
            "SELECT * FROM leases WHERE state IN ('pending', 'starting', 'ending') OR "
            "(state IN ('ended', 'purged', 'failed') AND NOT EXISTS "
            "(SELECT 1 FROM txs WHERE txs.key = ? || leases.id))", [ledger.settle_key("")])]

    def live_count(self, renter: str) -> int:
        return self._count("leases", f"renter = ? AND state IN ({','.join('?' * len(LIVE))})",
                                             [renter, *LIVE])

    def unsynced(self, host: str | None = None) -> list[dict]:
        """Leases whose host has not yet acknowledged what the broker decided: an end time it was
        not told, an end or a failure whose container it has not confirmed gone."""
        sql = ("SELECT * FROM leases WHERE ((state = 'active' AND (host_ends_at IS NULL OR host_ends_at != ends_at))"
               " OR (state IN ('ended', 'purged', 'failed') AND host_ended IS NULL))")
        return [lease_record(r) for r in self._rows(sql + (" AND host = ?" if host else ""), [host] if host else [])]

    def acknowledged_end(self, lease: str, ends_at: float) -> None:
        """The host has been told this end time (unless the end has moved since)."""
        self._sql("UPDATE leases SET host_ends_at = ? WHERE id = ? AND ends_at = ?", [ends_at, lease, ends_at])

    def set_down(self, lease: str, down: float, up: float | None) -> bool:
        """A time a lease's container was not running (its host said so); up None while it still is
        not. True when this is news (a new down, or its up)."""
        with self.tx():
            row = self._sql("SELECT up FROM lease_downs WHERE lease = ? AND down = ?", [lease, down]).fetchone()
            if row and (row[0] is not None or up is None):
                return False
            if row:
                self._sql("UPDATE lease_downs SET up = ? WHERE lease = ? AND down = ?", [up, lease, down])
            elif self._count("lease_downs", "lease = ?", [lease]) >= MAX_DOWNS:
                return False  # a host reporting more is not believed further
            else:
                self._sql("INSERT INTO lease_downs (lease, down, up) VALUES (?, ?, ?)", [lease, down, up])
        return True

    def downs(self, lease: str) -> list[tuple[float, float | None]]:
        return [tuple(r) for r in self._sql("SELECT down, up FROM lease_downs WHERE lease = ? ORDER BY down",
                                                  [lease])]

    def host_downs(self, host: str, since: float) -> list[tuple[float, float | None]]:
        """Times any of a host's lease containers was down, since `since` (for reliability)."""
        return self.downs_by_host(since, host).get(host, [])

    def downs_by_host(self, since: float, host: str | None = None) -> dict[str, list[tuple[float, float]]]:
        """host_downs of every host (or of one), in one query."""
        now = self.now()  # a down never outlasts its lease: a lease ended while down stops counting then
        out: dict[str, list] = {}
        sql = ("SELECT l.host, d.down, d.up, l.ended FROM lease_downs d JOIN leases l ON l.id = d.lease "
               "WHERE (d.up IS NULL OR d.up >= ?)")
        for name, down, up, ended in self._sql(sql + (" AND l.host = ?" if host else ""), [since, host][:1 + bool(host)]):
            end = now if ended is None else ended
            out.setdefault(name, []).append((down, min(end if up is None else up, end)))
        return out

    def last_down(self, host: str) -> float | None:
        """When the host was last seen to go offline."""
        row = self._sql("SELECT MAX(down) FROM uptime WHERE host = ?", [host]).fetchone()
        return row[0] if row else None

    def busy_gpus(self, host: str) -> set[str]:
        """The GPUs of a host that busy leases (as busy_leases) hold."""
        return {g for r in self._sql(
            f"SELECT gpus FROM leases WHERE host = ? AND (state IN ({','.join('?' * len(LIVE))}) "
            "OR (state IN ('ended', 'purged', 'failed') AND host_ended IS NULL))", [host, *LIVE])
            for g in json.loads(r[0] or "[]")}

    def busy_leases(self) -> list[dict]:
        """Leases whose GPUs are taken: live ones, and ended or failed ones whose host has not yet
        said that their container is gone."""
        return [lease_record(r) for r in self._rows(
            f"SELECT * FROM leases WHERE state IN ({','.join('?' * len(LIVE))}) "
            "OR (state IN ('ended', 'purged', 'failed') AND host_ended IS NULL)", list(LIVE))]
