"""`broker` commands about renters and money: renters and their credit, the ledger, signup codes and
vouchers (on the store directly; the broker need not run)."""
import json
import os
import time

import click

from . import accounts, codes, leases
from .cli_base import Hours, fail_cleanly, json_option, open_store, print_table
from .commands import VOUCHER_PREFIX
from .errors import BrokerError
from .signup import SIGNUP_PREFIX


@click.group()
def renter():
    """Manage renters."""


@renter.command("add")
@click.argument("name")
@click.option("--key", "key_file", required=True, type=click.File("r"), help="Public key file ('-' for stdin).")
@click.pass_context
@fail_cleanly
def renter_add(ctx, name, key_file):
    """Register renter NAME with the public key in FILE."""
    fpr = accounts.add_renter(open_store(ctx), name, key_file.read())
    click.echo(f"renter {name} added, key {fpr}")


@renter.command("list")
@json_option
@click.pass_context
@fail_cleanly
def renter_list(ctx, as_json):
    """List renters."""
    rows = open_store(ctx).renters()
    click.echo(json.dumps(rows)) if as_json else print_table(rows, ["name", "keys", "created"])


CREDIT_CAP = 10_000  # credits one command adds without --yes (BROKER_CREDIT_CAP)


def _amount(text: str, yes: bool, verb: str) -> int:
    """Micro-credits from AMOUNT as typed: one line for anything but a positive decimal under the cap."""
    amount = leases.parse_credits(text)
    if amount <= 0:
        raise BrokerError("the amount must be more than zero"
                          + ("; to take credit back: broker renter debit NAME AMOUNT" if verb == "credit" else ""))
    cap = leases.parse_credits(os.environ.get("BROKER_CREDIT_CAP", str(CREDIT_CAP)))
    if amount > cap and not yes:
        raise BrokerError(f"{leases.credits(amount)} credits is more than {leases.credits(cap)} (BROKER_CREDIT_CAP): "
                          f"add --yes if you mean it")
    return amount


@renter.command("credit", context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.argument("amount")
@click.option("--yes", is_flag=True, help="Allow an amount over BROKER_CREDIT_CAP.")
@click.pass_context
@fail_cleanly
def renter_credit(ctx, name, amount, yes):
    """Add AMOUNT credits (e.g. 25 or 12.50) to renter NAME."""
    amount = _amount(amount, yes, "credit")
    balance = accounts.credit(open_store(ctx), name, amount)
    click.echo(f"renter {name}: +{leases.credits(amount)} credits, balance {leases.credits(balance)}")


@renter.command("debit", context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.argument("amount")
@click.option("--yes", is_flag=True, help="Allow an amount over BROKER_CREDIT_CAP.")
@click.pass_context
@fail_cleanly
def renter_debit(ctx, name, amount, yes):
    """Take AMOUNT credits back from renter NAME (never below zero; held credit is not touched)."""
    amount = _amount(amount, yes, "debit")
    balance = accounts.credit(open_store(ctx), name, -amount)
    click.echo(f"renter {name}: -{leases.credits(amount)} credits, balance {leases.credits(balance)}")


@click.command("ledger")
@click.option("--renter", "renter_name", help="Only transactions of this renter.")
@json_option
@click.pass_context
@fail_cleanly
def ledger_cmd(ctx, renter_name, as_json):
    """The double-entry journal and account balances."""
    store = open_store(ctx)
    if renter_name:
        store.require_renter(renter_name)
    txs = store.journal(renter_name)
    if as_json:
        click.echo(json.dumps({"transactions": txs, "balances": store.balances()}))
        return
    rows = [{"tx": t["id"], "when": t["created"], "kind": t["kind"], "lease": t["lease"],
             "account": e["account"], "amount": leases.credits(e["amount"]), "memo": t["memo"]}
            for t in txs for e in t["entries"]]
    print_table(rows, ["tx", "when", "kind", "lease", "account", "amount", "memo"])
    click.echo()
    print_table([{"account": a, "balance": leases.credits(v)} for a, v in store.balances().items()],
                 ["account", "balance"])


_count_option = click.option("--count", type=click.IntRange(1, 10000), default=1, show_default=True,
                             help="How many codes.")


@click.group("signup-code")
def signup_code():
    """Codes for `ssh signup@broker NAME CODE` (with BROKER_SIGNUP=code)."""


@signup_code.command("create")
@_count_option
@click.option("--expires", type=Hours(), default=None, metavar="DURATION",
              help="Valid for this long (e.g. 7d, 12h); default: until used.")
@click.pass_context
@fail_cleanly
def signup_code_create(ctx, count, expires):
    """Make COUNT single-use signup codes, one per line (only their hashes are kept)."""
    made = [codes.new(SIGNUP_PREFIX) for _ in range(count)]
    until = time.time() + expires * 3600 if expires else None
    open_store(ctx).add_signup_codes([codes.digest(SIGNUP_PREFIX, c) for c in made], until)
    if os.environ.get("BROKER_SIGNUP", "closed") != "code":
        click.echo("note: the broker takes these only with BROKER_SIGNUP=code", err=True)
    click.echo("\n".join(made))


@click.group()
def voucher():
    """Credit vouchers renters redeem with `ssh ctl@broker redeem CODE`."""


@voucher.command("create", context_settings={"ignore_unknown_options": True})
@click.argument("amount")
@_count_option
@click.option("--yes", is_flag=True, help="Allow an amount over BROKER_CREDIT_CAP.")
@click.option("--expires", type=Hours(), default=None, metavar="DURATION",
              help="Valid for this long (e.g. 30d, 12h); default: until redeemed.")
@click.pass_context
@fail_cleanly
def voucher_create(ctx, amount, count, yes, expires):
    """Make COUNT single-use vouchers of AMOUNT credits each, one code per line."""
    amount = _amount(amount, yes, "voucher")
    made = [codes.new(VOUCHER_PREFIX) for _ in range(count)]
    until = time.time() + expires * 3600 if expires else None
    open_store(ctx).add_vouchers([codes.digest(VOUCHER_PREFIX, c) for c in made], amount, until)
    click.echo("\n".join(made))


@voucher.command("list")
@json_option
@click.pass_context
@fail_cleanly
def voucher_list(ctx, as_json):
    """Vouchers made: a short id of each (not the code), amount, expiry, who redeemed it."""
    rows = open_store(ctx).vouchers()
    if as_json:
        click.echo(json.dumps(rows))
        return
    print_table([{**r, "amount": leases.credits(r["amount"]), "renter": r["renter"] or "-"} for r in rows],
                 ["id", "amount", "created", "expires", "redeemed", "renter"])


COMMANDS = [renter, ledger_cmd, signup_code, voucher]
