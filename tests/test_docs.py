"""The guides' commands run as written: every fenced block marked `sh test` in docs/renter.md,
docs/provider.md and docs/operator.md runs, in order, in bash against a real broker and hostd on free
ports, so that a guide that drifts from the code fails here.

A block runs in a mount namespace of its own whose ~/.ssh (OpenSSH reads it from the user's home,
never $HOME) is the test's, with the guide's placeholders (a lease id, a voucher code, a
join token) replaced by the real ones, as the guides tell their readers to do."""
import json
import os
import pwd
import re
import subprocess
import textwrap
from pathlib import Path

import pytest

from .cluster import BIN, Cluster, wait_for

pytestmark = pytest.mark.docker

DOCS = Path(__file__).resolve().parent.parent / "docs"
FENCE = re.compile(r"^( *)```sh test\n(.*?)^\1```", re.M | re.S)
LEASE, VOUCHER = "3f9a0c1e", "CR-7KQ2-M4ZD-WQ3B-H5NA"
# The one stand-in: the guides run the broker's commands as its own user (`runuser -u shellrent --`),
# which the test machine does not have; here they run as the test's user.
PRELUDE = 'runuser() { while [ "$1" != "--" ]; do shift; done; shift; "$@"; }\n'



def blocks(guide: str) -> list[str]:
    return [textwrap.dedent(m.group(2)) for m in FENCE.finditer((DOCS / guide).read_text())]


