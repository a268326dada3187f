"""Bandwidth caps on a lease's own network, with the kernel's traffic control (iproute2 `tc`).

Every lease network's bridge (hostd.firewall.bridge_name) carries only that lease's traffic, so a
cap per lease is a pair of HTB trees, one for each direction, matching every packet (IPv4, IPv6,
ARP: the classes take all, `default`):
- towards the container (the lease's downloads): the bridge's own egress, HTB at the rate;
- from the container (its uploads): the ingress of each port of the bridge (the container's veth,
  host side) redirects every packet (u32 matching all, `mirred`) to an IFB device of the lease's own
  (IFB_PREFIX + lease id), whose egress is HTB at the rate. (A redirect from the bridge's own
  ingress loses the packets it hands back: the ports are where the kernel takes them back whole.)
  The ports exist once the container runs, and a restarted container has a new one: hostd.caps
  checks and puts the caps back. HTB queues and delays, so TCP backs off smoothly (a policer would
  drop, and this kernel may not even have one).
A renter cannot lift a cap: the qdiscs sit on host-side devices, outside the container's network
namespace, and the container has no CAP_NET_ADMIN (hostd.runtime_spec.CAPS). The bridge's qdiscs go
with the bridge when Docker removes the network; the IFB device is hostd's to delete (`clear`).
"""
import shutil
import subprocess

IFB_PREFIX = "sri-"
TIMEOUT = 20  # seconds for one tc or ip call
LIMIT = "1000"  # packets a leaf queue holds (a bridge's own queue length may be 0)


class ShapingError(Exception):
    """A cap could not be put in place (or checked); str() says why."""


def ifb_name(lease_id: str) -> str:
    """The IFB device that carries a lease's uploads (at most 15 characters, as the bridge's)."""
    return (IFB_PREFIX + lease_id)[:15]


def burst(rate: int) -> str:
    """HTB's burst for a rate in bit/s: 10 ms worth, at least 16 KiB (so a full-size packet always fits)."""
    return f"{max(16 * 1024, rate // 8 // 100)}b"


def htb(dev: str, rate: int, rooted: bool = False) -> list[list[str]]:
    """tc lines (pure) for one HTB tree on dev's egress: every packet through class 1:10 at rate bit/s.
    rooted: dev has hostd's HTB root already (the kernel cannot `replace` an HTB root in place, so
    then only the class changes)."""
    root = [] if rooted else [["qdisc", "replace", "dev", dev, "root", "handle", "1:", "htb", "default", "10"]]
    return root + [
        ["class", "replace", "dev", dev, "parent", "1:", "classid", "1:10", "htb", "rate", f"{rate}bit",
         "ceil", f"{rate}bit", "burst", burst(rate), "cburst", burst(rate), "quantum", "60000"],
        ["qdisc", "replace", "dev", dev, "parent", "1:10", "handle", "10:", "pfifo", "limit", LIMIT]]


def commands(bridge: str, ports: list[str], ifb: str, rate: int,
             rooted: tuple[bool, bool] = (False, False)) -> list[list[str]]:
    """The tc lines (pure) that cap a lease's bridge (with its ports) at rate bit/s each way; the IFB
    must exist and be up; rooted: whether the bridge and the IFB have hostd's HTB root already."""
    redirects = [line for port in ports for line in (
        ["qdisc", "replace", "dev", port, "handle", "ffff:", "ingress"],
        ["filter", "replace", "dev", port, "parent", "ffff:", "protocol", "all", "prio", "1", "handle", "800::1",
         "u32", "match", "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", ifb])]
    return htb(bridge, rate, rooted[0]) + redirects + htb(ifb, rate, rooted[1])


def ports(bridge: str) -> list[str]:
    """The devices attached to a bridge (a lease's: its container's veth)."""
    proc = _run(["ip", "-o", "link", "show", "master", bridge])
    if proc.returncode:
        raise ShapingError(f"cannot list the ports of {bridge}: {_first_line(proc)}")
    return [line.split(":")[1].strip().split("@")[0] for line in proc.stdout.splitlines() if line.count(":") >= 2]


