"""What renter sessions need of hostd: the lease a session runs in (an ended lease's files during its
retention), its container's pid for port forwards, the sessions open per lease and opening the process."""
import asyncio
import time

from shellrent.common import protocol

from . import offload, spawn
from .pacing import Pacing
from .runtime import RuntimeError_

MAX_SESSIONS = 256  # open sessions per lease (the broker allows a renter 64 in all; this backs it up)


class SessionError(Exception):
    """A renter session cannot start; str() goes to the renter's stderr."""


class SessionHost:
    def __init__(self, store, runtime, leases, sessions: spawn.Sessions, settings, pacing=None):
        self._store = store
        self._runtime = runtime
        self._leases = leases
        self._sessions = sessions
        self._settings = settings
        self.pacing = pacing or Pacing()  # hostd.pacing: the relayed traffic's per-lease buckets

    async def lease(self, lease_id: str | None, files_only: bool = False) -> dict:
        """The lease record a session runs in; an ended lease serves its files during retention."""
        try:
            rec = self._store.get(protocol.lease_id(lease_id))
        except protocol.WireError:
            raise SessionError("this session names no valid lease") from None
        deadline = time.monotonic() + self._settings()["grace"] + 30
        while files_only and rec and rec["state"] == "ending" and time.monotonic() < deadline:
            await asyncio.sleep(0.1)  # its processes are being stopped; the files come right after
            rec = self._store.get(lease_id)
        if rec and rec["state"] == "active":
            return rec
        if rec and rec["state"] == "ended" and rec.get("ws_to"):
            raise SessionError(f"the files of lease {lease_id} moved to lease {rec['ws_to']}")
        if rec and rec["state"] == "ended" and files_only:
            try:
                container = await offload.call(self._runtime.files_container, rec, timeout=offload.START)
            except (RuntimeError_, asyncio.TimeoutError) as exc:
                raise SessionError(f"the lease's files cannot be served now: {exc or 'timed out'}") from None
            return {**rec, "container": container, "shell": "/bin/sh"}
        state = rec["state"] if rec else "unknown"
        raise SessionError(f"lease {lease_id} is {state} on this host")

    async def container_pid(self, lease_id: str) -> int:
        rec = await self.lease(lease_id)
        try:
            return await offload.call(self._runtime.pid, rec["container"], timeout=offload.QUICK)
        except (RuntimeError_, asyncio.TimeoutError) as exc:
            raise SessionError(f"the container did not answer: {exc or 'timed out'}") from None

    def join(self, lease_id: str, session) -> None:
        """Count a session in its lease (it hears the lease's warnings and its end); at most MAX_SESSIONS."""
        if len(self._leases.sessions.get(lease_id, ())) >= MAX_SESSIONS:
            raise SessionError(f"this lease has {MAX_SESSIONS} sessions open on this host, the most it may")
        self._leases.track(lease_id, session)

    def leave(self, lease_id: str, session) -> None:
        self._leases.untrack(lease_id, session)

    async def open(self, rec: dict, chan, argv: list[str], env: dict, tty: bool, size, stdin_full):
        """The session's process: in a running lease through its helper (hostd.spawn), in an ended
        lease's files container as a `docker exec`."""
        if rec["state"] == "active":
            return await self._sessions.open(rec, chan, argv, env, tty, size, stdin_full)
        return await spawn.ExecSession(chan, tty, stdin_full).start(rec["container"], argv, env, size)
