"""Scale on one broker process: N connected hosts and N open renter sessions.

The hosts are light: all of them live in this process, but each dials the broker over its own TCP
connection and speaks the real tunnel protocol (SSH with hostd as the server, the control channel,
hello with a join token, lease.start), and serves each renter session by holding it open. Renters
are asyncssh clients, one SSH connection per session, through the broker's renter port. Reported:
the broker's RSS and CPU at rest (from /proc), bytes per host and per session, and the time to open
one more session (connect, authenticate, reach the host, run a command, exit) idle and at load.
"""
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

import asyncssh

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shellrent.broker import hosts  # noqa: E402
from shellrent.broker.config import Config  # noqa: E402
from shellrent.broker.store import Store  # noqa: E402
from shellrent.common import protocol  # noqa: E402
from shellrent.keys import material  # noqa: E402

# What a bench broker needs to hold one renter's many leases and sessions (its limits are per renter).
ENV = {"BROKER_MAX_LEASES": "5000", "BROKER_SESSIONS_PER_RENTER": "5000", "BROKER_MAX_STARTUPS": "200",
       "BROKER_MAX_STARTUPS_PER_IP": "50", "BROKER_HOUSEKEEPING": "2"}
AT_ONCE = 20  # connections opened at a time


MODELS = [("RTX 3060", 12), ("RTX 3090", 24), ("RTX 4090", 24), ("L4", 24), ("A10", 24), ("L40S", 48),
          ("A6000", 48), ("A100", 80), ("H100", 80), ("H200", 141)]


def _inventory(i: int) -> dict:
    """Ten GPUs of ten models: ten offers per host, 10,000 on 1,000 hosts."""
    gpus = [{"index": j, "uuid": f"GPU-bench{i:08d}-{j}", "name": name, "memory_gb": mem}
            for j, (name, mem) in enumerate(MODELS)]
    return {"gpus": gpus, "shared": [g["uuid"] for g in gpus], "gpu_source": "fake", "driver_version": "550",
            "cuda_version": 12.4,
            "cpu_cores": 16, "ram_gb": 64, "disk_gb": 1000, "cpu_per_gpu": 16, "ram_per_gpu": 64,
            "disk_per_gpu": 1000, "price": 100_000, "window": "always", "paused": False, "geolocation": "",
            "images": "*", "version": "bench"}


class _Session(asyncssh.SSHServerSession):
    """The control channel (first) or a renter session (held open; a command exits 0 at once)."""

    def __init__(self, host: "LightHost", control: bool):
        self._host, self._control, self._chan, self._buf = host, control, None, b""

    def connection_made(self, chan):
        self._chan = chan

    def subsystem_requested(self, subsystem):
        return self._control and subsystem == protocol.CONTROL

    def exec_requested(self, command):
        return not self._control

    def shell_requested(self):
        return not self._control

    def session_started(self):
        if not self._control and self._chan.get_command() is not None:
            self._chan.exit(0)

    def data_received(self, data, datatype):
        if not self._control:
            return
        self._buf += data
        while b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            req = json.loads(line)
            self._chan.write(protocol.encode({**self._host.answer(req), "call": req["call"]}))


class LightHost(asyncssh.SSHServer):
    def __init__(self, index: int, token: str):
        self.index, self.token, self.opened = index, token, 0

    def begin_auth(self, username):
        return True

    def public_key_auth_supported(self):
        return True

    def validate_public_key(self, username, key):
        return True

    def session_requested(self):
        self.opened += 1
        return _Session(self, self.opened == 1)

    def answer(self, req: dict) -> dict:
        if req["op"] == "hello":
            return {"ok": True, "proto": protocol.PROTO, "version": "bench", "token": self.token, "leases": {},
                    "inventory": _inventory(self.index), "time": time.time()}
        if req["op"] == "lease.start":
            return {"ok": True, "container": f"{self.index:064x}"}
        return {"ok": True}


def _proc(pid: int) -> tuple[float, float]:
    """(RSS in MiB, CPU seconds so far) of a process."""
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return rss, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _gather(coros, at_once: int = AT_ONCE) -> list:
    sem = asyncio.Semaphore(at_once)

    async def one(coro):
        async with sem:
            return await coro
    return await asyncio.gather(*(one(c) for c in coros))


