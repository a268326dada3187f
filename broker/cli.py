"""`broker` command line: builds a Config and calls the service or the server, nothing more."""
import asyncio
import json
import logging
import os
import pwd
from pathlib import Path

import click

from shellrent.common import logs, systemd
from shellrent.common.protocol import END_REASONS
from shellrent.keys import material

from . import admin, cli_money, hosts, leases, proxyproto, renting
from .cli_base import Hours, config_of, db_option, fail_cleanly, json_option, open_store, print_table
from .config import Config, parse_addr
from .errors import BrokerError
from .server import BrokerServer
from .signup import check_policy
from .store import opening


@click.group(context_settings={"auto_envvar_prefix": "BROKER", "help_option_names": ["-h", "--help"]})
@click.option("--home", type=click.Path(file_okay=False, path_type=Path), default="/var/lib/shellrent-broker",
              show_default=True, help="State directory (env BROKER_HOME).")
@click.pass_context
def main(ctx, home):
    """shellrent broker: renters' SSH front door and hosts' tunnel end."""
    ctx.obj = Config(home=home.absolute())


@main.command()
@db_option
@click.option("--keys-from", "keys_from", type=click.Path(file_okay=False, path_type=Path), default=None,
              metavar="DIR", help="Another broker of the same database: take its renter-facing host key and "
                                  "the tunnel key hosts pin (this broker gets its own peer key).")
@click.pass_context
@fail_cleanly
def init(ctx, db_url, keys_from):
    """Create the state directory, keys and database (idempotent)."""
    cfg = config_of(ctx)
    url = opening.check_url(db_url) if db_url else opening.url_of(cfg.home)
    if db_url:
        opening.check_switch(cfg.home, cfg.db_path, url)
    if keys_from:
        _check_keys_from(cfg, keys_from, url)
    cfg.home.mkdir(parents=True, exist_ok=True)
    os.chmod(cfg.home, 0o700)
    opening.open_store(cfg.home, cfg.db_path, url, create=True).close()  # the schema, before the keys
    if url:
        opening.remember(cfg.home, url)
    if keys_from:
        other = Config(home=keys_from.absolute())
        for src, dst in ((other.host_key_path, cfg.host_key_path), (other.client_key_path, cfg.client_key_path)):
            if not dst.exists():
                material.copy_private(src, dst)
    host_key = material.load_or_create(cfg.host_key_path)
    client_key = material.load_or_create(cfg.client_key_path)
    peer_key = material.load_or_create(cfg.peer_key_path)
    click.echo(f"broker home {cfg.home}" + (" (its database: PostgreSQL)" if url else ""))
    click.echo(f"ssh host key   {material.fingerprint(host_key)}")
    click.echo(f"tunnel key     {material.fingerprint(client_key)}")
    click.echo(f"peer key       {material.fingerprint(peer_key)}")


def _check_keys_from(cfg: Config, keys_from: Path, url: str | None) -> None:
    """Before anything is made: another broker's home with both keys, a shared database, and no
    keys of this home's own that differ."""
    if not url:
        raise BrokerError("--keys-from makes another broker of one database: give --db with that database's URL")
    other = Config(home=keys_from.absolute())
    for src, dst in ((other.host_key_path, cfg.host_key_path), (other.client_key_path, cfg.client_key_path)):
        if not src.exists():
            raise BrokerError(f"{keys_from} is not a broker home: it has no {src.name}")
        if dst.exists() and material.fingerprint(material.load_or_create(dst)) != \
                material.fingerprint(material.load_or_create(src)):
            raise BrokerError(f"{cfg.home} already has a {dst.name} of its own: --keys-from needs a new home")


@main.command()
@click.option("--ssh", "ssh_addr", default="0.0.0.0:2222", show_default=True, help="Renter SSH address.")
@click.option("--tunnel", "tunnel_addr", default="0.0.0.0:2223", show_default=True, help="hostd tunnel address.")
@click.option("--fee-percent", type=click.IntRange(0, 100), default=None, help="Platform fee (env BROKER_FEE_PERCENT, default 10).")
@click.option("--metrics", "metrics_addr", default=None, metavar="HOST:PORT",
              help="Serve Prometheus /metrics and /healthz here, e.g. 127.0.0.1:9464 (off by default).")
