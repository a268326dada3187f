"""Egress: a lease's container reaches the internet, but not the provider's machine, its LAN, a cloud
metadata address or another lease; the provider's egress_allow lets chosen destinations through.

The test makes its own network namespaces: "lan" (10.213.7.2, and 169.254.169.254 as a metadata
server), "inet" (45.0.0.1, a public address routed into it, standing in for the internet) and "nbr"
(198.51.100.77: a neighbour with a public-looking address on a subnet of the host's own interface, and
203.0.113.10, an IANA special-purpose address, routed through it), each tied to this host by a veth pair
and serving HTTP. Probes go only to addresses those namespaces, this host
or the test's own containers serve, and only after the route to each is checked."""
import json
import shutil
import signal
import socket
import subprocess
import threading
import uuid

import pytest

from ..cluster import IMAGE, run, wait_for
from ..faults.records import balances, broker_leases

pytestmark = [pytest.mark.docker, pytest.mark.hostile]

NETS = {"lan": ("10.213.7.1", "10.213.7.2", ["169.254.169.254"]), "inet": ("10.213.8.1", "10.213.8.2", ["45.0.0.1"]),
        "nbr": ("198.51.100.1", "198.51.100.77", ["203.0.113.10"])}
PROBE = ("import socket,sys\n"
         "for t in sys.argv[1:]:\n"
         "    h, p = t.rsplit(':', 1)\n"
         "    try:\n"
         "        socket.create_connection((h, int(p)), 3).close(); print(t, 'open')\n"
         "    except OSError:\n"
         "        print(t, 'blocked')\n")


def _ip(*args, check=True):
    return run("ip", *args, check=check)


@pytest.fixture
def nets():
    """The two namespaces with their servers; torn down after."""
    tag = uuid.uuid4().hex[:6]
    made, servers = [], []
    try:
        for name, (host_ip, ns_ip, extra) in NETS.items():
            ns, veth = f"sr{name}{tag}", f"sr{name[0]}{tag}"
            _ip("netns", "add", ns)
            made.append(ns)
            _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("addr", "add", f"{host_ip}/24", "dev", veth)
            _ip("link", "set", veth, "up")
            _ip("-n", ns, "addr", "add", f"{ns_ip}/24", "dev", "eth0")
            for addr in extra:
                _ip("-n", ns, "addr", "add", f"{addr}/32", "dev", "eth0")
                _ip("route", "add", f"{addr}/32", "via", ns_ip, "dev", veth)
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "route", "add", "default", "via", host_ip)
            for addr in [ns_ip, *extra]:
                route = _ip("route", "get", addr).stdout.decode()
                assert f"dev {veth}" in route, route  # it leads into our namespace, nowhere else
                servers.append(subprocess.Popen(["ip", "netns", "exec", ns, "python3", "-m", "http.server", "8000",
                                                 "--bind", addr], stdout=subprocess.DEVNULL,
                                                stderr=subprocess.DEVNULL))
        for _, (_, ns_ip, extra) in NETS.items():
            for addr in [ns_ip, *extra]:
                wait_for(lambda a=addr: _reachable(a, 8000), what=f"the server at {addr}")
        yield
    finally:
        for proc in servers:
            proc.kill()
            proc.wait()
        for ns in made:
            _ip("netns", "del", ns, check=False)
        for name in NETS:
            _ip("link", "del", f"sr{name[0]}{tag}", check=False)


def _reachable(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), 1).close()
        return True
    except OSError:
        return False


@pytest.fixture
def host_server():
    """A service of the provider's, listening on every address of this host."""
    srv = socket.socket()
    srv.bind(("0.0.0.0", 0))
    srv.listen(16)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
                conn.close()
            except OSError:
                return
    threading.Thread(target=serve, daemon=True).start()
    yield srv.getsockname()[1]
    stop.set()
    srv.close()


def _probe(c, lease: str, *targets: str) -> dict[str, str]:
    out = c.ssh("python3", "-", *targets, user=f"rent+{lease}", input=PROBE.encode(), check=True)
    return dict(line.split() for line in out.stdout.decode().splitlines())


