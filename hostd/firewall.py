"""hostd's egress policy: a lease's container reaches the internet, and nothing of the provider's.

Every lease network's bridge is named BRIDGE_PREFIX + lease id, so two chains of hostd's own match
all leases at once:
- SHELLRENT-FWD (jumped to from Docker's DOCKER-USER, or FORWARD): traffic a container sends through
  the host is refused to private, shared, loopback, link-local (cloud metadata), multicast and
  reserved IPv4 ranges, and to other leases' bridges; the internet stays open.
- SHELLRENT-IN (jumped to from INPUT): a container cannot open connections to the host itself, on
  any of its addresses (the bridge gateway, the LAN address, the public one).
The provider's `egress_allow` setting lets chosen destinations (IP, IP:PORT, CIDR or CIDR:PORT)
through both. Rules are rewritten as a whole at every start and settings change, and removed by
`hostd firewall remove`. The chains are machine-wide: one hostd per machine.
"""
import ipaddress
import logging
import shutil
import subprocess

log = logging.getLogger("shellrent.firewall")

BRIDGE_PREFIX = "srl-"
FWD, IN = "SHELLRENT-FWD", "SHELLRENT-IN"
BLOCKED = ("0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
           "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/4", "240.0.0.0/4")
_REJECT = ["-j", "REJECT", "--reject-with", "icmp-admin-prohibited"]


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


def rules(allow: list[tuple[str, int | None]]) -> dict[str, list[list[str]]]:
    """The two chains' rules, in order (pure)."""
    allowed = [["-d", net, *(["-p", "tcp", "--dport", str(port)] if port else []), "-j", "RETURN"]
               for net, port in allow]
    established = [["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "RETURN"]]
    fwd = established + allowed + [["-d", net, *_REJECT] for net in BLOCKED] + \
        [["-o", BRIDGE_PREFIX + "+", *_REJECT], ["-j", "RETURN"]]
    inp = established + [r[:-1] + ["ACCEPT"] for r in allowed] + [_REJECT]
    return {FWD: fwd, IN: inp}


def _ipt(*args: str, check: bool = True) -> bool:
    proc = subprocess.run(["iptables", "-w", "5", *args], capture_output=True, text=True, timeout=30)
    if check and proc.returncode:
        raise FirewallError(f"iptables {' '.join(args)}: {proc.stderr.strip()}")
    return proc.returncode == 0


def _jumps() -> list[tuple[str, str]]:
    forward = "DOCKER-USER" if _ipt("-S", "DOCKER-USER", check=False) else "FORWARD"
    return [(forward, FWD), ("INPUT", IN)]


def install(allow: list[tuple[str, int | None]]) -> None:
    """Write both chains afresh and make sure lease traffic jumps to them."""
    if not shutil.which("iptables"):
        raise FirewallError("iptables is not installed: lease containers can reach this machine and its LAN")
    for chain, lines in rules(allow).items():
        if not _ipt("-N", chain, check=False):
            _ipt("-F", chain)
        for line in lines:
            _ipt("-A", chain, *line)
    for parent, chain in _jumps():
        jump = ["-i", BRIDGE_PREFIX + "+", "-j", chain]
        if not _ipt("-C", parent, *jump, check=False):
            _ipt("-I", parent, "1", *jump)


def remove() -> None:
    """Take hostd's chains and their jumps out again."""
    if not shutil.which("iptables"):
        return
    for parent, chain in _jumps():
        while _ipt("-D", parent, "-i", BRIDGE_PREFIX + "+", "-j", chain, check=False):
            pass
        if _ipt("-F", chain, check=False):
            _ipt("-X", chain, check=False)


def show() -> str:
    """The chains as iptables prints them."""
    return "".join(subprocess.run(["iptables", "-w", "5", "-S", chain], capture_output=True, text=True).stdout
                   for chain in (FWD, IN))
