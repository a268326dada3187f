"""Connections still in their handshake or login, bounded on each port: the renter server and the
host tunnel listener each keep one Startups and tell it of every connection's start and login."""
import asyncio
import logging

log = logging.getLogger("shellrent.startups")


def _ip(conn) -> str:
    return (conn.get_extra_info("peername") or ("?",))[0]


class Startups:
    """Connections not yet authenticated, bounded in total and per source address (OpenSSH's
    MaxStartups and PerSourceMaxStartups), so a flood of idle connections costs a bounded amount
    of memory. A new connection from an address at its bound is dropped at once; when the total
    is reached, the oldest waiting connection of the address holding the most makes room, so a
    flood from many addresses cannot keep a newcomer out."""

    def __init__(self, total: int, per_ip: int):
        self.total, self.per_ip = total, per_ip
        self._by_ip: dict[str, list] = {}  # address -> its unauthenticated connections, oldest first
        self._address: dict = {}  # counted connection -> its address

    def admit(self, conn) -> None:
        """Count a new connection, or drop it at once when its address is at its bound."""
        ip = _ip(conn)
        waiting = self._by_ip.get(ip, [])
        if len(waiting) >= self.per_ip:
            log.info("dropping a connection from %s: too many unauthenticated connections", ip)
            asyncio.get_running_loop().call_soon(conn.abort)
            return
        if len(self._address) >= self.total:
            crowded = max(self._by_ip, key=lambda a: len(self._by_ip[a]))
            victim = self._by_ip[crowded][0]
            self.done(victim)
            asyncio.get_running_loop().call_soon(victim.abort)
        self._by_ip.setdefault(ip, []).append(conn)
        self._address[conn] = ip

    def done(self, conn) -> None:
        """The connection authenticated or went away (a no-op if it was not counted)."""
        ip = self._address.pop(conn, None)
        if ip is not None:
            waiting = self._by_ip[ip]
            waiting.remove(conn)
            if not waiting:
                del self._by_ip[ip]
