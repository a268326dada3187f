"""The store's hosts, join tokens, bans, inventories and uptime, in SQL both backends run (a part of
store.sqlite.Store and store.postgres.Store)."""
import functools
import json
import secrets

from .. import ledger
from ..errors import BrokerError, NotFound
from .records import Host
from .sql_leases import lease_record


@functools.lru_cache(maxsize=4096)
def _inventory(text: str) -> dict:
    """An inventory parsed once per distinct text: the market reads every host's on each build, and
    most have not changed (records are read-only, so one parsed value serves every read)."""
    return json.loads(text)


def host_record(row: dict) -> Host:
    if row.get("inventory") is not None:
        row["inventory"] = _inventory(row["inventory"])
    return row


class Hosts:
    """Hosts: invited by token, joined by key; their inventory and connected intervals."""

    def add_token(self, host: str, token_hash: str, expires: float) -> None:
        """Invite a host by name (a new name, or one that never joined)."""
        with self.tx():
            row = self._sql("SELECT joined, owner FROM hosts WHERE name = ?", [host]).fetchone()
            if row and row[0]:
                raise BrokerError(f"host {host!r} has already joined")
            if row and row[1]:
                raise BrokerError(f"host name {host!r} is renter {row[1]}'s own host: choose another name")
            if not row:
                self._insert("hosts", {"name": host, "invited": self.now()})
            self._insert("tokens", {"hash": token_hash, "host": host, "expires": expires})

    def consume_token(self, token_hash: str, fingerprint: str, key: str, now: float) -> str:
        """Use a join token once: pin the host key and return the host's name."""
        with self.tx():
            row = self._sql(  # one conditional write: two joins with one token, through two brokers, use it once
                "UPDATE tokens SET used = ? WHERE hash = ? AND used IS NULL AND expires > ? RETURNING host",
                [now, token_hash, now]).fetchall()  # all: a RETURNING statement is finished before the commit
            if not row:
                raise BrokerError("join token is invalid, expired or already used")
            if self.host_by_key(fingerprint):
                raise BrokerError("this hostd key is already registered")  # the token's use rolls back
            self._sql("UPDATE hosts SET fingerprint = ?, key = ?, joined = ? WHERE name = ?",
                      [fingerprint, key, now, row[0][0]])
            return row[0][0]

    def host_by_key(self, fingerprint: str) -> dict | None:
        rows = list(self._rows("SELECT * FROM hosts WHERE fingerprint = ?", [fingerprint]))
        return host_record(rows[0]) if rows else None

    def host(self, name: str) -> dict:
        rows = list(self._rows("SELECT * FROM hosts WHERE name = ?", [name]))
        if not rows or not rows[0]["joined"]:
            raise NotFound(f"unknown host {name!r}")
        return host_record(rows[0])

    def invite_own_host(self, host: str, token_hash: str, expires: float, renter: str, most: int) -> None:
        """A renter invites a host of its own: a new name, or its own that has not joined yet; at most
        `most` hosts a renter."""
        with self.tx():
            self.lock(f"hosts-of:{renter}")
            row = self._sql("SELECT joined, owner FROM hosts WHERE name = ?", [host]).fetchone()
            if row and row[1] != renter:
                raise BrokerError(f"the host name {host!r} is taken: choose another")
            if row and row[0]:
                raise BrokerError(f"your host {host!r} has already joined")
            if not row:
                if self._count("hosts", "owner = ?", [renter]) >= most:
                    raise BrokerError(f"you have {most} hosts, the most one renter may")
                self._insert("hosts", {"name": host, "invited": self.now(), "owner": renter})
            self._sql("DELETE FROM tokens WHERE host = ? AND used IS NULL", [host])  # the newest token only
            self._insert("tokens", {"hash": token_hash, "host": host, "expires": expires})

    def owned_hosts(self, renter: str) -> list[Host]:
        return [host_record(r) for r in self._rows("SELECT * FROM hosts WHERE owner = ? ORDER BY name", [renter])]

    def pay_out(self, host: str, renter: str) -> int:
        """Move all of a renter's host's earnings to the renter's credit, once: the amount."""
        with self.tx():
            self.lock(ledger.provider(host))
            row = self._sql("SELECT owner FROM hosts WHERE name = ?", [host]).fetchone()
            if not row or row[0] != renter:
                raise NotFound(f"you have no host {host!r}")
            amount = self.balance(ledger.provider(host))
            if amount <= 0:
                raise BrokerError(f"host {host} has no earnings to move")
            self.post(f"payout:{host}:{secrets.token_hex(8)}", "payout",
                      [(ledger.provider(host), -amount), (ledger.renter(renter), amount)], renter=renter,
                      memo=f"earnings of host {host}")
            return amount

    def hosts(self) -> list[dict]:
        return list(self._rows("SELECT name, owner, fingerprint, joined, last_seen, banned, inventory_error FROM hosts "
                                  "ORDER BY name"))

    def touch_host(self, name: str, now: float) -> None:
        self._sql("UPDATE hosts SET last_seen = ? WHERE name = ?", [now, name])

    def ban_host(self, name: str) -> None:
        self.host(name)
        self._sql("UPDATE hosts SET banned = ? WHERE name = ? AND banned = 0", [self.now(), name])

    def banned(self) -> set[str]:
        return {r[0] for r in self._sql("SELECT name FROM hosts WHERE banned != 0")}

    def on_banned_hosts(self) -> list[dict]:
        """Active leases whose host is banned, with the time of the ban."""
        return [lease_record(r) for r in self._rows(
            "SELECT l.*, h.banned AS banned_at FROM leases l JOIN hosts h ON h.name = l.host "
            "WHERE l.state = 'active' AND h.banned != 0")]

    def set_inventory(self, name: str, inventory: dict | None, error: str | None = None) -> None:
        """A host's checked inventory, or None and why it was refused."""
        text = None if inventory is None else json.dumps(inventory, sort_keys=True)
        self._sql("UPDATE hosts SET inventory = ?, inventory_error = ? WHERE name = ?", [text, error, name])

    def joined_hosts(self) -> list[Host]:
        return [host_record(r) for r in self._rows("SELECT * FROM hosts WHERE joined IS NOT NULL AND banned = 0")]

    def host_up(self, name: str, now: float) -> None:
        with self.tx():
            self._sql("UPDATE uptime SET down = ? WHERE host = ? AND down IS NULL", [now, name])
            self._sql("INSERT INTO uptime (host, up) VALUES (?, ?)", [name, now])

    def host_down(self, name: str, now: float) -> None:
        self._sql("UPDATE uptime SET down = ? WHERE host = ? AND down IS NULL", [now, name])

    def uptimes(self, since: float) -> dict[str, list[tuple[float, float | None]]]:
        out: dict[str, list] = {}
        for host, up, down in self._sql(
                "SELECT host, up, down FROM uptime WHERE down IS NULL OR down >= ? ORDER BY up", [since]):
            out.setdefault(host, []).append((up, down))
        return out

    def lost_hosts(self, hosts: list[str], before: float) -> dict[str, float]:
        """Those of `hosts` offline since before `before` (no open connected interval): when each went."""
        if not hosts:
            return {}
        return dict(self._sql(f"SELECT host, MAX(down) FROM uptime WHERE host IN ({','.join('?' * len(hosts))}) "
                              "GROUP BY host HAVING SUM(CASE WHEN down IS NULL THEN 1 ELSE 0 END) = 0 AND MAX(down) < ?",
                              [*hosts, before]).fetchall())

    def touch_hosts(self, names: list[str], now: float) -> None:
        self._many("UPDATE hosts SET last_seen = ? WHERE name = ?", [(now, n) for n in names])
