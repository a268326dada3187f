"""What every `broker` subcommand shares: clean one-line failures, the store it opens, and the
option and argument types (hours, --json, --db)."""
from functools import wraps

import click

from shellrent.keys import material

from . import leases, render
from .config import Config
from .errors import BrokerError
from .store import opening


def fail_cleanly(fn):
    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (BrokerError, material.KeyError_, ValueError) as exc:
            raise click.ClickException(str(exc)) from None
    return wrapper


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


def print_table(rows: list[dict], cols: list[str]) -> None:
    click.echo(render.table(rows, cols), nl=False)


def config_of(ctx) -> Config:
    return ctx.obj


def open_store(ctx):
    cfg = config_of(ctx)
    return opening.open_store(cfg.home, cfg.db_path, cfg.db_url or opening.url_of(cfg.home))


db_option = click.option("--db", "db_url", default=None, envvar="BROKER_DB", metavar="URL",
                         help="A PostgreSQL database (postgresql://...) instead of broker.db in the home; "
                              "init remembers it (env BROKER_DB).")


class Hours(click.ParamType):
    """Hours as ctl takes them (2, 1.5, 90m, 1d); NaN, infinity and absurd values are usage errors."""
    name = "hours"

    def convert(self, value, param, ctx):
        try:
            return leases.parse_duration(value) / 3600
        except BrokerError as exc:
            self.fail(str(exc), param, ctx)
