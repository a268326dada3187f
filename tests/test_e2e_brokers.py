"""Two brokers on one PostgreSQL database (serve --peer): a renter through broker B works on a host
whose tunnel is on broker A (shell and exit status, scp both ways, -L, extend, release), the host
moves to B within 10 s of A's kill -9 and the renter logs in again; two renters racing for the last
GPU through the two brokers: one lease, one clear line, no charge for the other; three brokers
behind HAProxy (a short lease there settles once); a broker paused past its expiry; PostgreSQL
stopped and started; SIGTERM drains."""
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from shellrent.broker.store.postgres import Store as PgStore

from .cluster import Cluster, run, wait_for
from .conftest import _require_docker

pytestmark = pytest.mark.docker
FAST = {"fake_gpus": "RTX 4090:24", "price": "0.40", "grace": "2s", "retention": "12s"}


@pytest.fixture
def brokers(pg_server):
    """brokers(n): n brokers of one database, each serving with --peer; the first made the keys."""
    _require_docker()
    made = []

    def make(n: int, env: dict | None = None, serve=()) -> list[Cluster]:
        url = pg_server.fresh_schema()
        for i in range(n):
            extra = {"init": ("--keys-from", made[0].bhome), "renter": False} if i else {}
            made.append(Cluster(Path(tempfile.mkdtemp(prefix="shellrent-test-")),
                                env={"BROKER_DB": url, **(env or {})}, **extra))
            made[-1].key = made[0].key  # one renter, one key, whichever broker it reaches
            made[-1].start_broker("--peer", "127.0.0.1:0", *serve)
        made[0].url = url
        return list(made)

    try:
        yield make
    finally:
        for c in reversed(made):
            c.close()


@pytest.fixture
def pair(brokers):
    return brokers(2)


def _ctl_json(c, *args, key=None):
    r = c.ssh(*args, "--json", user="ctl", key=key)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _status(c, name):
    return json.loads(c.hostd(name, "status", "--json").stdout)


def _get(url):
    try:
        return urllib.request.urlopen(url, timeout=2).read()
    except OSError:
        return None


def _ledger(c):
    ledger = json.loads(c.broker("ledger", "--json").stdout)
    assert sum(ledger["balances"].values()) == 0
    return ledger


