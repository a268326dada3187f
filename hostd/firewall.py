"""hostd's egress policy: a lease's container reaches the internet, and nothing of the provider's.

Every lease network's bridge is named BRIDGE_PREFIX + lease id, so two chains of hostd's own match
all leases at once:
- SHELLRENT-FWD (jumped to from Docker's DOCKER-USER, or FORWARD): traffic a container sends through
  the host is refused to every range of IANA's special-purpose registries that is not globally
  reachable (private, shared, loopback, link-local and cloud metadata, documentation, benchmarking,
  multicast, reserved), to every subnet of every interface of the host (a neighbour on the
  provider's network with a public address is the provider's too), and to other leases' bridges;
  the internet stays open.
- SHELLRENT-IN (jumped to from INPUT): a container cannot open connections to the host itself, on
  any of its addresses (the bridge gateway, the LAN address, the public one).
The provider's `egress_allow` setting lets chosen destinations (IP, IP:PORT, CIDR or CIDR:PORT)
through both, and DNS (port 53) to the machine's own resolvers always passes: Docker forwards a
container's lookups from inside its network namespace, and home resolvers sit on private addresses.
Each chain is written in one iptables-restore transaction, so no packet ever meets a half-built
chain. The same chains are written with ip6tables for IPv6 (ULA, link-local, multicast,
loopback refused; the host refused), although lease networks are IPv4-only and Docker turns IPv6
off inside their containers. Rules are rewritten as a whole at every start and settings change, and removed by
`hostd firewall remove`. The chains are machine-wide: one hostd per machine.
"""
import ipaddress
import json
import logging
import shutil
import subprocess

log = logging.getLogger("shellrent.firewall")

BRIDGE_PREFIX = "srl-"
FWD, IN = "SHELLRENT-FWD", "SHELLRENT-IN"
# IANA's IPv4 and IPv6 special-purpose address registries: every block not globally reachable.
BLOCKED = ("0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
           "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15",
           "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4")
BLOCKED6 = ("::/128", "::1/128", "::ffff:0:0/96", "64:ff9b:1::/48", "100::/64", "2001::/23", "2001:db8::/32",
            "2002::/16", "3fff::/20", "5f00::/16", "fc00::/7", "fe80::/10", "ff00::/8")
_REJECT = ["-j", "REJECT", "--reject-with", "icmp-admin-prohibited"]
_REJECT6 = ["-j", "REJECT", "--reject-with", "icmp6-adm-prohibited"]
_installed: list[str] | None = None  # the host's subnets the chains were last written with (install())


class FirewallError(Exception):
    """The rules could not be installed; str() says why."""


def bridge_name(lease_id: str) -> str:
    """The bridge of a lease's network (at most 15 characters, the kernel's limit)."""
    return (BRIDGE_PREFIX + lease_id)[:15]


def parse_allow(text: str) -> list[tuple[str, int | None]]:
    """[(network, port or None)] from 'IP[:PORT],CIDR[:PORT],...'; ValueError naming a bad entry."""
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        addr, sep, port = part.rpartition(":") if part.count(":") == 1 else (part, "", "")
        try:
            net = ipaddress.IPv4Network(addr, strict=False)
            num = int(port) if sep else None
        except ValueError:
            raise ValueError(f"{part!r}: use IP, IP:PORT, CIDR or CIDR:PORT (IPv4)") from None
        if num is not None and not 0 < num < 65536:
            raise ValueError(f"{part!r}: port out of range")
        out.append((str(net), num))
    return out


def resolvers(paths=("/etc/resolv.conf", "/run/systemd/resolve/resolv.conf")) -> list[str]:
    """The IPv4 name servers this machine uses (loopback ones are the host's own, reached otherwise)."""
    found = []
    for path in paths:
        try:
            with open(path) as conf:
                lines = conf.read().splitlines()
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                try:
                    addr = ipaddress.IPv4Address(parts[1])
                except ValueError:
                    continue
                if not addr.is_loopback and str(addr) not in found:
                    found.append(str(addr))
    return found


def host_networks() -> list[str]:
    """Every subnet of every interface of this machine but the lease bridges (`ip -j addr`), both families."""
    try:
        proc = subprocess.run(["ip", "-j", "addr", "show"], capture_output=True, text=True, timeout=10)
        links = json.loads(proc.stdout or "[]")
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return []
    nets = []
    for link in links:
        if str(link.get("ifname", "")).startswith(BRIDGE_PREFIX):
            continue
        for addr in link.get("addr_info") or []:
            try:
                net = str(ipaddress.ip_network(f"{addr['local']}/{addr['prefixlen']}", strict=False))
            except (KeyError, ValueError):
                continue
            if net not in nets:
                nets.append(net)
    return sorted(nets)


