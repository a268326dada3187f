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
TICK = 0.1             # how often the waiting connections look for a slot


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


def _sent(entry) -> bool:
    try:
        return bool(entry[3]())
    except Exception:  # the socket is gone: it has nothing to say
        return False


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
    the one to go. When every connection is talking, the newcomer waits instead. While anyone
    waits, newcomers queue behind them (a flood cannot jump the queue), a waiter whose client has
    already sent its version line goes first, and at WAIT_TOTAL a waiter that has sent nothing is
    dropped for the newcomer."""

    def __init__(self, total: int, per_ip: int):
        self.total, self.per_ip = total, per_ip
        self._by_ip: dict[str, list] = {}  # source -> its unauthenticated connections, oldest first
        self._address: dict = {}  # counted connection -> its source
        self._heard: dict = {}  # counted connection -> when it last sent something
        self._waiting: list[list] = []  # [source, start, abort, sent, timer], oldest first
        self._per_source: collections.Counter = collections.Counter()  # source -> how many wait
        self._tick: asyncio.TimerHandle | None = None

    # the renter port's listener, before asyncssh sees the connection
    def arrive(self, peer, start, abort, sent=lambda: True) -> None:
        """A new TCP connection: start() it now if there is room and nobody waits, else queue it (or
        abort() it). sent() says whether the client has sent anything yet (its bytes wait in the kernel)."""
        ip = source(peer)
        if not self._waiting and self._room(ip):
            start()
            return
        if self._per_source[ip] >= WAIT_PER_SOURCE or (len(self._waiting) >= WAIT_TOTAL and not self._make_room()):
            log.info("dropping a connection from %s: too many connections waiting to log in", ip)
            abort()
            return
        entry = [ip, start, abort, sent, None]
        entry[4] = asyncio.get_running_loop().call_later(WAIT_FOR, self._expire, entry)
        self._waiting.append(entry)
        self._per_source[ip] += 1
        self._wake()

    def _room(self, ip: str) -> bool:
        return len(self._by_ip.get(ip, ())) < self.per_ip and self._total_room()

    def _total_room(self) -> bool:
        return len(self._address) < self.total or self._quiet_victim() is not None

    def _unqueue(self, entry) -> None:
        self._waiting.remove(entry)
        entry[4].cancel()
        self._per_source[entry[0]] -= 1
        if not self._per_source[entry[0]]:
            del self._per_source[entry[0]]

    def _make_room(self) -> bool:
        """At WAIT_TOTAL: the oldest waiter that has sent nothing, of the source with the most waiting,
        is dropped for the newcomer; False when every waiter is talking."""
        idle = [e for e in self._waiting if not _sent(e)]
        if not idle:
            return False
        _, victim = max(enumerate(idle), key=lambda p: (self._per_source[p[1][0]], -p[0]))
        self._unqueue(victim)
        log.info("dropping a connection from %s: it sent nothing while it waited for a login slot", victim[0])
        victim[2]()
        return True

    def _expire(self, entry) -> None:
        if entry in self._waiting:
            self._unqueue(entry)
            log.info("dropping a connection from %s: it waited %.0fs for a login slot", entry[0], WAIT_FOR)
            entry[2]()

    def _wake(self) -> None:
        """Start the waiting connections that fit now: those whose client has already talked first, then
        the rest, oldest first each. While some still wait, look again in a moment (a connection going
        quiet makes room without telling anyone)."""
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None
        for entry in sorted(self._waiting, key=lambda e: not _sent(e)):
            if not self._total_room():
                break  # nobody fits: the rest need not be looked at (a flood keeps hundreds waiting)
            if len(self._by_ip.get(entry[0], ())) < self.per_ip:
                self._unqueue(entry)
                entry[1]()
        if self._waiting:
            self._tick = asyncio.get_running_loop().call_later(TICK, self._wake)

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
