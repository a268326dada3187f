"""The operator's admin socket: CLI commands that need the running broker (they talk to hosts).

A Unix socket inside the broker home (0600); one JSON request line, one JSON reply line.
"""
import asyncio
import json
import logging
import os
import socket
from pathlib import Path

from .errors import BrokerError

log = logging.getLogger("shellrent.admin")


class AdminServer:
    """Serves lease.create and lease.stop for `broker lease ...`."""

    def __init__(self, path: Path, broker):
        self._path = path
        self._broker = broker
        self._server = None

    async def start(self) -> None:
        self._path.unlink(missing_ok=True)
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._handle, str(self._path))
        finally:
            os.umask(old)

    async def _handle(self, reader, writer):
        try:
            req = json.loads(await reader.readline())
            reply = {"ok": True, **await self._dispatch(req)}
        except BrokerError as exc:
            reply = {"ok": False, "error": str(exc)}
        except Exception as exc:
            log.exception("admin request failed")
            reply = {"ok": False, "error": f"internal error: {exc}"}
        writer.write(json.dumps(reply).encode() + b"\n")
        await writer.drain()
        writer.close()

    async def _dispatch(self, req: dict) -> dict:
        op = req.get("op")
        if op == "lease.create":
            lease = await self._broker.create_lease(req["renter"], req["host"], float(req["hours"]), req["image"])
            return {"lease": lease}
        if op == "lease.stop":
            return {"lease": await self._broker.release(None, req["id"])}
        if op == "credit":
            return {"balance": await self._broker.accounts.add_credit(req["renter"], int(req["amount"]))}
        raise BrokerError(f"unknown admin op {op!r}")

    def close(self) -> None:
        if self._server:
            self._server.close()
        self._path.unlink(missing_ok=True)


def request(path: Path, req: dict, timeout: float = 300) -> dict:
    """Send one request to the running broker (blocking); BrokerError with its message on failure."""
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(timeout)
            s.connect(str(path))
            s.sendall(json.dumps(req).encode() + b"\n")
            data = s.makefile("rb").readline()
    except (FileNotFoundError, ConnectionRefusedError):
        raise BrokerError(f"the broker is not running (no {path}); start `broker serve` first") from None
    except OSError as exc:
        raise BrokerError(f"talking to the broker failed: {exc}") from None
    reply = json.loads(data)
    if not reply.get("ok"):
        raise BrokerError(reply.get("error", "request failed"))
    return reply