def test_a_renter_through_one_broker_works_on_the_others_host_and_the_host_moves_when_it_dies(pair, tmp_path):
    a, b = pair
    a.add_host("pc1", FAST)  # its tunnel is on A; A's welcome named B's tunnel too
    assert _status(a, "pc1")["connected"]
    a.broker("renter", "credit", "alice", "5")
    wait_for(lambda: _ctl_json(b, "offers"), what="broker B to list the host of broker A")
    lease = _ctl_json(b, "rent", "--hours", "1", "--yes")  # rented through B, started by A
    assert lease["state"] == "active"

    r = b.ssh("echo hello > /workspace/f; cat /workspace/f; echo oops >&2; exit 7")
    assert (r.returncode, r.stdout, r.stderr) == (7, b"hello\n", b"oops\n")
    src = tmp_path / "up.bin"
    src.write_bytes(os.urandom(3 << 20))
    scp = ["scp", "-P", str(b.ssh_port), *b.ssh_opts()]
    run(*scp, src, "rent@127.0.0.1:/workspace/up.bin")
    run(*scp, "rent@127.0.0.1:/workspace/up.bin", tmp_path / "down.bin")
    assert (tmp_path / "down.bin").read_bytes() == src.read_bytes()

    b.ssh("mkdir -p /tmp/www && echo peered > /tmp/www/i.html && "
          "(cd /tmp/www && nohup python3 -m http.server 8888 --bind 127.0.0.1 >/dev/null 2>&1 &)", check=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fwd = subprocess.Popen(b.ssh_cmd("rent", "-N", "-L", f"{port}:localhost:8888"))
    try:
        assert wait_for(lambda: _get(f"http://127.0.0.1:{port}/i.html"), what="-L through B") == b"peered\n"
    finally:
        fwd.terminate()
        fwd.wait()

    ends = lease["ends_at"]
    b.ssh("extend", "30m", user="ctl", check=True)  # B asks A to tell the host
    assert _ctl_json(b, "ls")[0]["ends_at"] == pytest.approx(ends + 1800)
    a_log = a.log("broker")
    assert "lease.extend" not in b.log("broker") and "refused" not in a_log

    since = _status(a, "pc1")["since"]
    killed = time.time()
    a.kill("broker")  # -9: its renters' sessions end; the host moves to B
    wait_for(lambda: (st := _status(a, "pc1"))["connected"] and st["since"] > since, timeout=15,
             what="the host to move to broker B")
    moved = time.time() - killed
    assert moved < 10, f"the host took {moved:.1f} s to move"
    print(f"\nHOST MOVED TO THE OTHER BROKER IN {moved:.2f} s")
    assert b.ssh("cat /workspace/f", check=True).stdout == b"hello\n"
    assert _ctl_json(b, "ls")[0]["state"] == "active"

    out = b.ssh("release", lease["id"], user="ctl", check=True)
    assert out.stdout.decode().startswith(f"lease {lease['id']} released after ")
    wait_for(lambda: not a.containers(), what="the host to remove the container")
    kinds = [t["kind"] for t in _ledger(b)["transactions"] if t["lease"] == lease["id"]]
    assert sorted(kinds) == ["hold", "hold", "settle"]  # the rent, the extension, one settlement


def test_two_renters_racing_for_the_last_gpu_through_two_brokers_one_wins(pair):
    a, b = pair
    a.add_host("pc1", FAST)  # one GPU
    bob = b.new_key("bob")
    a.broker("renter", "add", "bob", "--key", f"{bob}.pub")
    for name in ("alice", "bob"):
        a.broker("renter", "credit", name, "5")
    for c, key in ((a, None), (b, bob)):
        wait_for(lambda: _ctl_json(c, "offers", key=key), what="both brokers to list the GPU")
    procs = [subprocess.Popen(c.ssh_cmd("ctl", key=key) + ["rent", "--hours", "1", "--yes"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for c, key in ((a, None), (b, bob))]
    results = [(p.wait(timeout=120), p.stdout.read(), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    won = [r for r in results if r[0] == 0]
    lost = [r for r in results if r[0] != 0]
    assert len(won) == 1 and len(lost) == 1, results
    assert len(lost[0][2].strip().splitlines()) == 1 and b"Traceback" not in lost[0][2], lost[0][2]
    ledger = _ledger(a)
    loser = "bob" if results[0][0] == 0 else "alice"
    assert [t["kind"] for t in ledger["transactions"] if t["renter"] == loser] == ["deposit"]  # no hold, no charge
    assert ledger["balances"][f"renter:{loser}"] == 5_000_000


def _settles(c, lid):
    return [t["kind"] for t in _ledger(c)["transactions"] if t["lease"] == lid and t["kind"] != "hold"]


def test_a_broker_paused_past_its_expiry_acts_on_nothing_it_no_longer_owns(brokers):
    a, b = brokers(2, env={"HOSTD_KEEPALIVE": "2"})  # the host gives up on the paused broker in about 6 s
    a.add_host("pc1", FAST)
    a.broker("renter", "credit", "alice", "5")
    lease = _ctl_json(b, "rent", "--hours", "1", "--yes")
    since = _status(a, "pc1")["since"]
    a.procs["broker"].send_signal(signal.SIGSTOP)  # A holds the host's tunnel and stops answering
    try:
        wait_for(lambda: (st := _status(a, "pc1"))["connected"] and st["since"] > since, timeout=40,
                 what="the host to leave the paused broker for B")
        assert b.ssh("echo on-b", check=True).stdout == b"on-b\n"
    finally:
        a.procs["broker"].send_signal(signal.SIGCONT)
    wait_for(lambda: "driven by another broker now" in a.log("broker") or "host pc1 disconnected" in a.log("broker"),
             what="A to let the host go")
    time.sleep(3)
    st = _status(a, "pc1")
    assert st["connected"] and st["via"] == f"127.0.0.1:{b.tunnel_port}"  # still on B
    assert _ctl_json(a, "ls")[0]["state"] == "active" and "stale broker" not in a.log("hostd-pc1")
    b.ssh("release", lease["id"], user="ctl", check=True)
    assert _settles(a, lease["id"]) == ["settle"]


def test_postgresql_down_sessions_keep_relaying_new_logins_get_one_line_and_work_resumes(pair, pg_server):
    a, b = pair
    a.add_host("pc1", FAST)
    a.broker("renter", "credit", "alice", "5")
    lease = _ctl_json(b, "rent", "--hours", "1", "--yes")
    assert lease["state"] == "active"
    held = subprocess.Popen(b.ssh_cmd("rent", "-T"), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        held.stdin.write(b"echo before\n")
        held.stdin.flush()
        assert held.stdout.readline() == b"before\n"
        pg_server.down()
        try:
            held.stdin.write(b"echo during\n")  # an open session, through B to the host on A
            held.stdin.flush()
            assert held.stdout.readline() == b"during\n"
            for user in ("rent", "ctl"):
                cmd = b.ssh_cmd(user)
                cmd[cmd.index("LogLevel=ERROR")] = "LogLevel=INFO"  # OpenSSH shows banners from INFO on
                r = subprocess.run(cmd + ["true"], capture_output=True, timeout=60)
                said = [line for line in r.stderr.splitlines() if line.startswith(b"shellrent:")]
                assert r.returncode == 255 and len(said) == 1 and b"database does not answer" in said[0], r.stderr
            time.sleep(12)  # past the rows' expiry: every heartbeat fails meanwhile
            held.stdin.write(b"echo still\n")
            held.stdin.flush()
            assert held.stdout.readline() == b"still\n"
        finally:
            pg_server.up()
        wait_for(lambda: b.ssh("echo after").stdout == b"after\n", timeout=60, what="logins to work again")
        assert _ctl_json(a, "ls")[0]["state"] == "active"
        time.sleep(3)  # the brokers' heartbeats are in again: A kept the host it still held (a new epoch)
        held.stdin.write(b"echo kept\n")
        held.stdin.flush()
        assert held.stdout.readline() == b"kept\n"
        assert "driven by another broker" not in a.log("broker")
    finally:
        held.stdin.close()
        held.wait(timeout=30)
        held.stdout.close()
    b.ssh("release", lease["id"], user="ctl", check=True)
    assert _settles(a, lease["id"]) == ["settle"]


def test_sigterm_drains_the_host_moves_and_the_broker_leaves(pair):
    a, b = pair
    a.add_host("pc1", FAST)
    since = _status(a, "pc1")["since"]
    a.kill("broker", signal.SIGTERM)  # waits for it to exit
    st = wait_for(lambda: (st := _status(a, "pc1"))["connected"] and st["since"] > since and st, timeout=15,
                  what="the host to move to B")
    assert st["via"] == f"127.0.0.1:{b.tunnel_port}"
    store = PgStore(a.url)
    try:
        assert [row["id"] for row in store.brokers(10)] == [b.info["broker"]]  # A left the table
        assert store.host_owner("pc1")["broker"] == b.info["broker"]
    finally:
        store.close()


def _haproxy(root: Path, backends: list) -> tuple[subprocess.Popen, int]:
    """HAProxy in front of the brokers' renter ports (mode tcp, PROXY v2, /healthz checks)."""
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not Path(haproxy).exists():
        pytest.fail("haproxy not found: these tests need Debian's haproxy package (scripts/test.sh)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    servers = "".join(f"  server b{i} 127.0.0.1:{c.ssh_port} send-proxy-v2 check port {c.info['metrics'][1]} "
                      "inter 500 fall 2 rise 1\n" for i, c in enumerate(backends))
    cfg = root / "haproxy.cfg"
    cfg.write_text("global\n  maxconn 200\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 60s\n"
                   "  timeout server 60s\n  timeout check 1s\n  retries 2\n  option redispatch\n"
                   f"frontend renters\n  bind 127.0.0.1:{port}\n  default_backend brokers\n"
                   f"backend brokers\n  balance roundrobin\n  option httpchk GET /healthz\n{servers}")
    with open(root / "haproxy.log", "wb") as log:
        proc = subprocess.Popen([haproxy, "-db", "-f", str(cfg)], stdout=log, stderr=log)
    return proc, port


def test_through_haproxy_logins_land_on_every_broker_work_within_5_s_of_a_kill_and_a_short_lease_settles_once(
        brokers, tmp_path):
    a, b, c = brokers(3, env={"BROKER_PROXY_FROM": "127.0.0.1"}, serve=("--metrics", "127.0.0.1:0"))
    a.add_host("pc1", FAST)
    a.broker("renter", "credit", "alice", "5")
    proc, port = _haproxy(tmp_path, [a, b, c])
    try:
        a.ssh_port = port  # the renter's client reaches the balancer only
        key = (a.root / "known_hosts").read_text().split(" ", 1)[1]
        (a.root / "known_hosts").write_text(f"[127.0.0.1]:{port} {key}")  # one host key, whichever broker
        wait_for(lambda: a.ssh("offers", user="ctl").returncode == 0, what="haproxy to pass logins")
        lease = _ctl_json(a, "rent", "--hours", "20s", "--yes")
        for _ in range(6):
            assert a.ssh("echo hi", check=True).stdout == b"hi\n"
        for x in (a, b, c):  # round robin: each broker took some, and saw the renter's own address
            assert "login renter=alice user=rent ip=127.0.0.1" in (x.bhome / "audit.log").read_text()
        killed = time.time()
        a.kill("broker")  # the host's broker: its renters and its host go to the others
        wait_for(lambda: a.ssh("echo back").stdout == b"back\n", timeout=15, what="a login through the balancer")
        assert time.time() - killed < 5, f"logins worked again only after {time.time() - killed:.1f} s"
        for _ in range(4):
            assert a.ssh("cat /proc/1/comm", check=True).returncode == 0
        wait_for(lambda: _ctl_json(a, "ls")[0]["state"] in ("ended", "purged"), timeout=60,
                 what="the lease's time to run out")  # two brokers' housekeeping and the host all see it
        wait_for(lambda: not a.containers(), what="the host to remove the container")
        time.sleep(3)  # every broker's housekeeping has had its turn since
        assert _settles(b, lease["id"]) == ["settle"]
        charged = _ledger(b)["balances"]
        assert charged["renter:alice"] < 5_000_000 and charged.get("hold:alice", 0) == 0
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_renters_session_limit_counts_its_sessions_on_every_broker(brokers):
    a, b = brokers(2, env={"BROKER_SESSIONS_PER_RENTER": "2"})
    a.add_host("pc1", FAST)
    a.broker("renter", "credit", "alice", "5")
    _ctl_json(a, "rent", "--hours", "1", "--yes")
    held = [subprocess.Popen(c.ssh_cmd("rent", "-T"), stdin=subprocess.PIPE, stdout=subprocess.PIPE) for c in (a, b)]
    try:
        for p in held:
            p.stdin.write(b"echo up\n")
            p.stdin.flush()
            assert p.stdout.readline() == b"up\n"
        time.sleep(4.5)  # both brokers' heartbeats have published their counts, and read the other's
        for c in (a, b):
            cmd = c.ssh_cmd("rent")
            cmd[cmd.index("LogLevel=ERROR")] = "LogLevel=INFO"  # OpenSSH says why a channel was refused
            r = subprocess.run(cmd + ["true"], capture_output=True, timeout=60)
            assert r.returncode == 255 and b"too many open sessions" in r.stderr, r.stderr
    finally:
        for p in held:
            p.stdin.close()
            p.wait(timeout=30)
            p.stdout.close()
    wait_for(lambda: b.ssh("true").returncode == 0, timeout=15, what="the places to come back")
