"""Host tunnels: accept hostd's outbound TCP connection and run SSH over it as the client.

The broker pins each host by the hostd host key it saw at join time; an unknown key gets only the
hello exchange, where it must present a valid join token.
"""
import asyncio
import logging
import time
from typing import Awaitable, Callable

import asyncssh

from keys import material, wire

from .errors import Unavailable

log = logging.getLogger("shellrent.tunnels")

TUNNEL_CIPHERS = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com"]


class HostLink:
    """One connected host: its name and its SSH connection."""

    def __init__(self, name: str, conn: asyncssh.SSHClientConnection):
        self.name = name
        self.conn = conn
        self.since = time.time()

    async def call(self, op: str, timeout: float = 120, **args) -> dict:
        """One control call; raises Unavailable with hostd's message when it fails."""
        return await call(self.conn, op, timeout, **args)


async def call(conn: asyncssh.SSHClientConnection, op: str, timeout: float = 120, **args) -> dict:
    """Send one control request on conn and return the reply."""
    try:
        writer, reader, _ = await conn.open_session(subsystem=wire.CONTROL, encoding=None)
        writer.write(wire.encode({"op": op, **args}))
        writer.write_eof()
        line = await asyncio.wait_for(reader.readline(), timeout)
        writer.close()
        reply = wire.decode(line)
    except (OSError, asyncssh.Error, asyncio.TimeoutError, ValueError) as exc:
        raise Unavailable(f"host did not answer {op}: {exc or type(exc).__name__}") from None
    if not reply.get("ok"):
        raise Unavailable(reply.get("error") or f"host refused {op}")
    return reply


class _TunnelClient(asyncssh.SSHClient):
    def validate_host_public_key(self, host, addr, port, key):
        # Every key may finish the handshake; Tunnels._accepted then demands a pinned key or a
        # valid join token before the connection is used for anything.
        return True


Identify = Callable[[asyncssh.SSHClientConnection, asyncssh.SSHKey, dict], Awaitable[str]]


class Tunnels:
    """Listener for hostd connections and the registry of connected hosts."""

    def __init__(self, client_key: asyncssh.SSHKey, identify: Identify, keepalive: float = 15,
                 connected=None, disconnected=None):
        self._key = client_key
        self._identify = identify
        self._connected = connected  # async (link, hello) -> None, after welcome
        self._disconnected = disconnected  # async (name) -> None
        self._keepalive = keepalive
        self.links: dict[str, HostLink] = {}
        self._acceptor = None

    async def listen(self, host: str, port: int) -> int:
        """Start accepting host connections; returns the bound port."""
        self._acceptor = await asyncssh.listen_reverse(
            host, port, client_factory=_TunnelClient, client_keys=[self._key],
            known_hosts=lambda h, a, p: ([], [], []), username="broker",
            encryption_algs=TUNNEL_CIPHERS, keepalive_interval=self._keepalive,
            keepalive_count_max=3, acceptor=self._accepted, error_handler=self._failed)
        return self._acceptor.get_port()

    def get(self, name: str) -> HostLink | None:
        link = self.links.get(name)
        return link if link and not link.conn.is_closed() else None

    def _failed(self, conn, exc):
        log.info("host connection failed before use: %s", exc)

    async def _accepted(self, conn: asyncssh.SSHClientConnection) -> None:
        peer = conn.get_extra_info("peername")
        key = conn.get_server_host_key()
        try:
            hello = await call(conn, "hello", timeout=30)
            if hello.get("proto") != wire.PROTO:
                raise Unavailable(f"unsupported protocol version {hello.get('proto')}")
            name = await self._identify(conn, key, hello)
        except Exception as exc:  # any failure: say why, then drop the connection
            log.warning("host %s (%s) refused: %s", peer, material.fingerprint(key), exc)
            try:
                await call(conn, "reject", timeout=10, error=str(exc))
            except Unavailable:
                pass
            conn.close()
            return
        old = self.links.get(name)
        self.links[name] = HostLink(name, conn)
        if old and old.conn is not conn:
            old.conn.close()
        log.info("host %s connected from %s", name, peer)
        await call(conn, "welcome", timeout=30, host=name)
        asyncio.get_running_loop().create_task(self._watch(name, conn))
        if self._connected:
            try:
                await self._connected(self.links[name], hello)
            except Exception:
                log.exception("host %s: after-connect work failed", name)

    async def _watch(self, name: str, conn: asyncssh.SSHClientConnection) -> None:
        await conn.wait_closed()
        if self.links.get(name) and self.links[name].conn is conn:
            del self.links[name]
            log.info("host %s disconnected", name)
            if self._disconnected:
                await self._disconnected(name)

    async def close(self) -> None:
        if self._acceptor:
            self._acceptor.close()
        for link in list(self.links.values()):
            link.conn.close()
