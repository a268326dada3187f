"""hostd's own SQLite record of the leases it runs. The only hostd module that touches SQLite."""
import sqlite3
from pathlib import Path

import sqlite_utils


class Store:
    """Leases this host serves: id, renter, image, ends_at, state, container, shell."""

    def __init__(self, path: Path):
        self.db = sqlite_utils.Database(sqlite3.connect(str(path), timeout=10, check_same_thread=False))
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db["leases"].create({"id": str, "renter": str, "image": str, "ends_at": float, "state": str,
                                  "container": str, "shell": str}, pk="id", if_not_exists=True)

    def put(self, lease: dict) -> None:
        self.db["leases"].upsert(lease, pk="id")

    def get(self, lease_id: str) -> dict | None:
        try:
            return self.db["leases"].get(lease_id)
        except sqlite_utils.db.NotFoundError:
            return None

    def set_state(self, lease_id: str, state: str) -> None:
        self.db["leases"].update(lease_id, {"state": state})

    def active(self) -> list[dict]:
        return list(self.db["leases"].rows_where("state = 'active'"))
