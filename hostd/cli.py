"""`hostd` command line: join a broker, run, report status."""
import asyncio
import fcntl
import json
import os
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path

import click

from .agent import Agent
from .control import JoinError
from .tunnel import join as join_broker
from .config import Config
from shellrent.common import logs, metrics as common_metrics, systemd
from shellrent.keys import material

from . import doctor as doctor_mod, firewall, gpus as gpus_mod, metrics as hostd_metrics, settings as settings_mod
from .store import Store, live_leases
from .runtime import RuntimeError_
from .runtime_spec import LABEL, owner_of


def _addr(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise click.ClickException(f"bad broker address {text!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


@click.group(context_settings={"auto_envvar_prefix": "HOSTD", "help_option_names": ["-h", "--help"]})
@click.option("--home", type=click.Path(file_okay=False, path_type=Path), default="/var/lib/shellrent-hostd",
              show_default=True, help="State directory (env HOSTD_HOME).")
@click.pass_context
def main(ctx, home):
    """shellrent hostd: rent out this machine's GPUs through a broker."""
    ctx.obj = Config(home=home.absolute())


@main.command()
@click.argument("broker")
@click.argument("token")
@click.pass_obj
def join(cfg: Config, broker, token):
    """Make this host's key, pin the broker and register with a join TOKEN."""
    host, port = _addr(broker)
    cfg.home.mkdir(parents=True, exist_ok=True)
    os.chmod(cfg.home, 0o700)
    try:
        name = asyncio.run(join_broker(cfg, host, port, token))
    except JoinError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"joined {host}:{port} as host {name}; now run: hostd --home {cfg.home} run")


@main.command()
@click.option("--metrics", "metrics_addr", default=None, metavar="HOST:PORT",
              help="Serve Prometheus /metrics and /healthz here, e.g. 127.0.0.1:9465 (off by default).")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.pass_obj
def run(cfg: Config, metrics_addr, verbose):
    """Stay connected to the broker and serve leases until SIGINT/SIGTERM (containers keep running)."""
    cfg.metrics_addr = _addr(metrics_addr) if metrics_addr else None
    pin = cfg.load_pin()
    if not pin:
        raise click.ClickException(f"{cfg.home} has not joined a broker: run `hostd join BROKER:PORT TOKEN` first")
    lock = _lock_home(cfg.home)
    logs.setup(verbose)
    try:
        asyncio.run(_run(cfg, pin))
    except RuntimeError_ as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        lock.close()


def _lock_home(home: Path):
    """One hostd per home: a second would fight the first over its containers, database and status file.
    The lock is the kernel's (flock), so a hostd killed with -9 leaves nothing to clean up."""
    f = open(home / "run.lock", "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        pid = f.read().strip()
        f.close()
        raise click.ClickException(f"another hostd is running on {home}" + (f" (pid {pid})" if pid.isdigit() else "")
                                   + ": stop it first, or give this one a --home of its own") from None
    f.truncate(0)
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f  # held open for as long as this process runs


async def _run(cfg: Config, pin: dict) -> None:
    agent = Agent(cfg, pin["fingerprint"])
    agent.open_runtime()
    if cfg.metrics_addr:
        served = await common_metrics.serve(*cfg.metrics_addr, hostd_metrics.REGISTRY,
                                          lambda: hostd_metrics.refresh(agent))
        agent.status.set(metrics=[cfg.metrics_addr[0], served.sockets[0].getsockname()[1]])
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        await agent.run_forever(*pin["addr"])
    except asyncio.CancelledError:
        agent.status.set(connected=False, error="stopped")


def _owner(cfg: Config) -> str:
    return owner_of(material.load_or_create(cfg.key_path))


def _live_leases(cfg: Config) -> list[dict]:
    return [{k: rec.get(k) for k in ("id", "state", "renter", "ends_at")} | {"gpus": json.loads(rec.get("gpus") or "[]")}
            for rec in live_leases(cfg.db_path) if rec["state"] in ("active", "ending")]


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.pass_obj
def status(cfg: Config, as_json):
    """Whether hostd runs and is connected to its broker."""
    pin = cfg.load_pin()
    try:
        st = json.loads(cfg.status_path.read_text())
    except (FileNotFoundError, ValueError):
        st = {}
    running = doctor_mod.pid_alive(st.get("pid"))
    earned = st.get("earned", 0)
    values = settings_mod.load(cfg.home / "settings.json")
    caps = st.get("bandwidth") if running else None
    bandwidth = {"bandwidth": values["bandwidth"], "bandwidth_total": values["bandwidth_total"],
                 "lease_rate": caps["lease_rate"] if caps else settings_mod.lease_rate(values, 1),
                 "error": (caps or {}).get("error")}
    out = {"joined": bool(pin), "host": (pin or {}).get("host"), "broker": (pin or {}).get("addr"),
           "running": running, "connected": bool(running and st.get("connected")), "error": st.get("error"),
           "earned_micro": earned, "earned": f"{earned / 1e6:.2f}",
           "paused": values["paused"], "bandwidth": bandwidth,
           "via": st.get("via") if running else None, "since": st.get("since") if running else None,
           "epoch": st.get("epoch") if running else None,
           "brokers": (pin or {}).get("brokers", []),
           "inventory_error": st.get("inventory_error") if running else None,
           "owner_label": f"{LABEL}.hostd={_owner(cfg)}" if cfg.key_path.exists() else None,
           "leases": _live_leases(cfg)}
    out.update({k: st.get(k) or [] for k in ("gpu_problems", "gpu_kills", "gpu_failures")} if running else {})
    out.update({"images": st.get("images") or {"pulling": [], "failed": {}}} if running else {})
    if as_json:
        click.echo(json.dumps(out))
        return
    if not pin:
        click.echo("not joined to a broker")
        return
    for why in out.get("gpu_failures", []):
        click.echo(f"offering no GPUs: {why}")
    for why in out.get("gpu_problems", []):
        click.echo(f"GPU: {why}")
    for p in out.get("images", {}).get("pulling", []):
        click.echo(f"pulling {p['image']}: {p['done']}/{p['layers']} layers, {p['bytes'] / 1e6:.1f} MB")
    for image, why in out.get("images", {}).get("failed", {}).items():
        click.echo(f"image {image} not here: {why} (tried again every 10 minutes)")
    for k in out.get("gpu_kills", [])[-5:]:
        click.echo(f"watchdog killed pid {k['pid']} ({k['command']}) of {k['where']} on GPU {k['index']} "
                   f"at {time.strftime('%H:%M:%S', time.gmtime(k['at']))} UTC")
    state = "connected" if out["connected"] else ("running, not connected" if running else "not running")
    via = f" through {out['via']}" if out["connected"] and out["via"] else ""
    click.echo(f"host {out['host']} at broker {pin['addr'][0]}:{pin['addr'][1]}: {state}{via}")
    if out["error"] and not out["connected"]:
        click.echo(f"last error: {out['error']}")
    click.echo(f"earnings: {out['earned']} credits" + ("; paused: taking no new rentals" if out["paused"] else ""))
    if out["inventory_error"]:
        click.echo(f"the broker refuses this host's offer: {out['inventory_error']}")
    click.echo(_bandwidth_line(bandwidth))
    for lease in out["leases"]:
        click.echo(f"lease {lease['id']} {lease['state']}: renter {lease['renter']}, {len(lease['gpus'])} GPU(s), "
                   f"ends {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(lease['ends_at']))}")
    if out["owner_label"]:
        click.echo(f"its containers carry the label {out['owner_label']}")


def _bandwidth_line(bw: dict) -> str:
    """`hostd status`'s line on the caps: the rate each lease gets now, and the settings behind it."""
    if bw["error"]:
        return f"bandwidth caps NOT in force (tried again every second): {bw['error']}"
    if not bw["lease_rate"]:
        return "bandwidth: not capped"
    rate = settings_mod.shown_rate
    return (f"bandwidth: each lease at most {bw['lease_rate'] / 1e6:g} Mbit/s each way (bandwidth "
            f"{rate(bw['bandwidth'])}, bandwidth_total {rate(bw['bandwidth_total'])})")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.pass_obj
def doctor(cfg: Config, as_json):
    """Check this machine can host: Docker, cgroups, NVIDIA driver and toolkit, disk, the broker.

    Exits 1 when a required check fails."""
    checks = doctor_mod.run_checks(cfg.home)
    if as_json:
        click.echo(json.dumps([asdict(c) for c in checks]))
    else:
        for check in checks:
            click.echo(doctor_mod.line(check))
    if doctor_mod.failed(checks):
        sys.exit(1)


def _settings(cfg: Config) -> dict:
    try:
        return settings_mod.load(cfg.home / "settings.json")
    except settings_mod.SettingsError as exc:
        raise click.ClickException(str(exc)) from None


def _source(cfg: Config, values: dict):
    """The GPU source hostd run uses (the fake one's UUIDs depend on hostd's key, when there is one)."""
    seed = material.fingerprint(material.load_or_create(cfg.key_path)).removeprefix("SHA256:")[:16] \
        if cfg.key_path.exists() else "unjoined"
    return gpus_mod.open_source(values["fake_gpus"], seed, cfg.fake_gpu_state)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.pass_obj
def gpus(cfg: Config, as_json):
    """This machine's GPUs: memory, use, temperature, power, and the lease that holds each."""
    values = _settings(cfg)
    try:
        found = _source(cfg, values).gpus()
    except gpus_mod.GpuError as exc:
        raise click.ClickException(str(exc)) from None
    holders = {}
    if cfg.db_path.exists():
        for rec in Store(cfg.db_path).holding():
            holders.update({u: rec["id"] for u in json.loads(rec.get("gpus") or "[]")})
    shared = None if values["gpus"] == "all" else {int(i) for i in values["gpus"].split(",")}
    rows = [{**g, "lease": holders.get(g.get("uuid")), "shared": shared is None or g["index"] in shared}
            for g in found]
    if as_json:
        click.echo(json.dumps(rows))
        return
    if not rows:
        click.echo("no GPUs (no NVIDIA driver found, and fake_gpus is not set)")
        return
    for line in _table(rows):
        click.echo(line)


def _num(value, unit: str = "", fmt: str = "g") -> str:
    return "-" if value is None else f"{value:{fmt}}{unit}"


def _table(rows: list[dict]) -> list[str]:
    heads = ["#", "NAME", "UUID", "MEMORY", "UTIL", "TEMP", "POWER", "LEASE"]
    cells = []
    for g in rows:
        used = f"{_num(g.get('memory_used_gb'), '', '.1f')}/{g['memory_gb']:g} GB"
        power = f"{_num(g.get('power_w'), '', '.0f')}/{_num(g.get('power_limit_w'), ' W', '.0f')}"
        lease = g["lease"] or ("-" if g["shared"] else "not shared")
        cells.append([str(g["index"]), g["name"], g.get("uuid") or "?", used, _num(g.get("utilization"), "%"),
                      _num(g.get("temperature"), " C"), power, f"ERROR: {g['error']}" if g.get("error") else lease])
    widths = [max(len(r[i]) for r in [heads, *cells]) for i in range(len(heads))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [heads, *cells]]


@main.group("service")
def service_group():
    """Run hostd as a systemd service."""


@service_group.command("install")
@click.option("--metrics", "metrics_addr", default=None, metavar="HOST:PORT", help="Serve /metrics here.")
@click.option("--print", "only_print", is_flag=True, help="Print the unit; write nothing.")
@click.option("--unit-dir", type=click.Path(file_okay=False, path_type=Path), default=str(systemd.UNIT_DIR),
              show_default=True, hidden=True)
@click.pass_obj
def service_install(cfg: Config, metrics_addr, only_print, unit_dir):
    """Write /etc/systemd/system/shellrent-hostd.service (restart on failure, this home, as root)."""
    if not cfg.load_pin():
        raise click.ClickException(f"{cfg.home} has not joined a broker: run `hostd join BROKER:PORT TOKEN` first")
    if metrics_addr:
        _addr(metrics_addr)
    argv = [systemd.program("hostd"), "--home", str(cfg.home), "run",
            *(["--metrics", metrics_addr] if metrics_addr else [])]
    try:
        text = systemd.unit(
            "shellrent hostd: rent out this machine's GPUs through a broker", argv, ["docker.service"],
            # Root: hostd enters containers' namespaces, mounts workspaces, installs the egress firewall
            # and sets GPU power limits. Its containers belong to Docker: stopping hostd leaves them running.
            {"User": "root", "KillMode": "process", "TimeoutStopSec": "30", "LimitNOFILE": "65536"},
            "shellrent-hostd")
    except systemd.UnitError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(systemd.install("shellrent-hostd", text, unit_dir, only_print), nl=False)


@main.group()
def config():
    """Sharing settings: price, GPUs, CPU/RAM/disk per GPU, window, ..."""


@config.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.pass_obj
def config_show(cfg: Config, as_json):
    """Show every setting (defaults included)."""
    values = _settings(cfg)
    if as_json:
        click.echo(json.dumps(values))
        return
    for key, (_, _, help_) in settings_mod.SPEC.items():
        click.echo(f"{key:15} {settings_mod.shown(key, values[key]) or chr(39) * 2:20}  {help_}")


@config.command("set")
@click.argument("key")
@click.argument("value")
@click.pass_obj
def config_set(cfg: Config, key, value):
    """Set KEY to VALUE (a running hostd picks it up within seconds)."""
    cfg.home.mkdir(parents=True, exist_ok=True)
    try:
        if key == "power_limit":
            _power_in_range(cfg, settings_mod.parse(key, value))
        values = settings_mod.save(cfg.home / "settings.json", key, value)
    except settings_mod.SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    shown = settings_mod.shown(key, values[key]) if key.startswith("bandwidth") else values[key]
    click.echo(f"{key} = {shown}")


def _power_in_range(cfg: Config, watts: int) -> None:
    """Refuse a power limit some shared GPU cannot take, naming the range it can."""
    if not watts:
        return
    values = settings_mod.load(cfg.home / "settings.json")
    source = _source(cfg, values)
    shared = None if values["gpus"] == "all" else {int(i) for i in values["gpus"].split(",")}
    try:
        for g in source.gpus():
            if g.get("uuid") and not g.get("error") and (shared is None or g["index"] in shared):
                lo, hi, _ = source.power_range(g["uuid"])
                if not lo <= watts <= hi:
                    raise settings_mod.SettingsError(
                        f"bad value {watts} for power_limit: GPU {g['index']} ({g['name']}) takes {lo:g}-{hi:g} W")
    except gpus_mod.GpuError as exc:
        raise settings_mod.SettingsError(f"cannot check power_limit against the GPUs: {exc}") from None


@main.group("firewall")
def firewall_group():
    """The egress policy for lease containers (installed by `hostd run`)."""


@firewall_group.command("show")
def firewall_show():
    """Print hostd's iptables chains."""
    click.echo(firewall.show() or "not installed", nl=False)


@firewall_group.command("remove")
def firewall_remove():
    """Remove hostd's chains (on uninstall; lease containers can then reach this machine and its LAN)."""
    firewall.remove()
    click.echo("egress policy removed")


@main.command()
@click.pass_obj
def pause(cfg: Config):
    """Take no new rentals; running ones continue."""
    settings_mod.save(cfg.home / "settings.json", "paused", "true")
    click.echo("paused: no new rentals; running leases continue")


@main.command()
@click.pass_obj
def resume(cfg: Config):
    """Take new rentals again."""
    settings_mod.save(cfg.home / "settings.json", "paused", "false")
    click.echo("resumed: taking new rentals")
