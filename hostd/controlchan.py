"""hostd's control channel: the broker's calls in (one JSON line each, shellrent.common.protocol),
answered concurrently, and the replies and events back on the same channel."""
import asyncio
import logging

import asyncssh

from shellrent.common import protocol

log = logging.getLogger("shellrent.sessions")


class ControlChannel:
    """The control side of one channel; control is hostd.control's Control."""

    def __init__(self, chan, control):
        self._chan = chan
        self._control = control
        self._buf = b""
        self._calls: set[asyncio.Task] = set()

    def data(self, data: bytes) -> None:
        self._buf += data
        while b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            if line.strip():
                task = asyncio.get_running_loop().create_task(self._call(line))
                self._calls.add(task)
                task.add_done_callback(self._calls.discard)
        if len(self._buf) > protocol.MAX_LINE:
            log.warning("control line from the broker too long: closing the connection")
            self._chan.get_extra_info("connection").close()

    async def _call(self, line: bytes) -> None:
        call_id = None
        try:
            req = protocol.decode(line)
            call_id = req.get("call")
            reply = await self._control.call(req, self)
        except (protocol.WireError, KeyError, TypeError, ValueError) as exc:
            reply = {"ok": False, "error": f"bad control call: {exc}"}
        except Exception as exc:
            log.exception("control call failed")
            reply = {"ok": False, "error": str(exc)}
        try:
            self._chan.write(protocol.encode({**reply, "call": call_id}))
        except (OSError, asyncssh.Error):
            pass  # the broker went away

    def send(self, event: dict) -> None:
        """An event to the broker."""
        self._chan.write(protocol.encode(event))

    def closed(self) -> None:
        self._control.detach(self)  # calls under way finish; their replies go nowhere
