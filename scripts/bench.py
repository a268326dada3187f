"""One benchmark: shellrent (ssh -> broker -> tunnel -> hostd -> container) against what a renter
would otherwise use, OpenSSH's ProxyJump through an OpenSSH sshd to an OpenSSH sshd, side by side on
this machine. Sets up everything itself on free loopback ports in a temp dir (an sshd pair with its
own config and keys; a broker, a hostd and a lease container, not the demo's), runs each case
against both paths alternately and prints one table: median, spread (min-max) and the ratio.

usage: scripts/bench [--quick] [--json FILE] [--cluster]
  --quick      every case with tiny sizes and few runs (a smoke test)
  --json FILE  also write the medians as one JSON object
  --cluster    the cluster cases instead (scripts/bench_cluster.py): a peered session against a direct
               one, the store on PostgreSQL against SQLite, failover after kill -9
"""
import argparse
import asyncio
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncssh

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]
import bench_scale  # noqa: E402
from bench_offers import bench_query  # noqa: E402
from tests.cluster import Cluster, wait_for  # noqa: E402  (the suite's launcher of real processes)

SSHD = "/usr/sbin/sshd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OpenSSH:
    """Two sshd on loopback: the jump host and the target, one user (root), one key."""

    def __init__(self, work: Path, key: Path):
        self.work, self.key = work, key
        self.jump, self.target = free_port(), free_port()
        (work / "authorized_keys").write_text(Path(f"{key}.pub").read_text())
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", work / "hostkey"], check=True)
        Path("/run/sshd").mkdir(exist_ok=True)
        self.procs = []
        for port in (self.jump, self.target):
            conf = work / f"sshd{port}.conf"
            conf.write_text(f"Port {port}\nListenAddress 127.0.0.1\nHostKey {work}/hostkey\n"
                            f"AuthorizedKeysFile {work}/authorized_keys\nPidFile {work}/sshd{port}.pid\n"
                            "PermitRootLogin yes\nStrictModes no\nUsePAM no\nSubsystem sftp internal-sftp\n")
            self.procs.append(subprocess.Popen([SSHD, "-D", "-f", str(conf)]))
        for port in (self.jump, self.target):
            wait_for(lambda: _listening(port), what=f"sshd on {port}")
        (work / "config").write_text(f"Host *\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n"
                                     f"  LogLevel ERROR\n  BatchMode yes\n  IdentityFile {key}\n"
                                     "  IdentitiesOnly yes\n")

    def ssh(self, *command) -> list[str]:
        return ["ssh", "-F", str(self.work / "config"), "-J", f"root@127.0.0.1:{self.jump}", "-p",
                str(self.target), "root@127.0.0.1", *command]

    def sftp(self) -> list[str]:
        return ["sftp", "-F", str(self.work / "config"), "-J", f"root@127.0.0.1:{self.jump}", "-P",
                str(self.target), "-b", "-", "root@127.0.0.1"]

    def close(self):
        for p in self.procs:
            p.terminate()
            p.wait()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def timed(argv: list[str], stdin=None) -> float:
    t = time.perf_counter()
    subprocess.run(argv, stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t


def alternate(runs: int, ours, theirs) -> tuple[list[float], list[float]]:
    """Run both sides alternately (ours first on even runs, theirs on odd), as (ours, theirs) samples."""
    a, b = [], []
    for i in range(runs):
        if i % 2:
            b.append(theirs())
            a.append(ours())
        else:
            a.append(ours())
            b.append(theirs())
    return a, b


async def keystrokes(port: int, key: Path, user: str, n: int, jump: int | None = None) -> list[float]:
    """Round trips of one byte to `cat` on a pty, in ms."""
    opts = dict(known_hosts=None, client_keys=[str(key)], username=user)  # loopback only
    tunnel = await asyncssh.connect("127.0.0.1", jump, **opts) if jump else None
    async with asyncssh.connect("127.0.0.1", port, tunnel=tunnel, **opts) as conn:
        proc = await conn.create_process("stty raw -echo; echo ready; cat", term_type="xterm", encoding=None)
        await proc.stdout.readuntil(b"ready\n")  # nothing typed before the terminal is raw (no echo)
        samples = []
        for _ in range(n):
            t = time.perf_counter()
            proc.stdin.write(b"x")
            await proc.stdout.readexactly(1)
            samples.append((time.perf_counter() - t) * 1000)
        proc.close()
    if tunnel:
        tunnel.close()
    return samples


def p99(xs: list[float]) -> float:
    return sorted(xs)[min(len(xs) - 1, int(len(xs) * 0.99))]


def scale(work: Path, n: int) -> dict:
    """bench_scale's figures for n light hosts and n sessions on a broker of its own; the JSON keys
    say 1000 whatever n is (scale_n says what it was)."""
    c = Cluster(work / "scale", env=bench_scale.ENV)
    try:
        c.start_broker()
        c.broker("renter", "credit", "alice", "100000", "--yes")
        got = asyncio.run(bench_scale.measure(c, c.procs["broker"].pid, n))
    finally:
        c.close()
    return {"scale_n": n, "hosts_1000_rss_mb": got[f"hosts_{n}_rss_mb"], "bytes_per_host": got["bytes_per_host"],
            "sessions_1000_rss_mb": got[f"sessions_{n}_rss_mb"], "bytes_per_session": got["bytes_per_session"],
            "sessions_1000_open_ms": got["session_open_load_ms"], "session_open_idle_ms": got["session_open_idle_ms"],
            "sessions_cpu_pct": got[f"sessions_{n}_cpu_pct"], "ctl_offers_ms": got["ctl_offers_ms"],
            "ctl_offers_after_change_ms": got["ctl_offers_after_change_ms"], "live_offers": got["offers"],
            "scale": got}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--cluster", action="store_true")
    args = ap.parse_args()
    if args.cluster:
        import bench_cluster
        return bench_cluster.main(args.quick, args.json)
    if not Path(SSHD).exists() or not shutil.which("sftp"):
        print("bench: needs openssh-server and openssh-client (scripts/setup.sh installs them)", file=sys.stderr)
        return 2
    size = 8 if args.quick else 1024           # MiB moved per transfer
    runs = 3 if args.quick else 10
    work = Path(tempfile.mkdtemp(prefix="shellrent-bench-"))
    c = Cluster(work / "c", env={"HOSTD_CONTAINER_CHECK": "5"})
    sshj = None
    rows, out = [], {}
    try:
        c.start_broker()
        c.add_host("pc1", {"fake_gpus": "RTX 4090:24", "price": "0.10"})
        c.broker("renter", "credit", "alice", "1000")
        sshj = OpenSSH(work, c.key)
        ours = c.ssh_cmd("rent", "-F", "/dev/null")

        def pair(name, unit, a, b, key, higher_is_better=False):
            ma, mb = statistics.median(a), statistics.median(b)
            ratio = (ma / mb) if mb else float("nan")
            rows.append((name, f"{ma:.2f} ({min(a):.2f}-{max(a):.2f})", f"{mb:.2f} ({min(b):.2f}-{max(b):.2f})",
                         f"{ratio:.2f}", unit))
            out[key], out[f"{key}_sshj"] = round(ma, 3), round(mb, 3)

        # a new lease to the first prompt, the image present
        wait_for(lambda: json.loads(c.ssh("offers", "--json", user="ctl").stdout or b"[]"), what="the offer")
        t = time.perf_counter()
        lid = json.loads(c.ssh("rent", "--hours", "2h", "--yes", "--json", user="ctl", check=True).stdout)["id"]
        c.ssh("true", user=f"rent+{lid}", check=True)
        out["lease_to_prompt_s"] = round(time.perf_counter() - t, 3)
        rows.append(("new lease to first prompt", f"{out['lease_to_prompt_s']:.2f}", "-", "-", "s"))

        a, b = alternate(runs * 3, lambda: timed(ours + ["true"]) * 1000, lambda: timed(sshj.ssh("true")) * 1000)
        pair("ssh ... true", "ms", a, b, "true_ms")

        def fifty(argv):
            t = time.perf_counter()
            procs = []
            for i in range(50):
                procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                if len(procs) >= 10:
                    procs.pop(0).wait()
            for p in procs:
                p.wait()
            return time.perf_counter() - t
        n50 = 1 if args.quick else 3
        a, b = alternate(n50, lambda: fifty(ours + ["true"]), lambda: fifty(sshj.ssh("true")))
        pair("50 x ssh true, 10 at a time", "s", a, b, "true50_s")

        down = f"head -c {size}M /dev/zero"
        a, b = alternate(runs, lambda: size / timed(ours + [down]), lambda: size / timed(sshj.ssh(down)))
        pair(f"download {size} MiB", "MiB/s", a, b, "download_mbps")

        # Per cipher, the renter's hop only (the tunnel is AES-GCM): what a client without AES-GCM gets.
        third = max(1, size // 4)
        for cipher in ("aes128-gcm@openssh.com", "chacha20-poly1305@openssh.com", "aes128-ctr"):
            cmd = f"head -c {third}M /dev/zero"
            mine = c.ssh_cmd("rent", "-F", "/dev/null", "-c", cipher) + [cmd]
            jump = ["ssh", "-c", cipher] + sshj.ssh(cmd)[1:]
            a, b = alternate(max(2, runs // 3), lambda: third / timed(mine), lambda: third / timed(jump))
            pair(f"download {third} MiB, {cipher.split('@')[0]}", "MiB/s", a, b,
                 f"download_{cipher.split('@')[0].replace('-', '_')}_mbps")

        def up(argv):
            with subprocess.Popen(["head", "-c", f"{size}M", "/dev/zero"], stdout=subprocess.PIPE) as src:
                return size / timed(argv + ["cat > /dev/null"], stdin=src.stdout)
        a, b = alternate(runs, lambda: up(ours), lambda: up(sshj.ssh()))
        pair(f"upload {size} MiB", "MiB/s", a, b, "upload_mbps")

        c.ssh(f"head -c {size}M /dev/zero > /workspace/blob", check=True)
        subprocess.run(sshj.ssh(f"head -c {size}M /dev/zero > {work}/jblob"), check=True)
        get_ours = ["sftp", *c.ssh_opts(), "-P", str(c.ssh_port), "-b", "-", "rent@127.0.0.1"]

        def sftp_get(argv, path):
            t = time.perf_counter()
            subprocess.run(argv, input=f"get {path} {work}/got\n".encode(), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, check=True)
            return size / (time.perf_counter() - t)
        a, b = alternate(max(2, runs // 2), lambda: sftp_get(get_ours, "/workspace/blob"),
                         lambda: sftp_get(sshj.sftp(), f"{work}/jblob"))
        pair(f"sftp get {size} MiB", "MiB/s", a, b, "sftp_mbps")

        n = 200 if args.quick else 2000
        a = asyncio.run(keystrokes(c.ssh_port, c.key, "rent", n))
        b = asyncio.run(keystrokes(sshj.target, c.key, "root", n, sshj.jump))
        pair("keystroke round trip, median", "ms", a, b, "rtt_ms")
        rows.append(("keystroke round trip, p99", f"{p99(a):.2f}", f"{p99(b):.2f}", f"{p99(a) / p99(b):.2f}", "ms"))
        out["rtt_p99_ms"], out["rtt_p99_ms_sshj"] = round(p99(a), 3), round(p99(b), 3)

        hosts = 1000 if args.quick else 10_000
        out["offers_10000_query_ms"] = round(bench_query(hosts), 3)
        rows.append((f"{hosts:,} offers: one query", f"{out['offers_10000_query_ms']:.2f}", "-", "-", "ms"))
        n = 50 if args.quick else 1000
        out.update(scale(work, n))
        rows.append((f"{n:,} hosts: broker RSS", f"{out['hosts_1000_rss_mb']:.0f} MiB, "
                     f"{out['bytes_per_host'] / 1024:.0f} KiB/host", "-", "-", "MiB"))
        rows.append((f"{n:,} sessions on them: broker RSS", f"{out['sessions_1000_rss_mb']:.0f} MiB, "
                     f"{out['bytes_per_session'] / 1024:.0f} KiB/session", "-", "-", "MiB"))
        rows.append(("open one session: idle, at that load", f"{out['session_open_idle_ms']:.1f}, "
                     f"{out['sessions_1000_open_ms']:.1f}", "-",
                     f"{out['sessions_1000_open_ms'] / out['session_open_idle_ms']:.2f}", "ms"))
        rows.append(("broker CPU at rest with them", f"{out['sessions_cpu_pct']:.1f}", "-", "-", "%"))
        rows.append((f"ssh ctl@ offers, {out['live_offers']:,} live offers: as is, after a change",
                     f"{out['ctl_offers_ms']:.1f}, {out['ctl_offers_after_change_ms']:.1f}", "-", "-", "ms"))
    finally:
        if sshj:
            sshj.close()
        c.close()
        shutil.rmtree(work, ignore_errors=True)

    head = ("case", "shellrent median (min-max)", "ssh -J median (min-max)", "ratio", "unit")
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(5)]
    for r in [head] + rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip())
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
