"""The SQLite backend's hosts, join tokens, bans, inventories and uptime (a part of store.sqlite.Store)."""
from ..errors import BrokerError, NotFound


class Hosts:
    """Hosts: invited by token, joined by key; their inventory and connected intervals."""

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
