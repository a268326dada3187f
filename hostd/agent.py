"""hostd's agent: dials the broker, serves its control calls, runs and ends leases.

The agent keeps its own record of every lease (hostd.store) and ends each one at its time, also
while the broker is unreachable. On start it reconciles the containers labelled as its own with
that record: a container whose lease is still valid is kept (started again if it was stopped).
"""
import asyncio
import json
import logging
import os
import random
import time

import asyncssh

from keys import material, tokens, wire

from .config import Config, write_private
from .runtime import Runtime, RuntimeError_, default_limits
from .sshserver import HostServer, SessionError
from .store import Store

log = logging.getLogger("shellrent.agent")
VERSION = "0.1.0"
CIPHERS = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com"]


class JoinError(Exception):
    """Joining the broker failed; str() is the reason."""


class Agent:
    """One hostd: its key, its broker pin, its leases and its connection state."""

    def __init__(self, config: Config, broker_fingerprint: str, token: str | None = None):
        self.config = config
        self.key = material.load_or_create(config.key_path)
        self.broker_fingerprint = broker_fingerprint
        self._token = token
        self.host_name: str | None = None
        self.joined = asyncio.get_running_loop().create_future()
        self.runtime: Runtime | None = None
        self.store: Store | None = None
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._conn = None
        self._status = {"pid": os.getpid(), "connected": False}

    @property
    def owner(self) -> str:
        return material.fingerprint(self.key).removeprefix("SHA256:")[:16]

    def open_runtime(self) -> None:
        """Docker and the lease record; reconcile, then arm the end of every active lease."""
        self.store = Store(self.config.db_path)
        self.runtime = Runtime(self.owner, default_limits())
        for what in self.runtime.unenforced_limits():
            log.warning("the Docker engine cannot enforce: %s", what)
        self.reconcile()

    def reconcile(self) -> None:
        now = time.time()
        seen = set()
        for c in self.runtime.containers():
            rec = self.store.get(c["lease"])
            seen.add(c["lease"])
            if rec is None and c["ends_at"] > now:
                log.warning("adopting container of unknown lease %s", c["lease"])
                rec = {"id": c["lease"], "renter": "?", "image": "?", "ends_at": c["ends_at"],
                       "state": "active", "container": c["id"], "shell": "/bin/sh"}
                self.store.put(rec)
            if rec is None or rec["state"] != "active" or rec["ends_at"] <= now:
                log.info("lease %s is over: stopping its container", c["lease"])
                self.runtime.stop(c["lease"], self.config.stop_grace)
                if rec:
                    self.store.set_state(rec["id"], "ended")
                continue
            if c["status"] != "running":
                log.info("lease %s: starting its stopped container again", c["lease"])
                self.runtime.ensure_running(c["id"])
        for rec in self.store.active():
            if rec["id"] not in seen:
                log.warning("lease %s has no container any more", rec["id"])
                self.store.set_state(rec["id"], "lost")
            else:
                self._arm(rec)

    def _arm(self, rec: dict) -> None:
        old = self._timers.pop(rec["id"], None)
        if old:
            old.cancel()
        delay = max(0.0, rec["ends_at"] - time.time())
        self._timers[rec["id"]] = asyncio.get_running_loop().call_later(
            delay, lambda: asyncio.ensure_future(self.end_lease(rec["id"])))

    async def end_lease(self, lease_id: str) -> None:
        """Stop a lease's container now (SIGTERM, SIGKILL after the grace); keep its workspace."""
        timer = self._timers.pop(lease_id, None)
        if timer:
            timer.cancel()
        await asyncio.to_thread(self.runtime.stop, lease_id, self.config.stop_grace)
        self.store.set_state(lease_id, "ended")
        log.info("lease %s ended", lease_id)

    # what sessions need
    def session_lease(self, lease_id: str | None) -> dict:
        rec = self.store.get(lease_id) if lease_id else None
        if not rec or rec["state"] != "active":
            raise SessionError(f"lease {lease_id} is not running on this host")
        return rec

    async def container_pid(self, lease_id: str) -> int:
        rec = self.session_lease(lease_id)
        return await asyncio.to_thread(self.runtime.pid, rec["container"])

    # control calls from the broker
    async def control(self, req: dict) -> dict:
        op = req.get("op")
        if op == "hello":
            leases = [r["id"] for r in self.store.active()] if self.store else []
            return {"ok": True, "proto": wire.PROTO, "version": VERSION, "token": self._token, "leases": leases}
        if op == "welcome":
            self.host_name = req["host"]
            self._set_status(connected=True, host=self.host_name, since=time.time(), error=None)
            if not self.joined.done():
                self.joined.set_result(self.host_name)
            return {"ok": True}
        if op == "reject":
            self._set_status(connected=False, error=req.get("error"))
            if not self.joined.done():
                self.joined.set_exception(JoinError(req.get("error") or "the broker refused this host"))
            return {"ok": True}
        if op == "lease.start":
            return await self._start(req["lease"])
        if op == "lease.stop":
            if not self.store.get(req["id"]):
                return {"ok": False, "error": f"no lease {req['id']} on this host"}
            await self.end_lease(req["id"])
            return {"ok": True}
        return {"ok": False, "error": f"unknown op {op!r}"}

    async def _start(self, lease: dict) -> dict:
        if self.store.get(lease["id"]):
            return {"ok": False, "error": f"lease {lease['id']} already exists on this host"}
        try:
            container, shell = await asyncio.to_thread(self.runtime.start, lease)
        except RuntimeError_ as exc:
            return {"ok": False, "error": str(exc)}
        rec = {**{k: lease[k] for k in ("id", "renter", "image", "ends_at")}, "state": "active",
               "container": container, "shell": shell}
        self.store.put(rec)
        self._arm(rec)
        log.info("lease %s started for %s (container %s)", lease["id"], lease["renter"], container[:12])
        return {"ok": True, "container": container}

    # connection
    def connection_made(self, conn) -> None:
        self._conn = conn

    async def connect(self, host: str, port: int) -> asyncssh.SSHServerConnection:
        return await asyncio.wait_for(asyncssh.connect_reverse(
            host, port, server_factory=lambda: HostServer(self), server_host_keys=[self.key],
            encoding=None, line_editor=False, encryption_algs=CIPHERS, x11_forwarding=False,
            agent_forwarding=False, allow_scp=False, keepalive_interval=self.config.keepalive,
            keepalive_count_max=3, login_timeout=30, server_version="shellrent-hostd"), 30)

    async def run_forever(self, host: str, port: int) -> None:
        """Stay connected: reconnect after any drop, exponential backoff with full jitter."""
        attempt = 0
        while True:
            try:
                conn = await self.connect(host, port)
            except (OSError, asyncssh.Error, asyncio.TimeoutError) as exc:
                self._set_status(connected=False, error=f"connect failed: {exc or type(exc).__name__}")
            else:
                await conn.wait_closed()
                if self._status.get("connected"):
                    attempt = 0
                self._set_status(connected=False, error="connection closed")
            delay = random.uniform(0, min(self.config.backoff_max, self.config.backoff_base * 2 ** attempt))
            attempt = min(attempt + 1, 30)
            log.info("reconnecting to %s:%d in %.1fs", host, port, delay)
            await asyncio.sleep(delay)

    def _set_status(self, **fields) -> None:
        self._status.update(fields, updated=time.time())
        write_private(self.config.status_path, json.dumps(self._status))


async def join(config: Config, host: str, port: int, token: str) -> str:
    """Register this machine with the broker once; returns the host name the broker gave it."""
    try:
        secret, fpr = tokens.split(token)
    except tokens.TokenError as exc:
        raise JoinError(str(exc)) from None
    if config.load_pin():
        raise JoinError(f"{config.home} has already joined a broker; use a new --home to join again")
    agent = Agent(config, fpr, token=secret)
    try:
        conn = await agent.connect(host, port)
    except asyncio.TimeoutError:
        raise JoinError(f"no broker answered at {host}:{port} (timed out)") from None
    except (OSError, asyncssh.Error) as exc:
        raise JoinError(f"cannot join the broker at {host}:{port}: {exc}") from None
    try:
        name = await asyncio.wait_for(asyncio.shield(agent.joined), 30)
    except asyncio.TimeoutError:
        raise JoinError(f"the server at {host}:{port} did not complete the join (is it a shellrent broker?)") from None
    finally:
        conn.close()
    config.save_pin({"addr": [host, port], "fingerprint": fpr, "host": name})
    return name