class Reader:
    """A reader of one guide: a home of its own, a working directory, the words to replace."""

    def __init__(self, root: Path, env: dict):
        self.home, self.cwd = root / "home", root / "work"
        (self.home / ".ssh").mkdir(parents=True, mode=0o700)
        self.cwd.mkdir()
        self.env = {**env, "PATH": f"{BIN}:{os.environ['PATH']}"}
        self.words: dict[str, str] = {}
        self.ran: list[tuple[str, str]] = []

    def run(self, code: str) -> subprocess.CompletedProcess:
        for placeholder, real in self.words.items():
            code = code.replace(placeholder, real)
        mine = Path(pwd.getpwuid(os.getuid()).pw_dir) / ".ssh"
        mine.mkdir(mode=0o700, exist_ok=True)  # the mount point; what is in it stays untouched
        r = subprocess.run(
            ["unshare", "-m", "bash", "-c", 'mount --bind "$1" "$2" && cd "$3" && exec bash -euo pipefail -c "$4"',
             "doc", self.home / ".ssh", mine, self.cwd, PRELUDE + code],
            env=self.env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"this block of the guide failed ({r.returncode}):\n{code}\n{r.stdout}\n{r.stderr}"
        self.ran.append((code, r.stdout))
        return r


def test_the_renter_guide_runs_as_written(tmp_path):
    c = Cluster(tmp_path / "c", env={"BROKER_SIGNUP": "open"}, renter=False)
    try:
        c.start_broker()
        c.add_host("pc1", {"fake_gpus": "RTX 4090:24,RTX 4090:24"})
        c.broker("renter", "add", "probe", "--key", f"{c.key}.pub")
        wait_for(lambda: c.ssh("offers", "--json", user="ctl", check=True).stdout != b"[]\n", what="the offers")
        reader = Reader(tmp_path / "r", c.env)
        key = reader.home / ".ssh" / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
        (reader.home / ".ssh" / "config").write_text(  # section 2's entry, and this test answers "yes" itself
            f"Host broker\n    HostName 127.0.0.1\n    Port {c.ssh_port}\n\n"
            "Host *\n    StrictHostKeyChecking accept-new\n    BatchMode yes\n")
        (reader.cwd / "model.pt").write_bytes(os.urandom(4096))
        (reader.cwd / "data").mkdir()
        (reader.cwd / "data" / "train.txt").write_text("x\n")
        reader.words[VOUCHER] = c.broker("voucher", "create", "20").stdout.decode().strip()
        steps = blocks("renter.md")
        assert len(steps) >= 8
        for code in steps:
            if "results.csv" in code and LEASE not in reader.words:
                raise AssertionError("the guide copies files before it rents")
            if "results.csv" in code and not (reader.cwd / "results.csv").exists():
                reader.run("ssh rent@broker 'echo r > /workspace/results.csv; mkdir -p /workspace/out; "
                           "echo o > /workspace/out/o.txt'")  # what a renter's job would have written
            reader.run(code)
            if " --yes" in code and LEASE not in reader.words:
                reader.words[LEASE] = json.loads(c.broker("lease", "list", "--json").stdout)[0]["id"]
        leases = json.loads(c.broker("lease", "list", "--json").stdout)
        # the first lease released, its workspace taken by a later one; the auto-extended one runs on
        assert sorted((x["renter"], x["state"], x["reason"] or "-") for x in leases) == [
            ("alice", "active", "-"), ("alice", "active", "-"), ("alice", "purged", "released")]
        assert (reader.cwd / "results.csv").read_text() == "r\n" and (reader.cwd / "out" / "o.txt").exists()
        shown = [out for code, out in reader.ran if "show " in code][0]
        assert "it was released" in shown and "cost" in shown
        for lease in leases:
            if lease["state"] == "active":
                c.broker("lease", "stop", lease["id"])
        ledger = json.loads(c.broker("ledger", "--json").stdout)["balances"]
        assert sum(ledger.values()) == 0 and ledger.get("hold:alice", 0) == 0
    finally:
        c.close()


def test_the_operator_guide_runs_as_written(tmp_path):
    c = Cluster(tmp_path / "c", renter=False)
    try:
        c.start_broker()
        reader = Reader(tmp_path / "o", {**c.env, "BROKER_HOME": str(c.bhome)})
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", reader.cwd / "alice"], check=True)
        steps = blocks("operator.md")
        assert len(steps) >= 6
        for code in steps:
            out = reader.run(code).stdout
            if "host invite pc1" in code:  # the provider's side of it
                c.hostd("pc1", "join", f"127.0.0.1:{c.tunnel_port}", out.strip().splitlines()[-1])
                c.hostd_homes["pc1"] = c.root / "hostd-pc1"
                c.start_hostd("pc1")
        ran = dict(reader.ran)
        assert any(line.startswith("renter alice: +25.00 credits") for out in ran.values() for line in out.splitlines())
        vouchers = [out for code, out in reader.ran if "voucher create" in code][0]
        assert len(re.findall(r"^CR-[A-Z2-7]{4}(?:-[A-Z2-7]{4}){3}$", vouchers, re.M)) == 5
        leases = json.loads(c.broker("lease", "list", "--json").stdout)
        assert [(x["renter"], x["host"], x["state"], x["reason"]) for x in leases] == [("alice", "pc1", "ended", "stopped")]
        wait_for(lambda: not c.containers(), what="the stopped lease's container to go")
    finally:
        c.close()


def test_the_provider_guide_runs_as_written(tmp_path):
    c = Cluster(tmp_path / "c")
    hostd = None
    try:
        c.start_broker()
        token = c.broker("host", "invite", "pc1").stdout.decode().strip().splitlines()[-1]
        home = tmp_path / "hostd-home"
        reader = Reader(tmp_path / "p", {**c.env, "HOSTD_HOME": str(home)})
        reader.words.update({"broker.example.org:2223": f"127.0.0.1:{c.tunnel_port}", "TOKEN": token})
        steps = blocks("provider.md")
        assert len(steps) >= 5
        for code in steps:
            if "hostd status" in code and hostd is None:  # section 7: `hostd run` (a service, or in a terminal)
                subprocess.run([BIN / "hostd", "config", "set", "fake_gpus", "RTX 4090:24"], env=reader.env,
                               check=True, capture_output=True)  # no NVIDIA GPU on the test machine
                with open(tmp_path / "hostd.log", "ab") as log:
                    hostd = subprocess.Popen([BIN / "hostd", "run"], env=reader.env, stdout=log, stderr=log,
                                             start_new_session=True)
                wait_for(lambda: json.loads(subprocess.run([BIN / "hostd", "status", "--json"], env=reader.env,
                                                           capture_output=True).stdout or "{}").get("connected"),
                         what="hostd to connect")
            reader.run(code)
        out = [out for code, out in reader.ran if "status --json" in code][0]
        status = json.loads(next(line for line in out.splitlines() if line.startswith('{"joined"')))
        assert status["connected"] and status["host"] == "pc1" and status["paused"] is False
        assert "host pc1 at broker 127.0.0.1:" in out and "its containers carry the label shellrent.hostd=" in out
        (host,) = json.loads(c.broker("host", "list", "--json").stdout)
        assert host["name"] == "pc1" and host["joined"]
        assert "192.168.1.50" in [out for code, out in reader.ran if "firewall show" in code][0]
    finally:
        if hostd:
            hostd.terminate()
            hostd.wait(30)
        c.close()