class Scale:
    def __init__(self, cluster, broker_pid: int, store=None, prefix: str = "b"):
        self.c, self.pid, self.prefix = cluster, broker_pid, prefix  # host names: prefix + number
        self.hosts: list = []
        self.renters: list = []
        self.rented = 0
        cfg = Config(home=cluster.bhome)
        self._store, self._cfg = store or Store(cfg.db_path), cfg
        self._fpr = material.fingerprint(material.load_or_create(cfg.client_key_path))
        self._key = asyncssh.read_private_key(str(cluster.key))

    async def add_hosts(self, n: int) -> None:
        first = len(self.hosts)

        async def one(i):
            token = hosts.invite(self._store, self._cfg, f"{self.prefix}{i}", self._fpr).split(".")[0]  # hostd sends the secret
            conn = await asyncssh.connect_reverse(
                "127.0.0.1", self.c.tunnel_port, server_factory=lambda: LightHost(i, token),
                server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")], encoding=None,
                keepalive_interval=0, server_version="shellrent-bench-host")
            self.hosts.append(conn)
        await _gather(one(i) for i in range(first, first + n))
        want = len(MODELS) * (first + n) - self.rented  # a rented GPU is not on offer
        await self._until(lambda offers: len(offers) >= want, f"{want} offers")

    async def _until(self, done, what: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while True:
            offers = json.loads(await self.ctl("offers --json -o dph"))
            if done(offers):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}: {len(offers)} offers")
            await asyncio.sleep(0.5)

    async def _connect(self, user: str) -> asyncssh.SSHClientConnection:
        return await asyncssh.connect("127.0.0.1", self.c.ssh_port, username=user, client_keys=[self._key],
                                      known_hosts=None, encoding=None)

    async def ctl(self, command: str) -> str:
        async with await self._connect("ctl") as conn:
            out = await conn.run(command, check=True)
            return out.stdout.decode()

    async def rent(self, host: int) -> str:
        self.rented += 1
        return json.loads(await self.ctl(f"rent host_id={self.prefix}{host} gpu_name=RTX_3060 --hours 1 --yes --json"))["id"]

    async def open_sessions(self, leases: list[str], n: int) -> None:
        async def one(lease):
            conn = await self._connect(f"rent+{lease}")
            chan, _ = await conn.create_session(asyncssh.SSHClientSession, encoding=None)
            self.renters.append((conn, chan))
        await _gather(one(leases[i % len(leases)]) for i in range(n))

    async def one_session_ms(self, lease: str, runs: int = 10) -> float:
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            async with await self._connect(f"rent+{lease}") as conn:
                await conn.run("true", check=True)
            times.append((time.perf_counter() - t) * 1000)
        return statistics.median(times)

    async def offers_ms(self, change: bool, runs: int = 5) -> float:
        """The whole `ssh ctl@broker offers` with OpenSSH's client, as the market is (or right after a
        change, which makes the broker build it again)."""
        times = []
        for i in range(runs):
            if change:
                lease = await self.rent(len(self.hosts) - 1 - i)
                await self.ctl(f"release {lease}")
            t = time.perf_counter()
            proc = await asyncio.create_subprocess_exec(*self.c.ssh_cmd("ctl", "-F", "/dev/null"), "offers",
                                                        stdout=asyncio.subprocess.DEVNULL)
            if await proc.wait():
                raise RuntimeError("ssh ctl@ offers failed")
            times.append((time.perf_counter() - t) * 1000)
        return statistics.median(times)

    async def at_rest(self, seconds: float = 5) -> tuple[float, float]:
        """(RSS MiB, CPU %) of the broker over a quiet spell."""
        _, cpu0 = _proc(self.pid)
        await asyncio.sleep(seconds)
        rss, cpu1 = _proc(self.pid)
        return rss, 100 * (cpu1 - cpu0) / seconds

    async def close(self) -> None:
        for conn, _ in self.renters:
            conn.close()
        for conn in self.hosts:
            conn.close()
        self._store.close()


async def measure(cluster, broker_pid: int, n: int) -> dict:
    """The scale figures for n hosts and n sessions (in two halves, to show the growth is linear)."""
    s = Scale(cluster, broker_pid)
    out = {}
    try:
        rss0, cpu0 = await s.at_rest(2)
        await s.add_hosts(1)
        first = await s.rent(0)
        out["session_open_idle_ms"] = round(await s.one_session_ms(first), 1)
        half = n // 2
        await s.add_hosts(half - 1)
        rss_half, _ = await s.at_rest(2)
        await s.add_hosts(n - half)
        rss_hosts, cpu_hosts = await s.at_rest(5)
        out["offers"] = len(json.loads(await s.ctl("offers --json")))
        out["ctl_offers_ms"] = round(await s.offers_ms(change=False), 1)
        out["ctl_offers_after_change_ms"] = round(await s.offers_ms(change=True), 1)
        leases = [first] + await _gather(s.rent(i) for i in range(1, max(1, n // 4)))
        await s.open_sessions(leases, half)
        rss_s_half, _ = await s.at_rest(2)
        await s.open_sessions(leases, n - half)
        rss_all, cpu_all = await s.at_rest(5)
        out["session_open_load_ms"] = round(await s.one_session_ms(first), 1)
        out.update({
            "broker_idle_rss_mb": round(rss0, 1), "broker_idle_cpu_pct": round(cpu0, 1),
            "hosts": n, "hosts_half_rss_mb": round(rss_half, 1), f"hosts_{n}_rss_mb": round(rss_hosts, 1),
            f"hosts_{n}_cpu_pct": round(cpu_hosts, 1),
            "bytes_per_host": round((rss_hosts - rss0) * 1048576 / n),
            "bytes_per_host_second_half": round((rss_hosts - rss_half) * 1048576 / (n - half)),
            "sessions": n, "leases": len(leases), f"sessions_{n}_rss_mb": round(rss_all, 1),
            f"sessions_{n}_cpu_pct": round(cpu_all, 1),
            "bytes_per_session": round((rss_all - rss_hosts) * 1048576 / n),
            "bytes_per_session_second_half": round((rss_all - rss_s_half) * 1048576 / (n - half)),
        })
    finally:
        await s.close()
    return out


if __name__ == "__main__":
    import shutil
    import tempfile

    from tests.cluster import Cluster
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    work = Path(tempfile.mkdtemp(prefix="shellrent-scale-"))
    c = Cluster(work, env=ENV)
    try:
        c.start_broker()
        c.broker("renter", "credit", "alice", "100000", "--yes")
        print(json.dumps(asyncio.run(measure(c, c.procs["broker"].pid, n)), indent=1))
    finally:
        if os.environ.get("SCALE_LOG"):
            print("\n".join(x for x in (work / "broker.log").read_text().splitlines() if "audit" not in x)[-3000:],
                  file=sys.stderr)
        c.close()
        shutil.rmtree(work, ignore_errors=True)
