"""Bandwidth caps end to end: a capped lease's download from, and upload to, a server in a network
namespace of the test's own (through its bridge, shaped with tc), and a 30 MB scp into and out of it
through the broker (paced by hostd), each take at least the time the cap allows, also two leases'
downloads at once (each has a cap of its own); with the cap taken
off (`bandwidth 0`, the same host and lease, live) the same transfers are clearly faster. Offers show
the cap, and an uncapped host matches `inet_down>=100`.

The namespace is tied to this host by a veth pair; its address (45.0.22.1, standing in for the
internet) is routed into it, and the route is checked before anything is sent."""
import json
import os
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from .cluster import run, wait_for

pytestmark = pytest.mark.docker

MB = 30
CAP_MBIT = 48                       # 30 MB at 48 Mbit/s: 5 s
CAPPED_S = MB * 8 / CAP_MBIT
HOST_IP, NS_IP, INET = "10.213.22.1", "10.213.22.2", "45.0.22.1"
SERVER = ("import socket, sys, threading\n"
          "srv = socket.create_server((sys.argv[1], 8000)); chunk = b'x' * 65536\n"
          "def serve(conn):\n"
          "    if conn.recv(1) == b'g':\n"                 # get: send MB megabytes
          f"        for _ in range({MB * 16}): conn.sendall(chunk)\n"
          "    else:\n"                                    # put: read to the end, then say so
          "        while conn.recv(65536): pass\n"
          "        conn.sendall(b'k')\n"
          "    conn.close()\n"
          "while True:\n"                                  # one thread a connection: leases at once
          "    threading.Thread(target=serve, args=(srv.accept()[0],), daemon=True).start()\n")
CLIENT = ("import socket, sys, time\n"
          f"s = socket.create_connection(('{INET}', 8000), 10); t = time.monotonic(); n = 0\n"
          "if sys.argv[1] == 'get':\n"
          "    s.sendall(b'g')\n"
          "    while True:\n"
          "        d = s.recv(65536)\n"
          "        if not d: break\n"
          "        n += len(d)\n"
          "else:\n"
          f"    s.sendall(b'p'); chunk = b'x' * 65536\n"
          f"    for _ in range({MB * 16}): s.sendall(chunk); n += len(chunk)\n"
          "    s.shutdown(socket.SHUT_WR); assert s.recv(1) == b'k'\n"
          "print(n, time.monotonic() - t)\n")


@pytest.fixture
def inet():
    """A namespace serving MB megabytes on INET:8000 (get) and taking them (put); torn down after."""
    tag = uuid.uuid4().hex[:6]
    ns, veth = f"srbw{tag}", f"srw{tag}"
    server = None
    try:
        run("ip", "netns", "add", ns)
        run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        run("ip", "addr", "add", f"{HOST_IP}/24", "dev", veth)
        run("ip", "link", "set", veth, "up")
        for args in (["addr", "add", f"{NS_IP}/24", "dev", "eth0"], ["addr", "add", f"{INET}/32", "dev", "eth0"],
                     ["link", "set", "eth0", "up"], ["link", "set", "lo", "up"],
                     ["route", "add", "default", "via", HOST_IP]):
            run("ip", "-n", ns, *args)
        run("ip", "route", "add", f"{INET}/32", "via", NS_IP, "dev", veth)
        route = run("ip", "route", "get", INET).stdout.decode()
        assert f"dev {veth}" in route, route  # it leads into our namespace, nowhere else
        server = subprocess.Popen(["ip", "netns", "exec", ns, "python3", "-c", SERVER, INET],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        yield
    finally:
        if server:
            server.kill()
            server.wait()
        run("ip", "route", "del", f"{INET}/32", check=False)
        run("ip", "netns", "del", ns, check=False)
        run("ip", "link", "del", veth, check=False)


def _through_bridge(c, lease: str, way: str) -> float:
    """Seconds the lease's container takes to get (or put) MB megabytes from the namespace's server."""
    out = c.ssh("python3", "-", way, user=f"rent+{lease}", input=CLIENT.encode(), check=True).stdout.decode()
    n, seconds = out.split()
    assert int(n) == MB * 1024 * 1024
    return float(seconds)


def _scp(c, src: str, dst: str) -> float:
    t = time.monotonic()
    run("scp", "-P", str(c.ssh_port), *c.ssh_opts(), src, dst)
    return time.monotonic() - t


def _timings(c, lease: str, tmp_path, name: str) -> dict[str, float]:
    local = tmp_path / f"{name}.bin"
    got = {"download": _through_bridge(c, lease, "get"), "upload": _through_bridge(c, lease, "put"),
           "scp in": _scp(c, str(tmp_path / "data.bin"), f"rent+{lease}@127.0.0.1:/workspace/{name}.bin"),
           "scp out": _scp(c, f"rent+{lease}@127.0.0.1:/workspace/{name}.bin", str(local))}
    assert local.read_bytes() == (tmp_path / "data.bin").read_bytes()
    print(name, {k: round(v, 2) for k, v in got.items()})
    return got


def _ports(lease: str) -> list[str]:
    out = run("ip", "-o", "link", "show", "master", f"srl-{lease}"[:15], check=False).stdout.decode()
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]


