"""The /metrics and /healthz endpoint of `broker serve --metrics` and `hostd run --metrics`.

A small asyncio HTTP/1.0 server: GET /metrics answers Prometheus' text format from a registry (after
`refresh`, an async callable that updates gauges read from state), GET /healthz answers "ok". Off
unless asked for; meant for 127.0.0.1 or a private network (it has no authentication).
"""
import asyncio
import logging

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

log = logging.getLogger("shellrent.metrics")
MAX_REQUEST = 8192


async def serve(host: str, port: int, registry, refresh=None) -> asyncio.AbstractServer:
    """Listen on host:port (0: any free port); returns the server (its port: .sockets[0])."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            method, path, *_ = head[:MAX_REQUEST].decode("latin-1").split(" ", 2) + ["", ""]
            if method != "GET":
                status, kind, body = "405 Method Not Allowed", "text/plain", b"GET only\n"
            elif path.split("?")[0] == "/metrics":
                if refresh:
                    await refresh()
                status, kind, body = "200 OK", CONTENT_TYPE_LATEST, generate_latest(registry)
            elif path == "/healthz":
                status, kind, body = "200 OK", "text/plain", b"ok\n"
            else:
                status, kind, body = "404 Not Found", "text/plain", b"/metrics or /healthz\n"
            writer.write(f"HTTP/1.0 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
                         "Connection: close\r\n\r\n".encode() + body)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, OSError):
            pass
        except Exception:  # a refresh that broke: the endpoint stays up
            log.exception("metrics request")
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port, limit=MAX_REQUEST)