def test_a_lease_reaches_the_internet_only(fresh_cluster, nets, host_server):
    c = fresh_cluster
    c.add_host("pc1")
    a, b = c.create_lease(), c.create_lease()
    assert c.ssh("nohup python3 -m http.server 8000 >/dev/null 2>&1 &", user=f"rent+{b}").returncode == 0
    info = json.loads(run("docker", "inspect", f"shellrent-{a}", f"shellrent-{b}").stdout)
    gateway = next(iter(info[0]["NetworkSettings"]["Networks"].values()))["Gateway"]
    other = next(iter(info[1]["NetworkSettings"]["Networks"].values()))["IPAddress"]
    wait_for(lambda: _probe(c, b, "127.0.0.1:8000")["127.0.0.1:8000"] == "open", what="lease b's server")
    port = host_server
    want = {"45.0.0.1:8000": "open",                                           # the internet
            "10.213.7.2:8000": "blocked", "169.254.169.254:8000": "blocked",   # the LAN, cloud metadata
            "198.51.100.77:8000": "blocked", "203.0.113.10:8000": "blocked",     # the host's subnet, IANA's
            f"{gateway}:{port}": "blocked", f"10.213.7.1:{port}": "blocked",   # the host, any address
            f"198.51.100.1:{port}": "blocked", f"{other}:8000": "blocked"}    # ... and another lease
    assert _probe(c, a, *want) == want
    # No IPv6 path at all (Docker turns it off in IPv4-only networks); hostd's IPv6 chains back that up.
    v6 = c.ssh("cat /proc/sys/net/ipv6/conf/all/disable_ipv6", user=f"rent+{a}", check=True).stdout.strip()
    assert v6 == b"1"
    if shutil.which("ip6tables"):
        assert b"icmp6-adm-prohibited" in c.hostd("pc1", "firewall", "show").stdout
    # The provider lets one LAN service through; everything else stays shut.
    c.hostd("pc1", "config", "set", "egress_allow", "10.213.7.2:8000")
    wait_for(lambda: _probe(c, a, "10.213.7.2:8000")["10.213.7.2:8000"] == "open", what="the allow-list")
    assert _probe(c, a, *want) == {**want, "10.213.7.2:8000": "open"}
    # Removed on uninstall (hostd stopped first: a running hostd puts missing rules back).
    c.kill("hostd-pc1", signal.SIGTERM)
    c.hostd("pc1", "firewall", "remove")
    assert c.hostd("pc1", "firewall", "show").stdout == b"not installed"


def test_rules_flushed_by_another_tool_come_back_before_a_start(fresh_cluster, nets, host_server):
    c = fresh_cluster
    c.add_host("pc1")
    # A firewall reload by another tool (ufw, firewalld, a script) drops hostd's jump and chain.
    run("iptables", "-w", "20", "-D", "INPUT", "-i", "srl-+", "-j", "SHELLRENT-IN")
    run("iptables", "-w", "20", "-F", "SHELLRENT-IN")
    a = c.create_lease()  # the start checks the rules and puts them back before the container exists
    target = f"198.51.100.1:{host_server}"
    assert _probe(c, a, target) == {target: "blocked"}
    assert "egress rules were not in place" in c.log("hostd-pc1")
    # While leases run, hostd notices a flush on its own within seconds.
    run("iptables", "-w", "20", "-F", "SHELLRENT-IN")
    wait_for(lambda: b"icmp-admin-prohibited" in run("iptables", "-w", "20", "-S", "SHELLRENT-IN").stdout,
             what="hostd to put its rules back")
    assert _probe(c, a, target) == {target: "blocked"}


def test_a_host_that_cannot_install_its_rules_starts_nothing(fresh_cluster, tmp_path):
    c = fresh_cluster
    fake = tmp_path / "bin"
    fake.mkdir()
    for tool in ("iptables", "iptables-restore", "ip6tables", "ip6tables-restore"):
        (fake / tool).write_text("#!/bin/sh\necho 'iptables: lock held by another program' >&2\nexit 4\n")
        (fake / tool).chmod(0o755)
    c.env["PATH"] = f"{fake}:{c.env['PATH']}"
    c.add_host("pc1")
    before = balances(c)
    out = c.broker("lease", "create", "--renter", "alice", "--host", "pc1", "--hours", "1", "--image", IMAGE,
                   check=False)
    assert out.returncode != 0
    assert b"cannot enforce its egress policy" in out.stderr, out.stderr
    assert c.containers() == []
    assert balances(c) == before
    assert {r["state"] for r in broker_leases(c).values()} == {"failed"}
    assert "egress policy NOT in force" in c.log("hostd-pc1")
