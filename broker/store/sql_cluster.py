"""The brokers of one database and which of them drives each host: broker rows with a heartbeat and
host-owner rows with an expiry and an epoch, all stamped on the database's clock (db_time), so that
brokers whose clocks disagree still agree on who is alive and who owns what."""
from .records import BrokerRow, Owner


class Cluster:
    """Shared SQL of the brokers and host_owners tables (? placeholders)."""

    def register_broker(self, broker: str, ssh: str, tunnel: str, peer: str, peer_key: str) -> float:
        """Write (or rewrite) this broker's row, alive from now; the database's time."""
        with self.tx():
            now = self.db_time()
            self._sql("DELETE FROM brokers WHERE id = ?", [broker])
            self._insert("brokers", {"id": broker, "ssh": ssh, "tunnel": tunnel, "peer": peer, "peer_key": peer_key,
                                     "started": now, "heartbeat": now, "draining": 0})
        return now

    def beat(self, broker: str, ttl: float, draining: bool = False, hosts=()) -> tuple[float, set[str]]:
        """A broker's heartbeat: its row, and the rows of the hosts whose tunnels it holds (hosts),
        are alive for ttl more seconds. A row of this broker for a host it no longer holds (its
        disconnect was not recorded) is released and that host's uptime closed when last seen. The
        database's time, and the hosts it still owns (a host another broker took is not among them)."""
        hosts = list(hosts)
        held = f"host IN ({', '.join('?' * len(hosts))})" if hosts else "1 = 0"
        with self.tx():
            now = self.db_time()
            self._sql("UPDATE brokers SET heartbeat = ?, draining = ? WHERE id = ?", [now, int(draining), broker])
            owned = {r[0] for r in self._sql(
                f"UPDATE host_owners SET expires = ? WHERE broker = ? AND expires > ? AND {held} RETURNING host",
                [now + ttl, broker, now, *hosts]).fetchall()}
            gone = [r[0] for r in self._sql(
                f"UPDATE host_owners SET broker = '', expires = 0 WHERE broker = ? AND NOT ({held}) RETURNING host",
                [broker, *hosts]).fetchall()]
            self._close_uptimes(gone)
        return now, owned

    def _close_uptimes(self, hosts: list[str]) -> None:
        self._many("UPDATE uptime SET down = (SELECT last_seen FROM hosts WHERE name = uptime.host) "
                   "WHERE down IS NULL AND host = ?", [(h,) for h in hosts])

    def brokers(self, ttl: float) -> list[BrokerRow]:
        """The brokers heard from within ttl seconds (database time), oldest first."""
        return self._rows("SELECT * FROM brokers WHERE heartbeat > ? ORDER BY started, id",
                          [self.db_time() - ttl])

    def publish_sessions(self, broker: str, counts: dict[str, int]) -> None:
        """The renters' open sessions and forwards on this broker, as the others count them against
        each renter's limit."""
        with self.tx():
            self._sql("DELETE FROM renter_sessions WHERE broker = ?", [broker])
            self._many("INSERT INTO renter_sessions (broker, renter, n) VALUES (?, ?, ?)",
                       [(broker, r, n) for r, n in counts.items() if n > 0])

    def sessions_elsewhere(self, broker: str, ttl: float) -> dict[str, int]:
        """Each renter's open sessions and forwards on the other live brokers."""
        return {r: int(n) for r, n in self._sql(
            "SELECT s.renter, SUM(s.n) FROM renter_sessions s JOIN brokers b ON b.id = s.broker "
            "WHERE s.broker <> ? AND b.heartbeat > ? GROUP BY s.renter", [broker, self.db_time() - ttl]).fetchall()}

    def drop_broker(self, broker: str) -> None:
        """A broker leaves: its row and its hosts go (their hosts move to the others)."""
        with self.tx():
            self._sql("DELETE FROM renter_sessions WHERE broker = ?", [broker])
            gone = [r[0] for r in self._sql("UPDATE host_owners SET broker = '', expires = 0 WHERE broker = ? "
                                            "RETURNING host", [broker]).fetchall()]
            self._close_uptimes(gone)  # hosts whose disconnect it did not get to record
            self._sql("DELETE FROM brokers WHERE id = ?", [broker])

    def own_host(self, host: str, broker: str, ttl: float, above: int = 0) -> int:
        """The broker that holds a host's tunnel drives it from now on: a higher epoch than any
        before (a host's row is never deleted, so its epochs only grow), and above the one the host
        says it last saw (a database restored from a backup has older epochs), which the host holds
        every later call to."""
        with self.tx():
            now = self.db_time()
            return self._sql(
                "INSERT INTO host_owners (host, broker, epoch, expires) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (host) DO UPDATE SET broker = excluded.broker, expires = excluded.expires, "
                "epoch = CASE WHEN host_owners.epoch >= excluded.epoch THEN host_owners.epoch + 1 "
                "ELSE excluded.epoch END RETURNING epoch",
                [host, broker, max(1, above + 1), now + ttl]).fetchall()[0][0]

    def reclaim_host(self, host: str, broker: str, ttl: float) -> int | None:
        """A host whose tunnel is still here but whose row lapsed (the database was away longer than
        ttl): this broker drives it again at a new epoch, unless another broker took it meanwhile.
        An uptime closed meanwhile opens again."""
        with self.tx():
            now = self.db_time()
            row = self._sql("SELECT broker, expires FROM host_owners WHERE host = ?" + self.LOCK_ROW,
                            [host]).fetchone()
            if row is None or (row[0] not in (broker, "") and row[1] > now):
                return None
            if row[0] == "":  # another broker closed its uptime when the row lapsed
                self.host_up(host, now)
            return self._sql("UPDATE host_owners SET broker = ?, epoch = epoch + 1, expires = ? WHERE host = ? "
                             "RETURNING epoch", [broker, now + ttl, host]).fetchall()[0][0]

    def disown_host(self, host: str, broker: str, epoch: int, at: float | None = None) -> bool:
        """The host's tunnel to this broker closed (at `at`): no broker drives it, and its uptime ends
        then, unless another broker (or a later connection here) owns it since. One transaction."""
        with self.tx():
            if not self._sql("UPDATE host_owners SET broker = '', expires = 0 "
                             "WHERE host = ? AND broker = ? AND epoch = ? RETURNING host",
                             [host, broker, epoch]).fetchall():
                return False
            if at is not None:
                self.host_down(host, at)
        return True

    def host_owner(self, host: str) -> Owner | None:
        """Who drives a host now (an unexpired row of a live broker), with its peer address and key."""
        now = self.db_time()
        rows = self._rows("SELECT o.host, o.broker, o.epoch, o.expires, b.peer, b.peer_key FROM host_owners o "
                          "JOIN brokers b ON b.id = o.broker WHERE o.host = ? AND o.expires > ?", [host, now])
        return rows[0] if rows else None

    def owners(self) -> dict[str, Owner]:
        """Every host some broker drives now, with that broker's peer address and key."""
        return {r["host"]: r for r in self._rows(
            "SELECT o.host, o.broker, o.epoch, o.expires, b.peer, b.peer_key FROM host_owners o "
            "JOIN brokers b ON b.id = o.broker WHERE o.expires > ?", [self.db_time()])}

    def online_hosts(self) -> set[str]:
        """Hosts whose tunnel some broker holds now."""
        return {r[0] for r in self._sql("SELECT host FROM host_owners WHERE expires > ?", [self.db_time()])}

    def owned_elsewhere(self, broker: str) -> set[str]:
        """Hosts that another broker drives now: this broker leaves their records alone."""
        return {r[0] for r in self._sql("SELECT host FROM host_owners WHERE broker <> ? AND expires > ?",
                                        [broker, self.db_time()])}

    def close_uptimes(self, broker: str | None = None) -> None:
        """An interval left open by a broker that stopped (this one, or one whose rows expired) ended
        when the host was last seen; hosts another broker drives now are left alone."""
        with self.tx():
            now = self.db_time()
            self._sql("UPDATE uptime SET down = (SELECT last_seen FROM hosts WHERE name = uptime.host) "
                      "WHERE down IS NULL AND host NOT IN "
                      "(SELECT host FROM host_owners WHERE broker <> ? AND expires > ?)", [broker or "", now])
            self._sql("UPDATE host_owners SET broker = '', expires = 0 WHERE broker = ? OR expires <= ?",
                      [broker or "", now])

    def expire_owners(self) -> list[str]:
        """Hosts whose broker stopped renewing them (it died, or lost the database) and that no broker
        took since: their open uptime ends when they were last seen. Done once, by whichever broker
        runs it first (the rows are marked as the intervals are closed)."""
        with self.tx():
            hosts = [r[0] for r in self._sql("UPDATE host_owners SET broker = '', expires = 0 "
                                             "WHERE broker <> '' AND expires <= ? RETURNING host",
                                             [self.db_time()]).fetchall()]
            self._close_uptimes(hosts)
        return hosts