def rules(allow: list[tuple[str, int | None]], v6: bool = False, dns: list[str] = (),
          host_nets: list[str] = ()) -> dict[str, list[list[str]]]:
    """The two chains' rules, in order (pure); IPv4, or IPv6 (where nothing is allowed)."""
    reject = _REJECT6 if v6 else _REJECT
    allowed = [] if v6 else [["-d", net, *(["-p", "tcp", "--dport", str(port)] if port else []), "-j", "RETURN"]
                             for net, port in allow]
    allowed += [] if v6 else [["-d", f"{ns}/32", "-p", proto, "--dport", "53", "-j", "RETURN"]
                              for ns in dns for proto in ("udp", "tcp")]
    established = [["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "RETURN"]]
    version = 6 if v6 else 4
    own = [net for net in host_nets if ipaddress.ip_network(net).version == version]
    fwd = established + allowed + [["-d", net, *reject] for net in (BLOCKED6 if v6 else BLOCKED) + tuple(own)] + \
        [["-o", BRIDGE_PREFIX + "+", *reject], ["-j", "RETURN"]]
    inp = established + [r[:-1] + ["ACCEPT"] for r in allowed] + [reject]
    return {FWD: fwd, IN: inp}


def _tools() -> list[tuple[str, bool]]:
    return [(tool, tool == "ip6tables") for tool in ("iptables", "ip6tables") if shutil.which(tool)]


def _ipt(tool: str, *args: str, check: bool = True) -> bool:
    proc = subprocess.run([tool, "-w", "20", *args], capture_output=True, text=True, timeout=30)
    if check and proc.returncode:
        raise FirewallError(f"{tool} {' '.join(args)}: {proc.stderr.strip()}")
    return proc.returncode == 0


def _jumps(tool: str) -> list[tuple[str, str]]:
    forward = "DOCKER-USER" if _ipt(tool, "-S", "DOCKER-USER", check=False) else "FORWARD"
    return [(forward, FWD), ("INPUT", IN)]


def install(allow: list[tuple[str, int | None]]) -> None:
    """Write the chains afresh (IPv4 and, where ip6tables is, IPv6) and make lease traffic jump there."""
    if not shutil.which("iptables"):
        raise FirewallError("iptables is not installed: lease containers can reach this machine and its LAN")
    global _installed
    dns, own = resolvers(), host_networks()
    for tool, v6 in _tools():
        chains = rules(allow, v6, dns, own)
        text = "*filter\n" + "".join(f":{chain} - [0:0]\n" for chain in chains) + \
            "".join(f"-A {chain} {' '.join(line)}\n" for chain, lines in chains.items() for line in lines) + "COMMIT\n"
        proc = subprocess.run([f"{tool}-restore", "--noflush", "-w", "20"], input=text, capture_output=True, text=True,
                              timeout=30)
        if proc.returncode:
            raise FirewallError(f"{tool}-restore: {proc.stderr.strip()}")
        for parent, chain in _jumps(tool):
            jump = ["-i", BRIDGE_PREFIX + "+", "-j", chain]
            if not _ipt(tool, "-C", parent, *jump, check=False):
                _ipt(tool, "-I", parent, "1", *jump)
    _installed = own


def missing() -> str | None:
    """What of hostd's rules is not in place now (another tool's firewall reload flushes them), or None."""
    if not shutil.which("iptables"):
        return "iptables is not installed"
    for tool, v6 in _tools():
        reject = _REJECT6 if v6 else _REJECT
        for parent, chain in _jumps(tool):
            if not _ipt(tool, "-C", parent, "-i", BRIDGE_PREFIX + "+", "-j", chain, check=False):
                return f"{tool}: no jump from {parent} to {chain}"
        # The last refusal of each chain: present only when the chain was written whole.
        for chain, rule in ((FWD, ["-o", BRIDGE_PREFIX + "+", *reject]), (IN, reject)):
            if not _ipt(tool, "-C", chain, *rule, check=False):
                return f"{tool}: {chain} is not whole"
    if _installed is not None and host_networks() != _installed:
        return "the machine's own networks changed"
    return None


def remove() -> None:
    """Take hostd's chains and their jumps out again."""
    for tool, _ in _tools():
        for parent, chain in _jumps(tool):
            while _ipt(tool, "-D", parent, "-i", BRIDGE_PREFIX + "+", "-j", chain, check=False):
                pass
            if _ipt(tool, "-F", chain, check=False):
                _ipt(tool, "-X", chain, check=False)


def show() -> str:
    """The chains as iptables and ip6tables print them."""
    return "".join(subprocess.run([tool, "-w", "5", "-S", chain], capture_output=True, text=True).stdout
                   for tool, _ in _tools() for chain in (FWD, IN))