@click.option("--peer", "peer_addr", default=None, metavar="HOST:PORT",
              help="Serve with the other brokers of one PostgreSQL database: their link to this one listens here.")
@click.option("--advertise", default=None, metavar="HOST",
              help="The name or address other brokers and hosts reach this one at (default: the --peer host).")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@db_option
@click.pass_context
@fail_cleanly
def serve(ctx, ssh_addr, tunnel_addr, fee_percent, metrics_addr, peer_addr, advertise, verbose, db_url):
    """Serve renters and hosts until SIGINT/SIGTERM."""
    cfg = config_of(ctx)
    cfg.db_url = opening.url_of(cfg.home, db_url)
    if peer_addr:
        if not cfg.db_url:
            raise BrokerError("--peer serves one database with other brokers: give --db postgresql://...")
        cfg.peer_addr = parse_addr(peer_addr)
        cfg.advertise = advertise or (cfg.peer_addr[0] if cfg.peer_addr[0] not in ("0.0.0.0", "::") else "")
        if not cfg.advertise:
            raise BrokerError("--peer on all addresses: give --advertise HOST, where the others reach this broker")
    elif advertise:
        raise BrokerError("--advertise goes with --peer")
    cfg.metrics_addr = parse_addr(metrics_addr) if metrics_addr else None
    if fee_percent is not None:
        cfg.fee_percent = fee_percent
    open_store(ctx).close()
    proxyproto.networks(cfg.proxy_from)  # a bad BROKER_PROXY_FROM is one line before anything starts
    check_policy(cfg.signup)  # and a bad BROKER_SIGNUP
    cfg.ssh_addr, cfg.tunnel_addr = parse_addr(ssh_addr), parse_addr(tunnel_addr)
    logs.setup(verbose)
    logging.getLogger("shellrent.audit").addHandler(logs.audit_handler(cfg.audit_log))
    asyncio.run(BrokerServer(cfg).run())


@main.group("service")
def service_group():
    """Run the broker as a systemd service."""


@service_group.command("install")
@click.option("--ssh", "ssh_addr", default="0.0.0.0:2222", show_default=True, help="Renter SSH address.")
@click.option("--tunnel", "tunnel_addr", default="0.0.0.0:2223", show_default=True, help="hostd tunnel address.")
@click.option("--fee-percent", type=click.IntRange(0, 100), default=None, help="Platform fee.")
@click.option("--metrics", "metrics_addr", default=None, metavar="HOST:PORT", help="Serve /metrics here.")
@click.option("--print", "only_print", is_flag=True, help="Print the unit; write nothing.")
@click.option("--unit-dir", type=click.Path(file_okay=False, path_type=Path), default=str(systemd.UNIT_DIR),
              show_default=True, hidden=True)
@click.pass_context
@fail_cleanly
def service_install(ctx, ssh_addr, tunnel_addr, fee_percent, metrics_addr, only_print, unit_dir):
    """Write /etc/systemd/system/shellrent-broker.service: `serve` with these addresses, restarted on
    failure, as the owner of the home directory (allowed to bind ports below 1024)."""
    cfg = config_of(ctx)
    if not cfg.host_key_path.exists():
        raise BrokerError(f"{cfg.home} has no broker: run `broker --home {cfg.home} init` first")
    for addr in (ssh_addr, tunnel_addr, *([metrics_addr] if metrics_addr else [])):
        parse_addr(addr)
    argv = [systemd.program("broker"), "--home", str(cfg.home), "serve", "--ssh", ssh_addr, "--tunnel", tunnel_addr]
    argv += ["--fee-percent", str(fee_percent)] if fee_percent is not None else []
    argv += ["--metrics", metrics_addr] if metrics_addr else []
    owner = pwd.getpwuid(cfg.home.stat().st_uid).pw_name
    try:
        text = systemd.unit("shellrent broker: renters' ssh, hosts' tunnels, the market and the ledger", argv, [], {
            "User": owner, "AmbientCapabilities": "CAP_NET_BIND_SERVICE",
            "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE", "NoNewPrivileges": "yes", "ProtectSystem": "full",
            "LimitNOFILE": "65536", **({"PrivateTmp": "yes"} if systemd.private_tmp_ok(cfg.home) else {})},
            "shellrent-broker")
    except systemd.UnitError as exc:
        raise BrokerError(str(exc)) from None
    click.echo(systemd.install("shellrent-broker", text, unit_dir, only_print), nl=False)


