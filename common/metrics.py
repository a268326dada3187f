"""The /metrics and /healthz endpoint of `broker serve --metrics` and `hostd run --metrics`.

A small asyncio HTTP/1.0 server: GET /metrics answers Prometheus' text format from a registry (after
`refresh`, an async callable that updates gauges read from state), GET /healthz answers "ok". Off
unless asked for; meant for 127.0.0.1 or a private network (it has no authentication), and it never
costs its process much: at most CONNECTIONS at a time, a request's head within HEAD_TIMEOUT, one
refresh at a time, shared by the scrapes within FRESH seconds, and a refresh that takes longer than
REFRESH_TIMEOUT answers 500. Idle connections never lock a scraper out: a newcomer at the bound closes
the oldest connection still waiting for its head, of the address with the most such connections, so
a scraper that sends its request at once is answered however many idle ones are redialled.
"""
import asyncio
import logging
import time

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

log = logging.getLogger("shellrent.metrics")
MAX_REQUEST = 8192
CONNECTIONS = 16
HEAD_TIMEOUT = 2.0
FRESH = 5.0
REFRESH_TIMEOUT = 5.0


class _Shared:
    """One refresh at a time; scrapes within FRESH seconds of its start share it (and its error)."""

    def __init__(self, refresh):
        self._refresh = refresh
        self._task: asyncio.Future | None = None
        self._at = 0.0

    async def __call__(self) -> None:
        if self._task is None or (self._task.done() and time.monotonic() - self._at >= FRESH):
            self._at = time.monotonic()
            self._task = asyncio.ensure_future(self._refresh())
            self._task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved: no warning
        await asyncio.wait_for(asyncio.shield(self._task), REFRESH_TIMEOUT)


async def serve(host: str, port: int, registry, refresh=None, ready=None) -> asyncio.AbstractServer:
    """Listen on host:port (0: any free port); returns the server (its port: .sockets[0]). /healthz
    answers 503 while ready() is false (a broker draining: a load balancer sends no one new)."""
    shared = _Shared(refresh) if refresh else None
    active = 0
    waiting: dict[asyncio.StreamWriter, str] = {}  # no head yet, oldest first
    evicted: set[asyncio.StreamWriter] = set()  # closed to make room, counted out already

    def make_room() -> bool:
        """At the bound, close the oldest connection waiting for its head of the client with the most waiting."""
        nonlocal active
        if active < CONNECTIONS:
            return True
        if not waiting:
            return False
        clients = list(waiting.values())
        crowded = max(set(clients), key=clients.count)
        victim = next(w for w, c in waiting.items() if c == crowded)
        del waiting[victim]
        victim.close()
        evicted.add(victim)
        active -= 1
        return True

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal active
        client = (writer.get_extra_info("peername") or ("?",))[0]
        if not make_room():
            writer.close()
            return
        active += 1
        waiting[writer] = client
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
            waiting.pop(writer, None)
            method, path, *_ = head.decode("latin-1").split(" ", 2) + ["", ""]
            status, kind, body = await _answer(method, path, registry, shared, ready)
            writer.write(f"HTTP/1.0 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
                         "Connection: close\r\n\r\n".encode() + body)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, OSError):
            pass
        finally:
            waiting.pop(writer, None)
            if writer in evicted:
                evicted.discard(writer)
            else:
                active -= 1
            writer.close()

    return await asyncio.start_server(handle, host, port, limit=MAX_REQUEST)


async def _answer(method: str, path: str, registry, shared, ready=None) -> tuple[str, str, bytes]:
    if method != "GET":
        return "405 Method Not Allowed", "text/plain", b"GET only\n"
    if path == "/healthz":
        if ready and not ready():
            return "503 Service Unavailable", "text/plain", b"draining\n"
        return "200 OK", "text/plain", b"ok\n"
    if path.split("?")[0] != "/metrics":
        return "404 Not Found", "text/plain", b"/metrics or /healthz\n"
    try:
        if shared:
            await shared()
    except Exception as exc:  # the state could not be read: say so, and stay up
        log.warning("metrics: reading the state failed: %s", exc or type(exc).__name__)
        return "500 Internal Server Error", "text/plain", b"reading the state failed; see the log\n"
    return "200 OK", CONTENT_TYPE_LATEST, generate_latest(registry)
