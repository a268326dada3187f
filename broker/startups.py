"""Connections still in their handshake or login, bounded on each port: the renter server and the
host tunnel listener each keep one Startups and tell it of every connection's start and login."""
import asyncio
import collections
import ipaddress
import logging
import time

log = logging.getLogger("shellrent.startups")

WAIT_PER_SOURCE = 64   # connections of one source waiting for a slot (a burst of 50 logins fits)
WAIT_TOTAL = 512       # all sources together
WAIT_FOR = 20.0        # seconds a connection may wait for its slot
QUIET = 1.0            # a connection that sent nothing for this long may make room for a newcomer


def source(peer) -> str:
    """Whose connection this is: the address, or its /64 for IPv6 (one host holds a whole /64)."""
    addr = (peer or ("?",))[0]
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return str(addr)
    if ip.version == 6:
        if ip.ipv4_mapped:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def _source(conn) -> str:
    return source(conn.get_extra_info("peername"))


class Startups:
    """Connections not yet authenticated, bounded in total and per source (OpenSSH's MaxStartups and
    PerSourceMaxStartups), so a flood of idle connections costs a bounded amount of memory.

    On the renter port a connection past its source's bound waits for a slot with its banner held
    back (arrive()): at most WAIT_PER_SOURCE of a source and WAIT_TOTAL in all wait, each at most
    WAIT_FOR seconds; a burst of logins from one machine all get in, one slot after another. When
    the total is reached, a connection that has sent nothing for QUIET seconds makes room (the
    longest quiet first, of the source holding the most), so a flood of idle connections from many
    addresses cannot keep a newcomer out, and a slow honest login, which keeps talking, is never
    the one to go. When every connection is talking, the newcomer waits instead."""

    def __init__(self, total: int, per_ip: int):
        self.total, self.per_ip = total, per_ip
        self._by_ip: dict[str, list] = {}  # source -> its unauthenticated connections, oldest first
        self._address: dict = {}  # counted connection -> its source
        self._heard: dict = {}  # counted connection -> when it last sent something
        self._waiting: dict[str, collections.deque] = {}  # source -> (start, abort, timer) waiting for a slot
        self._waiters = 0

    # the renter port's listener, before asyncssh sees the connection
    def arrive(self, peer, start, abort) -> None:
        """A new TCP connection: start() it now if its source has room, else queue it (or abort() it)."""
        ip = source(peer)
        if self._room(ip) and not self._waiting.get(ip):
            start()
            return
        queue = self._waiting.setdefault(ip, collections.deque())
        if len(queue) >= WAIT_PER_SOURCE or self._waiters >= WAIT_TOTAL:
            if not queue:
                del self._waiting[ip]
            log.info("dropping a connection from %s: too many connections waiting to log in", ip)
            abort()
            return
        entry = [start, abort, None]
        entry[2] = asyncio.get_running_loop().call_later(WAIT_FOR, self._expire, ip, entry)
        queue.append(entry)
        self._waiters += 1

    def _room(self, ip: str) -> bool:
        if len(self._by_ip.get(ip, ())) >= self.per_ip:
            return False
        return len(self._address) < self.total or self._quiet_victim() is not None

    def _expire(self, ip: str, entry) -> None:
        queue = self._waiting.get(ip)
        if queue and entry in queue:
            queue.remove(entry)
            self._waiters -= 1
            if not queue:
                del self._waiting[ip]
            log.info("dropping a connection from %s: it waited %.0fs for a login slot", ip, WAIT_FOR)
            entry[1]()

    def _wake(self) -> None:
        """Slots freed: start the waiting connections that fit now, oldest source queue first."""
        for ip in list(self._waiting):
            queue = self._waiting[ip]
            while queue and self._room(ip):
                start, _, timer = queue.popleft()
                self._waiters -= 1
                timer.cancel()
                start()
            if not queue:
                self._waiting.pop(ip, None)

    def heard(self, conn) -> None:
        """The connection sent something (it is talking, not just holding a slot)."""
        if conn in self._heard:
            self._heard[conn] = time.monotonic()

    # asyncssh's side: every port
    def admit(self, conn) -> None:
        """Count a new connection, or drop it at once when its source is at its bound."""
        ip = _source(conn)
        waiting = self._by_ip.get(ip, [])
        if len(waiting) >= self.per_ip:
            log.info("dropping a connection from %s: too many unauthenticated connections", ip)
            asyncio.get_running_loop().call_soon(conn.abort)
            return
        if len(self._address) >= self.total:
            victim = self._quiet_victim() or self._by_ip[max(self._by_ip, key=lambda a: len(self._by_ip[a]))][0]
            self.done(victim, wake=False)
            asyncio.get_running_loop().call_soon(victim.abort)
        self._by_ip.setdefault(ip, []).append(conn)
        self._address[conn] = ip
        self._heard[conn] = time.monotonic()

    def _quiet_victim(self):
        """The connection quiet the longest (QUIET seconds at least), of the source holding the most."""
        cutoff = time.monotonic() - QUIET
        quiet = [c for c, at in self._heard.items() if at <= cutoff]
        if not quiet:
            return None
        return min(quiet, key=lambda c: (-len(self._by_ip[self._address[c]]), self._heard[c]))

    def done(self, conn, wake: bool = True) -> None:
        """The connection authenticated or went away (a no-op if it was not counted)."""
        ip = self._address.pop(conn, None)
        if ip is not None:
            self._heard.pop(conn, None)
            waiting = self._by_ip[ip]
            waiting.remove(conn)
            if not waiting:
                del self._by_ip[ip]
            if wake and self._waiting:
                asyncio.get_running_loop().call_soon(self._wake)
