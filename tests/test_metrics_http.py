"""The metrics endpoint never costs its process much: capped connections, one shared refresh, errors and
hangs answered with 500, and the endpoint stays up."""
import asyncio

from prometheus_client import CollectorRegistry, Counter

from shellrent.common import metrics


async def _get(port: int, path: str = "/metrics") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    return data


async def _serve(refresh=None):
    registry = CollectorRegistry()
    Counter("shellrent_test_things", "things", registry=registry).inc(3)
    server = await metrics.serve("127.0.0.1", 0, registry, refresh)
    return server, server.sockets[0].getsockname()[1]


async def test_one_refresh_serves_the_scrapes_that_come_together():
    calls = []

    async def refresh():
        calls.append(1)
        await asyncio.sleep(0.2)
    server, port = await _serve(refresh)
    try:
        answers = await asyncio.gather(*(_get(port) for _ in range(10)))
        assert all(a.startswith(b"HTTP/1.0 200 OK") and b"shellrent_test_things_total 3.0" in a for a in answers)
        assert len(calls) == 1
        assert (await _get(port, "/healthz")).endswith(b"\r\n\r\nok\n")
        assert b"404" in (await _get(port, "/etc/passwd")).split(b"\r\n")[0]
    finally:
        server.close()


async def test_a_refresh_that_fails_or_hangs_is_a_500_and_the_endpoint_lives_on(monkeypatch):
    monkeypatch.setattr(metrics, "REFRESH_TIMEOUT", 0.3)
    monkeypatch.setattr(metrics, "FRESH", 0.0)
    mode = {"now": "fail"}

    async def refresh():
        if mode["now"] == "fail":
            raise RuntimeError("the store is gone")
        if mode["now"] == "hang":
            await asyncio.sleep(3600)
    server, port = await _serve(refresh)
    try:
        assert (await _get(port)).startswith(b"HTTP/1.0 500")
        mode["now"] = "hang"
        assert (await _get(port)).startswith(b"HTTP/1.0 500")
        assert (await _get(port, "/healthz")).startswith(b"HTTP/1.0 200")
    finally:
        server.close()


async def test_idle_connections_make_room_for_a_scraper_and_never_lock_it_out():
    server, port = await _serve()
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(metrics.CONNECTIONS)]
    try:
        assert (await asyncio.wait_for(_get(port), 2)).startswith(b"HTTP/1.0 200")  # the oldest idle one made room
        assert await asyncio.wait_for(idle[0][0].read(), 2) == b""
        idle[0][1].close()
        for r, w in idle[1:]:
            assert await asyncio.wait_for(r.read(), metrics.HEAD_TIMEOUT + 2) == b""  # the head never came
            w.close()
        assert (await _get(port)).startswith(b"HTTP/1.0 200")  # and the slots are free again
    finally:
        server.close()


async def _pests(port: int, count: int, source: str, pause: float):
    """count idle connections from source, each redialled pause seconds after the server closes it."""
    stop = asyncio.Event()

    async def pest():
        while not stop.is_set():
            reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
            try:
                await asyncio.wait_for(reader.read(), 3)
            except (asyncio.TimeoutError, OSError):
                pass
            finally:
                writer.close()
            await asyncio.sleep(pause)
    tasks = [asyncio.ensure_future(pest()) for _ in range(count)]

    async def end():
        stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(metrics.HEAD_TIMEOUT + 0.3)  # the server's side of each is closed by then
    return end


async def test_idle_connections_redialled_all_the_time_leave_every_scrape_answered(monkeypatch):
    """The attack: 16 idle connections redialled at once (from another address), or every 0.1 s from the
    scraper's own; every scrape is answered."""
    monkeypatch.setattr(metrics, "HEAD_TIMEOUT", 0.5)
    server, port = await _serve()
    try:
        for count, source, pause in ((2 * metrics.CONNECTIONS, "127.0.0.2", 0.0),
                                     (metrics.CONNECTIONS, "127.0.0.1", 0.1)):
            end = await _pests(port, count, source, pause)
            try:
                await asyncio.sleep(0.3)
                answers = [await asyncio.wait_for(_get(port), 2) for _ in range(20)]
                assert all(a.startswith(b"HTTP/1.0 200") for a in answers), (source, answers)
            finally:
                await end()
    finally:
        server.close()
