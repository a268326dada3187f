"""hostd's own SQLite record of the leases it runs. The only hostd module that touches SQLite."""
import sqlite3
from pathlib import Path

import sqlite_utils

_COLUMNS = {"id": str, "renter": str, "image": str, "ends_at": float, "state": str, "container": str,
            "shell": str, "gpus": str, "ended_at": float, "cpuset": str,
            "disk_gb": float, "downs": str, "seen": float,
            "ws_from": str, "ws_to": str, "auto": int, "auto_note": str}


def live_leases(path: Path) -> list[dict]:
    """The starting, active and ending leases, read-only (for `hostd status` beside a running hostd;
    [] while there is no record yet or it cannot be read this moment)."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2)
    except sqlite3.Error:
        return []
    try:
        return list(sqlite_utils.Database(conn)["leases"].rows_where(
            "state IN ('starting', 'active', 'ending')", order_by="ends_at"))
    except sqlite3.Error:
        return []
    finally:
        conn.close()


class Store:
    """Leases this host serves. States: starting, active, ending, ended, purged, lost."""

    def __init__(self, path: Path):
        self.db = sqlite_utils.Database(sqlite3.connect(str(path), timeout=10, check_same_thread=False))
        self.db.execute("PRAGMA journal_mode=WAL")
        table = self.db["leases"]
        table.create(_COLUMNS, pk="id", if_not_exists=True)
        for name, kind in _COLUMNS.items():
            if name not in table.columns_dict:
                table.add_column(name, kind)

    def put(self, lease: dict) -> None:
        self.db["leases"].upsert(lease, pk="id")

    def get(self, lease_id: str) -> dict | None:
        try:
            return self.db["leases"].get(lease_id)
        except sqlite_utils.db.NotFoundError:
            return None

    def update(self, lease_id: str, **fields) -> None:
        self.db["leases"].update(lease_id, fields)

    def all(self) -> list[dict]:
        return list(self.db["leases"].rows)

    def holding(self) -> list[dict]:
        """Leases that hold their GPUs and cores: starting, active or ending."""
        return list(self.db["leases"].rows_where("state IN ('starting', 'active', 'ending')"))

    def active(self) -> list[dict]:
        return list(self.db["leases"].rows_where("state = 'active'"))
