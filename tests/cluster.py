"""A real broker + hostd (+ Docker) on this machine, driven through their CLIs, for end-to-end tests."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncssh

BIN = Path(sys.executable).parent
IMAGE = os.environ.get("SHELLRENT_IMAGE", "shellrent-base:bookworm")


def wait_for(predicate, timeout: float = 30, what: str = "condition"):
    """Poll predicate until it returns something truthy; fail with `what` after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def rss_mb(pid: int) -> float:
    """A process's resident memory now, in MiB."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def run(*args, check=True, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("capture_output", True)
    kw.setdefault("timeout", 120)
    proc = subprocess.run([str(a) for a in args], **kw)
    if check and proc.returncode:
        raise AssertionError(f"{args} exited {proc.returncode}: {proc.stderr!r}")
    return proc


def _lease_ids(home: Path) -> list[str]:
    """The leases a hostd home's store knows."""
    import sqlite3
    try:
        conn = sqlite3.connect(f"file:{home / 'hostd.db'}?mode=ro", uri=True)
    except sqlite3.Error:
        return []
    try:
        return [row[0] for row in conn.execute("SELECT id FROM leases")]
    except sqlite3.Error:
        return []
    finally:
        conn.close()


class Cluster:
    """Broker home, one renter key, a broker process and (optionally) hostd processes."""

    def __init__(self, root: Path, env: dict | None = None, init=(), renter: bool = True):
        self.root = root
        self.bhome = root / "broker"
        self.env = {**os.environ, "HOSTD_BACKOFF_BASE": "0.2", "HOSTD_BACKOFF_MAX": "1",
                    "HOSTD_KEEPALIVE": "5", **(env or {})}
        self.procs: dict[str, subprocess.Popen] = {}
        self.hostd_homes: dict[str, Path] = {}
        self.tunnel_port = 0
        self.ssh_port = 0
        self.broker("init", *init)
        self.key = self.new_key("alice")
        if renter:
            self.broker("renter", "add", "alice", "--key", f"{self.key}.pub")

    # processes
    def broker(self, *args, check=True, **kw):
        return run(BIN / "broker", "--home", self.bhome, *args, check=check, env=self.env, **kw)

    def hostd(self, name: str, *args, check=True, **kw):
        return run(BIN / "hostd", "--home", self.root / f"hostd-{name}", *args, check=check, env=self.env, **kw)

    def _spawn(self, key: str, argv: list) -> None:
        with open(self.root / f"{key}.log", "ab") as log:
            self.procs[key] = subprocess.Popen([str(a) for a in argv], stdout=log, stderr=log, env=self.env,
                                               start_new_session=True)

    def start_broker(self, *extra) -> None:
        serve = self.bhome / "serve.json"
        serve.unlink(missing_ok=True)
        self._spawn("broker", [BIN / "broker", "--home", self.bhome, "serve", "--ssh", "127.0.0.1:0",
                               "--tunnel", f"127.0.0.1:{self.tunnel_port}", *extra])
        info = self.info = wait_for(lambda: serve.exists() and serve.read_text() and json.loads(serve.read_text()),
                                    what="broker to listen")
        self.ssh_port, self.tunnel_port = info["ssh"][1], info["tunnel"][1]
        host_key = asyncssh.read_private_key(str(self.bhome / "ssh_host_ed25519_key"))
        (self.root / "known_hosts").write_text(
            f"[127.0.0.1]:{self.ssh_port} {host_key.export_public_key().decode()}")

    def kill(self, key: str, sig=signal.SIGKILL) -> None:
        proc = self.procs.pop(key)
        proc.send_signal(sig)
        proc.wait(timeout=30)

    def add_host(self, name: str, settings: dict | None = None) -> None:
        token = self.broker("host", "invite", name).stdout.decode().strip().splitlines()[-1]
        self.hostd(name, "join", f"127.0.0.1:{self.tunnel_port}", token)
        self.hostd_homes[name] = self.root / f"hostd-{name}"
        for key, value in {"grace": "2s", **(settings or {})}.items():
            self.hostd(name, "config", "set", key, value)
        self.start_hostd(name)

    def start_hostd(self, name: str, *extra) -> None:
        self._spawn(f"hostd-{name}", [BIN / "hostd", "--home", self.hostd_homes[name], "run", *extra])
        self.wait_connected(name)

    def wait_connected(self, name: str) -> None:
        wait_for(lambda: json.loads(self.hostd(name, "status", "--json").stdout)["connected"],
                 what=f"hostd {name} to connect")

    def create_lease(self, host: str = "pc1", renter: str = "alice", hours: float = 2) -> str:
        out = self.broker("lease", "create", "--renter", renter, "--host", host, "--hours", hours,
                          "--image", IMAGE, "--json")
        return json.loads(out.stdout)["id"]

    def new_key(self, name: str) -> Path:
        path = self.root / f"{name}_key"
        if not path.exists():
            run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", path)
        return path

    # the renter's OpenSSH client
    def ssh_opts(self, key: Path | None = None) -> list[str]:
        return ["-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={self.root / 'known_hosts'}",
                "-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR",
                "-i", str(key or self.key)]

    def ssh_cmd(self, user: str = "rent", *args, key: Path | None = None) -> list[str]:
        return ["ssh", "-p", str(self.ssh_port), *self.ssh_opts(key), *args, f"{user}@127.0.0.1"]

    def ssh(self, *command, user: str = "rent", opts=(), key=None, check=False, **kw):
        return run(*self.ssh_cmd(user, *opts, key=key), *command, check=check, **kw)

    def ssh_e(self) -> str:
        """The -e argument for rsync."""
        return "ssh -p %d %s" % (self.ssh_port, " ".join(self.ssh_opts()))

    # teardown
    def containers(self) -> list[str]:
        out = run("docker", "ps", "-aq", "--filter", "label=shellrent.lease").stdout.decode().split()
        mine = []
        for home in self.hostd_homes.values():
            owner = _owner(home)
            mine += run("docker", "ps", "-aq", "--filter", f"label=shellrent.hostd={owner}").stdout.decode().split()
        return [c for c in out if c in mine]

    def close(self) -> None:
        for key in list(self.procs):
            proc = self.procs.pop(key)
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()  # reaped here, never left for the garbage collector to find running
        for home in self.hostd_homes.values():
            for lid in _lease_ids(home):  # a capped lease's IFB device (hostd.shaping) outlives its bridge
                run("ip", "link", "del", f"sri-{lid}"[:15], check=False)
            for mount in (home / "workspaces").glob("*"):
                if os.path.ismount(mount):  # a lease's sized /workspace (hostd.disk)
                    run("umount", "-l", mount, check=False)
            label = f"label=shellrent.hostd={_owner(home)}"
            for kind in ("container", "network", "volume"):
                ids = run("docker", kind, "ls", "-q", "--filter", label, check=False).stdout.decode().split()
                if ids:
                    run("docker", kind, "rm", *(["-f"] if kind != "network" else []), *ids, check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def owner(self, name: str) -> str:
        return _owner(self.hostd_homes[name])

    def hostd_log_time(self, text: str, name: str = "pc1") -> float:
        """When hostd logged a line containing text (epoch seconds)."""
        import datetime
        for line in self.log(f"hostd-{name}").splitlines():
            if text in line:
                stamp = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
                return stamp.timestamp()
        raise AssertionError(f"hostd never logged {text!r}")

    def record_ledger(self, ledger: dict) -> None:
        """Keep one lease life's ledger for the closing note (printed with -s)."""
        print("\nLEDGER OF ONE LEASE LIFE:", json.dumps(ledger, indent=1))

    def log(self, key: str) -> str:
        return (self.root / f"{key}.log").read_text(errors="replace")


def _owner(home: Path) -> str:
    key = asyncssh.read_private_key(str(home / "hostd_ed25519_key"))
    return key.get_fingerprint("sha256").removeprefix("SHA256:")[:16]