@main.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.pass_context
@fail_cleanly
def backup(ctx, file):
    """Copy the database to FILE, consistent and safe while the broker serves (docs/operator.md says how to restore)."""
    if file.exists():
        raise BrokerError(f"{file} already exists: name a new file")
    if opening.url_of(config_of(ctx).home):
        raise BrokerError("this broker's database is PostgreSQL: back it up with PostgreSQL's own tools "
                          "(pg_dump, or the server's backups); see docs/operator.md")
    counts = open_store(ctx).backup(file)
    click.echo(f"backed up {config_of(ctx).db_path} to {file}: {counts['leases']} leases, {counts['txs']} "
               f"transactions, {counts['renters']} renters")


@main.group()
def host():
    """Manage provider hosts."""


@host.command("invite")
@click.argument("name")
@click.pass_context
@fail_cleanly
def host_invite(ctx, name):
    """Make a single-use join token for host NAME (valid 24 h); printed alone on the last line."""
    cfg = config_of(ctx)
    store = open_store(ctx)
    broker_fpr = material.fingerprint(material.load_or_create(cfg.client_key_path))
    token = hosts.invite(store, cfg, name, broker_fpr)
    click.echo(f"On the provider's machine, within 24 hours, run: hostd join {hosts.join_address(cfg)} "
               f"<token below>", err=True)
    click.echo(token)


@host.command("list")
@json_option
@click.pass_context
@fail_cleanly
def host_list(ctx, as_json):
    """List hosts (online = connected to the running broker)."""
    rows = open_store(ctx).hosts()
    cols = ["name", "owner", "joined", "last_seen", "banned", "inventory_error"]
    click.echo(json.dumps(rows)) if as_json else print_table(rows, cols)


@host.command("ban")
@click.argument("name")
@click.pass_context
@fail_cleanly
def host_ban(ctx, name):
    """Refuse host NAME from now on (takes effect on its next connection)."""
    open_store(ctx).ban_host(name)
    click.echo(f"host {name} banned")


@main.group()
def lease():
    """Admin lease commands (the marketplace is `ssh ctl@broker`)."""


@lease.command("create")
@click.option("--renter", required=True)
@click.option("--host", "host_name", required=True)
@click.option("--hours", required=True, type=Hours(), help="2, 1.5, 90m, 1d")
@click.option("--image", default=renting.DEFAULT_IMAGE, show_default=True)
@json_option
@click.pass_context
@fail_cleanly
def lease_create(ctx, renter, host_name, hours, image, as_json):
    """Start a lease's container on a host and print the lease id."""
    cfg = config_of(ctx)
    reply = admin.request(cfg.admin_socket, {"op": "lease.create", "renter": renter, "host": host_name,
                                             "hours": hours, "image": image})
    lease = reply["lease"]
    click.echo(json.dumps(lease) if as_json else lease["id"])


@lease.command("list")
@json_option
@click.pass_context
@fail_cleanly
def lease_list(ctx, as_json):
    """List leases: state, end, why it ended and what it cost."""
    store = open_store(ctx)
    rows = [{**lease, "cost_micro": store.charged(lease["id"])} for lease in store.leases()]
    if as_json:
        click.echo(json.dumps(rows))
        return
    print_table([{**r, "cost": leases.credits(r["cost_micro"]), "why": END_REASONS.get(r.get("reason") or "", "-")
                  if r["state"] in ("ended", "purged") else "-"} for r in rows],
                ["id", "renter", "host", "state", "gpu_name", "ends_at", "ended", "why", "cost"])


@lease.command("stop")
@click.argument("lease_id")
@click.pass_context
@fail_cleanly
def lease_stop(ctx, lease_id):
    """End a lease now (its container stops; /workspace is kept)."""
    admin.request(config_of(ctx).admin_socket, {"op": "lease.stop", "id": lease_id})
    click.echo(f"lease {lease_id} stopped")


for _group in cli_money.COMMANDS:
    main.add_command(_group)