def _run(argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        raise ShapingError(f"{argv[0]} did not answer within {TIMEOUT}s") from None
    except OSError as exc:
        raise ShapingError(f"{argv[0]}: {exc}") from None


def _first_line(proc: subprocess.CompletedProcess) -> str:
    return next((line for line in (proc.stderr + proc.stdout).splitlines() if line.strip()), f"exit {proc.returncode}")


def available() -> str | None:
    """Why caps cannot be applied on this machine (tc or ip missing), or None."""
    missing = [tool for tool in ("tc", "ip") if not shutil.which(tool)]
    return f"{' and '.join(missing)} not installed (apt-get install iproute2)" if missing else None


def finding(values: dict, which=shutil.which) -> tuple[str, str, str, bool]:
    """`hostd doctor`'s (level, text, fix, required) on the caps: tc and ip must be here when a cap is set."""
    capped = bool(values["bandwidth"] or values["bandwidth_total"])
    missing = [tool for tool in ("tc", "ip") if not which(tool)]
    if not missing:
        return "ok", f"tc and ip (iproute2) are installed; bandwidth {'capped' if capped else 'not capped'}", "", capped
    return ("FAIL" if capped else "info", f"{' and '.join(missing)} not installed: "
            f"{'no lease can start while a bandwidth cap is set' if capped else 'bandwidth caps cannot be set'}",
            "apt-get install iproute2", capped)


def _ifb_up(ifb: str) -> None:
    if _run(["ip", "link", "show", "dev", ifb]).returncode:
        made = _run(["ip", "link", "add", ifb, "type", "ifb"])
        if made.returncode and "File exists" not in made.stderr:
            raise ShapingError(f"cannot make the IFB device {ifb}: {_first_line(made)}")
    up = _run(["ip", "link", "set", "dev", ifb, "up"])
    if up.returncode:
        raise ShapingError(f"cannot bring {ifb} up: {_first_line(up)}")


def apply(bridge: str, ifb: str, rate: int) -> None:
    """Cap the lease's bridge at rate bit/s each way (0: take every cap off); ShapingError if not done."""
    if not rate:
        clear(bridge, ifb)
        return
    why = available()
    if why:
        raise ShapingError(why)
    _ifb_up(ifb)
    rooted = tuple("qdisc htb 1:" in _run(["tc", "qdisc", "show", "dev", dev]).stdout for dev in (bridge, ifb))
    text = "".join(" ".join(line) + "\n" for line in commands(bridge, ports(bridge), ifb, rate, rooted))
    proc = _run(["tc", "-batch", "-"], text)
    if proc.returncode:
        raise ShapingError(f"tc on {bridge}: {_first_line(proc)}")


def clear(bridge: str | None, ifb: str) -> None:
    """Take a lease's caps off (what is already gone is no error): its bridge's qdiscs, its IFB device."""
    if not shutil.which("tc"):
        return
    if bridge:
        _run(["tc", "qdisc", "del", "dev", bridge, "root"])
        for port in ports(bridge) if _run(["ip", "link", "show", "dev", bridge]).returncode == 0 else []:
            _run(["tc", "qdisc", "del", "dev", port, "ingress"])
    _run(["ip", "link", "del", "dev", ifb])


def capped(bridge: str) -> bool:
    """Whether a bridge has hostd's cap on it (a cap no setting asks for any more is taken off)."""
    return bool(shutil.which("tc")) and "qdisc htb 1:" in _run(["tc", "qdisc", "show", "dev", bridge]).stdout


def in_place(bridge: str, ifb: str) -> str | None:
    """What of a lease's caps is missing now (another tool may flush qdiscs), or None."""
    for dev in (bridge, ifb):
        proc = _run(["tc", "qdisc", "show", "dev", dev])
        if proc.returncode or "qdisc htb 1:" not in proc.stdout:
            return f"no htb qdisc on {dev}"
    for port in ports(bridge):
        proc = _run(["tc", "filter", "show", "dev", port, "parent", "ffff:"])
        if proc.returncode or f"Redirect to device {ifb})" not in proc.stdout:
            return f"no redirect from {port} to {ifb}"
    return None


def stray_ifbs(ours: set[str]) -> list[str]:
    """The IFB devices left of this hostd's leases that are no longer active (ours: their names; the
    lease ended while hostd was away). Another hostd's on the same machine are not ours to remove."""
    proc = _run(["ip", "-o", "link", "show", "type", "ifb"])
    names = [line.split(":")[1].strip().split("@")[0] for line in proc.stdout.splitlines() if line.count(":") >= 2]
    return [n for n in names if n in ours]
