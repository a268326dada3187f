"""Protocol-level peers for hostile tests: a host and a broker that speak the real tunnel protocol
(asyncssh reverse SSH, the control channel of shellrent.common.protocol) but do what a test tells them.

FakeHost joins a real broker with a real token and answers its control calls; it accepts every
channel the broker opens and records it, so a test can show what the broker let through. It can
forge events and inventories. FakeBroker accepts a real hostd's connection with the broker's pinned
client key, opens the control channel first, and then lets a test open any channel on that hostd.
"""
import asyncio
import json
import time

import asyncssh

from shellrent.common import protocol
from shellrent.keys import material, tokens

GPU = "GPU-fake-00112233445566778899aabb"


def inventory(**over) -> dict:
    """A valid inventory with one 24 GB GPU at 1 credit per GPU-hour; fields replaced by over."""
    inv = {"gpus": [{"index": 0, "uuid": GPU, "name": "RTX 4090", "memory_gb": 24.0}], "shared": [GPU],
           "gpu_source": "fake", "driver_version": "fake", "cuda_version": 12.2, "cpu_cores": 8, "ram_gb": 32.0,
           "disk_gb": 100, "cpu_per_gpu": 4, "ram_per_gpu": 16.0, "disk_per_gpu": 50, "price": 1_000_000,
           "window": "always", "paused": False, "geolocation": "XX", "images": "*", "version": "fake"}
    inv.update(over)
    return inv


class _HostChannel(asyncssh.SSHServerSession):
    def __init__(self, host: "FakeHost", first: bool):
        self.host, self.first = host, first
        self.record = {"kind": "session", "pty": False, "command": None, "subsystem": None, "signals": []}
        self.chan = None
        self.buf = b""

    def connection_made(self, chan):
        self.chan = chan

    def pty_requested(self, *args):
        self.record["pty"] = True
        return True

    def shell_requested(self):
        return True

    def exec_requested(self, command):
        self.record["command"] = command
        return True

    def subsystem_requested(self, subsystem):
        self.record["subsystem"] = subsystem
        if subsystem == protocol.CONTROL and self.first:
            self.host.control = self
        return True

    def session_started(self):
        if self.host.control is self:
            return
        self.record["env"] = dict(self.chan.get_environment())
        self.host.channels.append(self.record)
        self.chan.write(b"fake host says hi\n")
        self.chan.exit(0)

    def signal_received(self, signal):
        self.record["signals"].append(signal)

    def data_received(self, data, datatype):
        if self.host.control is not self:
            return
        self.buf += data
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            req = json.loads(line)
            asyncio.get_running_loop().create_task(self._answer(req))

    async def _answer(self, req: dict):
        self.host.calls.append(req)
        reply = await self.host.answer(req)
        self.chan.write(json.dumps({**reply, "call": req["call"]}).encode() + b"\n")


class _HostServer(asyncssh.SSHServer):
    def __init__(self, host: "FakeHost"):
        self.host = host
        self.opened = 0

    def begin_auth(self, username):
        return True

    def public_key_auth_supported(self):
        return True

    def validate_public_key(self, username, key):
        return material.fingerprint(key) == self.host.broker_fpr

    def session_requested(self):
        self.opened += 1
        return _HostChannel(self.host, self.opened == 1)

    def connection_requested(self, dest_host, dest_port, orig_host, orig_port):
        self.host.channels.append({"kind": "direct-tcpip", "dest": dest_host, "port": dest_port})
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, "fake host: nothing here")

    def server_requested(self, listen_host, listen_port):
        self.host.channels.append({"kind": "tcpip-forward", "listen": listen_host, "port": listen_port})
        return True


class FakeHost:
    """A host that speaks the protocol and forges what it is told to."""

    def __init__(self, token: str, inv: dict | None = None):
        secret, self.broker_fpr = tokens.split(token)
        self.token = secret
        self.key = asyncssh.generate_private_key("ssh-ed25519")
        self.inventory = inv if inv is not None else inventory()
        self.leases: dict[str, dict] = {}
        self.calls: list[dict] = []
        self.channels: list[dict] = []
        self.control: _HostChannel | None = None
        self.stop_state = "ended"  # what lease.stop answers
        self.start_error: str | None = None
        self.start_reply: dict | None = None  # answer lease.start with this instead
        self.pull_done = asyncio.Event()  # image.pull is answered (with pull_reply) once this is set
        self.pull_reply = {"ok": True}
        self.conn = None
        self.welcomed = asyncio.Event()

    async def connect(self, port: int) -> None:
        self.conn = await asyncssh.connect_reverse(
            "127.0.0.1", port, server_factory=lambda: _HostServer(self), server_host_keys=[self.key],
            encoding=None)
        await asyncio.wait_for(self.welcomed.wait(), 30)

    async def answer(self, req: dict) -> dict:
        op = req["op"]
        if op == "hello":
            token, self.token = self.token, None  # a token is used once
            return {"ok": True, "proto": protocol.PROTO, "token": token, "leases": self.leases,
                    "inventory": self.inventory}
        if op == "welcome":
            self.welcomed.set()
        if op == "lease.start":
            if self.start_error:
                return {"ok": False, "error": self.start_error}
            if self.start_reply is not None:
                return self.start_reply
            self.leases[req["lease"]["id"]] = {"state": "active", "ended_at": None}
            return {"ok": True, "container": "f" * 64}
        if op == "image.pull":
            await self.pull_done.wait()
            return self.pull_reply
        if op == "lease.stop":
            self.leases[req["id"]] = {"state": self.stop_state, "ended_at": time.time()}
            return {"ok": True, "state": self.stop_state, "ended_at": time.time()}
        return {"ok": True}

    def send(self, event) -> None:
        """A raw event line (a dict, or bytes as they are)."""
        data = event if isinstance(event, bytes) else json.dumps(event).encode() + b"\n"
        self.control.chan.write(data)

    def close(self) -> None:
        if self.conn:
            self.conn.close()


class FakeBroker:
    """Accepts a real hostd with the broker's pinned client key; opens control first, then lets a
    test open any channel on that hostd, as a broker that relayed everything would."""

    def __init__(self, client_key_path, epoch: int = 0):
        self.key = asyncssh.read_private_key(str(client_key_path))
        self.epoch = epoch  # the epoch hostd was last welcomed at (it refuses a lower one, or none)
        self.conn: asyncssh.SSHClientConnection | None = None
        self.connected = asyncio.Event()
        self.control = None
        self._acceptor = None

    async def listen(self, port: int) -> None:
        self._acceptor = await asyncssh.listen_reverse(
            "127.0.0.1", port, client_keys=[self.key], known_hosts=None, username="broker",
            acceptor=self._accepted, encoding=None)

    async def _accepted(self, conn):
        self.conn = conn
        self.connected.set()

    async def open_control(self):
        """The control channel, as the real broker opens it: first."""
        self.control = await self.conn.open_session(subsystem=protocol.CONTROL)
        return self.control

    async def call(self, op: str, **args) -> dict:
        """One call; events that come meanwhile are skipped."""
        writer, reader, _ = self.control
        writer.write(protocol.encode({"epoch": self.epoch, **args, "op": op, "call": 1}))
        while True:
            reply = json.loads(await asyncio.wait_for(reader.readline(), 30))
            if "call" in reply:
                return reply

    def close(self) -> None:
        if self.conn:
            self.conn.close()
        if self._acceptor:
            self._acceptor.close()
