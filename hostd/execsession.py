"""A renter session as a `docker exec`: its hijacked stream spliced to the SSH channel (hostd.engine),
its exit status asked of the engine, resizes and signals through the engine's exec API. The way in
where a lease's session helper does not answer, and for an ended lease's files."""
import asyncio
import logging
import os
import signal as signals

from . import engine

log = logging.getLogger("shellrent.sessions")


class ExecSession:
    """A session as a `docker exec`, its hijacked stream spliced to the channel (hostd.engine)."""

    via = "docker exec"

    def __init__(self, chan, tty: bool, stdin_full=None):
        self.chan, self.tty = chan, tty
        self._stdin_full = stdin_full
        self.status = 255
        self._stream: engine.ExecStream | None = None
        self._exec_id: str | None = None
        self.done = asyncio.get_running_loop().create_future()

    async def start(self, container: str, argv: list[str], env: dict, size) -> "ExecSession":
        created = await engine.api("POST", f"/containers/{container}/exec", {
            "AttachStdin": True, "AttachStdout": True, "AttachStderr": True, "Tty": self.tty,
            "Cmd": argv, "Env": [f"{k}={v}" for k, v in env.items()], "WorkingDir": "/workspace"})
        self._exec_id = created["Id"]
        self._stream = await engine.exec_start(self._exec_id, self.chan, self.tty, self._stdin_full)
        if self.tty and size:
            await self.resize(*size[:2])
        asyncio.get_running_loop().create_task(self._finish())
        return self

    async def _finish(self):
        await self._stream.done
        for _ in range(200):
            try:
                info = await engine.api("GET", f"/exec/{self._exec_id}/json")
            except (engine.EngineError, OSError, asyncio.TimeoutError):
                break
            if not info["Running"] and info["ExitCode"] is not None:
                self.status = info["ExitCode"]
                break
            await asyncio.sleep(0.01)
        self.done.set_result(None)

    def write(self, data: bytes) -> None:
        self._stream.write(data)

    def write_eof(self) -> None:
        if not self.tty:
            self._stream.write_eof()

    def pause_reading(self) -> None:
        self._stream.transport.pause_reading()

    def resume_reading(self) -> None:
        self._stream.transport.resume_reading()

    async def resize(self, width: int, height: int) -> None:
        try:
            await engine.api("POST", f"/exec/{self._exec_id}/resize", h=height, w=width)
        except (engine.EngineError, OSError, asyncio.TimeoutError) as exc:
            log.debug("resize failed: %s", exc)

    async def signal(self, name: str) -> None:
        try:
            info = await engine.api("GET", f"/exec/{self._exec_id}/json")
            if info.get("Running") and info.get("Pid"):
                os.kill(info["Pid"], getattr(signals, f"SIG{name}"))
        except (engine.EngineError, OSError, asyncio.TimeoutError) as exc:
            log.debug("signal %s failed: %s", name, exc)

    def close(self) -> None:
        if self._stream:
            self._stream.transport.abort()  # as HelperSession.close: unread stdin is not waited for