def _bridge_qdiscs(lease: str) -> str:
    return run("tc", "qdisc", "show", "dev", f"srl-{lease}"[:15]).stdout.decode()


def test_a_capped_lease_takes_the_time_its_cap_allows_and_an_uncapped_one_does_not(fresh_cluster, inet, tmp_path):
    c = fresh_cluster
    (tmp_path / "data.bin").write_bytes(os.urandom(MB * 1024 * 1024))
    c.add_host("pc1", {"bandwidth": f"{CAP_MBIT}mbit", "fake_gpus": "RTX 4090:24,RTX 4090:24"})
    wait_for(lambda: c.ssh("offers", "--json", user="ctl", check=True).stdout != b"[]\n", what="the offers")
    offers = json.loads(c.ssh("offers", "--json", user="ctl", check=True).stdout)
    assert {(o["inet_down"], o["inet_up"]) for o in offers} == {(CAP_MBIT, CAP_MBIT)}
    assert c.ssh("offers", f"inet_down>={CAP_MBIT + 1}", "--json", user="ctl").stdout == b"[]\n"
    status = c.hostd("pc1", "status").stdout.decode()
    assert f"bandwidth: each lease at most {CAP_MBIT} Mbit/s each way" in status
    lease = c.create_lease()
    assert "htb 1:" in _bridge_qdiscs(lease)
    port = run("ip", "-o", "link", "show", "master", f"srl-{lease}"[:15]).stdout.decode().split(":")[1].split("@")[0]
    assert "ingress ffff:" in run("tc", "qdisc", "show", "dev", port.strip()).stdout.decode()
    # The renter cannot lift it: the container has no CAP_NET_ADMIN (bit 12), and the qdiscs sit outside it.
    caps = c.ssh("grep", "CapEff", "/proc/self/status", user=f"rent+{lease}", check=True).stdout.decode()
    assert not int(caps.split()[1], 16) & (1 << 12)
    capped = _timings(c, lease, tmp_path, "capped")
    for what, seconds in capped.items():
        assert seconds >= 0.8 * CAPPED_S, f"{what} took {seconds:.1f}s, under 80% of the {CAPPED_S:.1f}s the cap allows"

    # Each lease has a cap of its own: two leases downloading at once each get the whole rate.
    other = c.create_lease()
    with ThreadPoolExecutor(2) as pool:
        both = list(pool.map(lambda lid: _through_bridge(c, lid, "get"), [lease, other]))
    print("two leases at once", [round(t, 2) for t in both])
    assert all(0.8 * CAPPED_S <= t < 1.5 * CAPPED_S for t in both), both
    c.broker("lease", "stop", other)

    # A container killed and started again by hostd has a new veth: its uploads are redirected too.
    run("docker", "kill", f"shellrent-{lease}")
    wait_for(lambda: _ports(lease) and _ports(lease) != [port.strip()], timeout=30, what="the container back")
    wait_for(lambda: f"Redirect to device sri-{lease}"[:34] in run(
        "tc", "filter", "show", "dev", _ports(lease)[0], "parent", "ffff:").stdout.decode(), timeout=15,
        what="the upload cap on the new veth")

    # The same host with no cap (changed live): the same lease is not slowed.
    c.hostd("pc1", "config", "set", "bandwidth", "0")
    wait_for(lambda: "htb" not in _bridge_qdiscs(lease), what="the cap to come off")
    wait_for(lambda: "bandwidth: not capped" in c.hostd("pc1", "status").stdout.decode(), what="the status")
    free = _timings(c, lease, tmp_path, "uncapped")
    for what, seconds in free.items():
        assert seconds < 0.5 * CAPPED_S, f"uncapped {what} took {seconds:.1f}s"
    wait_for(lambda: {o["inet_down"] for o in json.loads(c.ssh("offers", "--json", user="ctl").stdout)} == {None},
             what="offers without a cap")
    assert json.loads(c.ssh("offers", "inet_down>=100", "--json", user="ctl", check=True).stdout)  # unlimited
    shown = c.ssh("offers", user="ctl", check=True).stdout.decode()
    head, row = shown.splitlines()[:2]
    assert row.split()[head.split().index("MBIT/S") + 1] == "-"  # (the GPU column takes two words)
