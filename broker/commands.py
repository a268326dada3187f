"""`ssh ctl@broker <command>`: the marketplace and account commands.

Each command takes the renter and its arguments and returns (exit status, output). Bad input is a
one-line error and exit status 2; nothing changes.
"""
import logging
import shlex
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from shellrent.common import protocol
from shellrent.keys import material

from . import codes, hosts as hosts_mod, ledger, metrics, render
from .config import Where
from .continuity import Continuity
from .errors import BrokerError, KeyTaken, NoOffer, NotFound
from .leases import credits, format_duration, parse_duration
from .accounts import one_key
from .logins import SeveralLeases
from .views import costs, lease_view
from .renting import DEFAULT_IMAGE
from .service import Broker

audit = logging.getLogger("shellrent.audit")
VOUCHER_PREFIX = "CR"

HELP = """\
usage: {ctl} COMMAND [ARGS]   (add --json for JSON)
  offers [QUERY] [-o ORDER] [--all]  what can be rented now (the best 50 unless --all),
                                   e.g. offers 'gpu_ram>=24 dph<=1' -o dph
  rent [QUERY] --hours H [--gpus N] [--image IMG] [--auto-extend] [--yes]
                                   rent the best matching offer; then: {rent}
                                   --auto-extend: more time by itself before each end (an hour, or
                                   the lease's length if shorter) while your credit lasts
  rent --workspace LEASE --hours H [--gpus N] [--image IMG] [--auto-extend] [--yes]
                                   a new lease with an ended lease's /workspace (on its host)
  workspaces                       your ended leases' kept workspaces, and until when
  ls                               your leases
  show LEASE                       one lease and its charges
  extend [LEASE] DURATION          more time (90m, 2h, 1h30m, 1d)
  extend [LEASE] --auto on|off     auto-extend on or off
  release [LEASE]                  end now; unused time is refunded
  balance                          your credit and what is held for running leases
  history                          your transactions
  redeem CODE                      add a voucher's credit to your balance
  hosts | host invite NAME | host payout NAME
                                   your own GPU machines (where the operator allows it): list
                                   them, invite one (a join token for hostd), move its earnings
                                   to your credit
  keys list | keys add (key on stdin) | keys rm FINGERPRINT
  ssh-config                       ~/.ssh/config entries for your leases (ssh shellrent-LEASE, VS Code)
  config [tmux on|off]             your settings; tmux on: every shell attaches to the lease's tmux
  help                             this text
query fields: gpu_name num_gpus gpu_ram gpu_total_ram cpu_cores cpu_ram disk_space dph reliability
  cuda_vers driver_version geolocation host_id verified tflops inet_down inet_up; ops < <= = != >= > in notin; _ is a space
"""
_VALUE_OPTS = {"--hours", "--gpus", "--image", "-o", "--workspace", "--auto"}
_FLAGS = {"--json", "--yes", "-y", "--all", "--auto-extend"}
SHOWN = 50  # offers in the table unless --all: the best ones, then a line saying how many more

Ask = Callable[[str], Awaitable[str]]


class Usage(BrokerError):
    """The command line itself is wrong."""


@dataclass
class Args:
    words: list[str] = field(default_factory=list)
    opts: dict = field(default_factory=dict)
    json: bool = False
    yes: bool = False
    all: bool = False
    auto_extend: bool = False


def parse_args(tokens: list[str]) -> Args:
    args = Args()
    i = 0
    while i < len(tokens):
        t = tokens[i]
        name, eq, val = t.partition("=") if t.startswith("--") else (t, "", "")
        if name in _VALUE_OPTS:
            if not eq:
                if i + 1 >= len(tokens):
                    raise Usage(f"{name} needs a value")
                val = tokens[i + 1]
                i += 1
            args.opts[name] = val
        elif t in _FLAGS:
            args.json = args.json or t == "--json"
            args.yes = args.yes or t in ("--yes", "-y")
            args.all = args.all or t == "--all"
            args.auto_extend = args.auto_extend or t == "--auto-extend"
        elif t.startswith("--"):
            raise Usage(f"unknown option {t}")
        else:
            args.words.append(t)
        i += 1
    return args


def _gpus(args: Args) -> int:
    text = args.opts.get("--gpus", "1")
    if not (text.isascii() and text.isdigit() and len(text) <= 3):
        raise Usage(f"bad --gpus {text[:20]!r}: expected a whole number from 1 to 64")
    n = int(text)
    if not 1 <= n <= 64:
        raise Usage("--gpus must be from 1 to 64")
    return n


class Commands(Continuity):
    """One renter's ctl commands."""

    def __init__(self, broker: Broker, renter: str, where: Where | None = None,
                 address: tuple[str, int] | None = None):
        self.b = broker
        self.renter = renter
        # where this renter reached the broker (or BROKER_PUBLIC_HOST), for the commands it is told to type
        self.where = where or Where.of(getattr(getattr(broker, "config", None), "public_host", ""),
                                       address or ("localhost", 22))

    async def run(self, line: str, stdin: bytes = b"", ask: Ask | None = None, progress=None) -> tuple[int, str]:
        """Run one command line; (exit status, text to print)."""
        try:
            tokens = shlex.split(line)
        except ValueError as exc:
            return 2, f"ctl: cannot parse the command line: {exc}\n"
        if not tokens or tokens[0] in ("help", "-h", "--help"):
            return 0, HELP.format(ctl=self.where.ssh("ctl"), rent=self.where.ssh("rent"))
        name = tokens[0]
        handler = getattr(self, "cmd_" + name.replace("-", "_"), None)  # ssh-config: cmd_ssh_config
        if handler is None:
            return 2, f"ctl: unknown command {protocol.printable(name)[:40]!r}; try: {self.where.ssh('ctl')} help\n"
        started = time.perf_counter()
        try:
            return 0, await handler(parse_args(tokens[1:]), stdin=stdin, ask=ask, progress=progress)
        except BrokerError as exc:
            return 2, f"ctl: {exc}\n"
        finally:
            metrics.CTL.labels(metrics.command(name)).observe(time.perf_counter() - started)

    def _out(self, args: Args, value, text: str) -> str:
        return render.as_json(value) if args.json else text

    async def cmd_offers(self, args: Args, **_):
        offers = await self.b.offers(" ".join(args.words), args.opts.get("-o"))
        if not offers and not args.json:
            return f"no offer matches: {await self._why_none(' '.join(args.words))}\n"
        if args.json:
            hidden = ("gpus", "images", "price")
            return render.as_json([{k: v for k, v in o.items() if k not in hidden} for o in offers])
        shown = offers if args.all else offers[:SHOWN]
        rows = [{**o, "dph": f"{o['dph']:.2f}", "reliability": f"{o['reliability']:.3f}",
                 "tflops": f"{o['tflops']:g}" if o["verified"] else "-",
                 "inet_down": "-" if o.get("inet_down") is None else f"{o['inet_down']:g}"} for o in shown]
        more = len(offers) - len(shown)
        return render.table(
            rows, ["id", "gpu_name", "num_gpus", "gpu_ram", "cpu_cores", "cpu_ram", "disk_space", "dph",
                   "tflops", "inet_down", "reliability", "geolocation"],
            ["offer", "gpu", "n", "gpu_gb", "cpus", "ram_gb", "disk_gb", "$/h", "tflops", "mbit/s", "reliab", "geo"]) + \
            (f"... and {more:,} more: narrow the query, or add --all (or --json)\n" if more else "")

    async def _why_none(self, text: str) -> str:
        market = getattr(self.b, "market", None)
        return await market.why_none(text) if market else "none is on offer"

    async def cmd_rent(self, args: Args, ask: Ask | None = None, progress=None, **_):
        if "--hours" not in args.opts:
            raise Usage("rent needs --hours H (e.g. --hours 2 or --hours 90m)")
        seconds = parse_duration(args.opts["--hours"])
        gpus = _gpus(args)
        host = await self.workspace_host(args) if "--workspace" in args.opts else None
        try:
            image = protocol.image(args.opts.get("--image", DEFAULT_IMAGE))
        except protocol.WireError:
            raise Usage(f"--image: {protocol.printable(args.opts['--image'])[:80]!r} is not an image reference "
                        f"(e.g. pytorch/pytorch:2.3.1-cuda12.1-cudnn8-runtime)") from None
        text = f"host_id={host}" if host else " ".join(args.words)
        try:
            return await self._rent(args, text, seconds, gpus, image, ask, progress)
        except NoOffer as exc:
            if host:
                raise await self.no_room(args, host, gpus, exc) from None
            raise BrokerError(f"{exc} ({await self._why_none(text)})") from None

    async def _rent(self, args: Args, text: str, seconds: float, gpus: int, image: str, ask, progress) -> str:
        if not args.yes:
            offer, amount = await self.b.quote(text, seconds, gpus, image)
            what = (f"{gpus}x {offer['gpu_name']} on {offer['host_id']} for {format_duration(seconds)} "
                    f"at {credits(offer['price'] * gpus)}/h: {credits(amount)} credits held, unused time refunded"
                    + (", auto-extended while your credit lasts" if args.auto_extend else "")
                    + (f", with the workspace of lease {args.opts['--workspace']}" if "--workspace" in args.opts
                       else ""))
            if ask is None:
                raise Usage(f"{what}; add --yes to rent")
            if (await ask(f"Rent {what}? [y/N] ")).strip().lower() not in ("y", "yes"):
                raise BrokerError("not rented")
        lease = await self.b.rent(self.renter, text, seconds, gpus, image, progress, auto=args.auto_extend,
                                  workspace=args.opts.get("--workspace"))
        view = lease_view(lease, time.time())
        auto = f" (auto-extend {view['auto_extend']})" if lease.get("auto") else ""
        files = f"\n/workspace holds the files of lease {lease['workspace']}" if lease.get("workspace") else ""
        return self._out(args, view, f"lease {lease['id']} is active: {view['gpus']}x {view['gpu_name']} on "
                                     f"{view['host']} for {view['left']}{auto}{files}\n"
                                     f"connect: {self.where.ssh('rent+' + lease['id'])}\n")

    async def cmd_ls(self, args: Args, **_):
        if args.words:
            raise Usage("usage: ls [--json]")
        now, paid = time.time(), costs(await self.b.history(self.renter))
        rows = [lease_view(lease, now, paid.get(lease["id"], 0)) for lease in await self.b.accounts.leases(self.renter)
                if lease["state"] != "purged" or args.json]
        table = [{**r, "end": r.get("reason") or "-", "auto": r.get("auto_extend", "-")} for r in rows]
        return self._out(args, rows, render.table(table, ["id", "state", "host", "gpus", "gpu_name", "left",
                                                          "auto", "price_per_hour", "cost", "end"],
                                                  ["id", "state", "host", "gpus", "gpu", "left", "auto-extend",
                                                   "per_hour", "cost", "ended because"]))

    async def cmd_show(self, args: Args, **_):
        if len(args.words) != 1:
            raise Usage("usage: show LEASE")
        try:
            lease = await self.b.accounts.lease(args.words[0])
        except NotFound:
            lease = None
        if lease is None or lease["renter"] != self.renter:  # the same words whether it exists or not
            raise BrokerError(f"no lease {args.words[0]!r} for renter {self.renter}")
        txs = [t for t in await self.b.history(self.renter) if t["lease"] == lease["id"]]
        view = lease_view(lease, time.time(), costs(txs).get(lease["id"], 0))
        view["transactions"] = txs
        lines = "".join(f"{k:15} {render.cell(v)}\n" for k, v in view.items()
                        if k not in ("transactions", "ended") and not k.endswith("_micro"))
        return self._out(args, view, lines + "\n" + self._history_table(txs))

    async def cmd_extend(self, args: Args, **_):
        if "--auto" in args.opts:
            return await self.auto(args)
        if len(args.words) not in (1, 2):
            raise Usage("usage: extend [LEASE] DURATION")
        lease_id = args.words[0] if len(args.words) == 2 else None
        seconds = parse_duration(args.words[-1])
        try:
            lease = await self.b.extend(self.renter, lease_id, seconds)
        except SeveralLeases as exc:
            raise Usage(exc.say_which(f"extend {{}} {args.words[-1]}")) from None
        view = lease_view(lease, time.time())
        return self._out(args, view, f"lease {lease['id']} extended by {format_duration(seconds)}; "
                                     f"{view['left']} left\n")

    async def cmd_release(self, args: Args, **_):
        if len(args.words) > 1:
            raise Usage("usage: release [LEASE]")
        try:
            lease = await self.b.release(self.renter, args.words[0] if args.words else None)
        except SeveralLeases as exc:
            raise Usage(exc.say_which("release {}")) from None
        txs = await self.b.history(self.renter)  # read once: the refund and the cost
        refund, cost = self._refund(txs, lease["id"]), costs(txs).get(lease["id"], 0)
        view = lease_view(lease, time.time(), cost)
        return self._out(args, {**view, "refunded": credits(refund), "refunded_micro": refund},
                         f"lease {lease['id']} released after {view['billed']} billed: cost {credits(cost)} "
                         f"credits, {credits(refund)} refunded\n")

    def _refund(self, txs: list[dict], lid: str) -> int:
        for tx in txs:
            if tx["key"] == ledger.settle_key(lid):
                return sum(e["amount"] for e in tx["entries"] if e["account"] == ledger.renter(self.renter))
        return 0

    async def cmd_ssh_config(self, args: Args, **_):
        if args.words:
            raise Usage("usage: ssh-config")
        host, port = self.where.host, self.where.port
        leases = [lease for lease in await self.b.accounts.leases(self.renter) if lease["state"] == "active"]
        leases.sort(key=lambda lease: (lease["created"] if "created" in lease else 0, lease["id"]))
        entries = [{"host": f"shellrent-{lease['id']}", "hostname": host, "port": port, "user": f"rent+{lease['id']}",
                    "local_forward": f"{8888 + i} localhost:8888", "jupyter": f"http://localhost:{8888 + i}/",
                    "lease": lease["id"], "ends_at": lease["ends_at"]}
                   for i, lease in enumerate(leases)]  # each lease its own local port: they can run side by side
        text = "".join(
            f"Host {e['host']}\n    HostName {e['hostname']}\n    Port {e['port']}\n    User {e['user']}\n"
            f"    LocalForward {e['local_forward']}\n    ServerAliveInterval 30\n\n" for e in entries)
        header = (f"# shellrent: {self.renter}'s active leases, for OpenSSH and VS Code Remote-SSH. Keep it in a file\n"
                  f"# of its own and run this again to refresh it (it replaces the old entries):\n"
                  f"#   {self.where.ssh('ctl')} ssh-config > ~/.ssh/shellrent.conf\n"
                  f"# with this line once at the top of ~/.ssh/config:  Include shellrent.conf\n"
                  f"# then: ssh shellrent-LEASE. Jupyter on a lease's port 8888 appears on the local port its\n"
                  f"# LocalForward names (the first lease's on localhost:8888).\n\n")
        return self._out(args, entries, header + (text or f"# no active lease: rent one first "
                                                           f"({self.where.ssh('ctl')} rent --hours 1)\n"))

    async def cmd_config(self, args: Args, **_):
        if args.words and (len(args.words) != 2 or args.words[0] != "tmux" or args.words[1] not in ("on", "off")):
            raise Usage("usage: config | config tmux on|off")
        if args.words:
            await self.b.accounts.set_tmux(self.renter, args.words[1] == "on")
        conf = await self.b.accounts.settings(self.renter)
        return self._out(args, conf, f"tmux {'on' if conf['tmux'] else 'off'}: " + (
            "ssh rent@ attaches to (or starts) the lease's tmux session 'main'; ssh -t rent@ bash for a plain shell\n"
            if conf["tmux"] else "ssh rent@ opens a plain shell (config tmux on: one that survives a drop)\n"))

    async def cmd_balance(self, args: Args, **_):
        if args.words:
            raise Usage("usage: balance [--json]")
        b = await self.b.balance(self.renter)
        view = {"renter": self.renter, "balance": credits(b["balance"]), "held": credits(b["held"]),
                "balance_micro": b["balance"], "held_micro": b["held"]}
        return self._out(args, view, f"balance {view['balance']} credits; held for running leases {view['held']}\n")

    def _history_table(self, txs: list[dict]) -> str:
        rows = []
        for t in txs:
            mine = {e["account"]: e["amount"] for e in t["entries"]}
            rows.append({"when": t["created"], "kind": t["kind"], "lease": t["lease"],
                         "balance_change": credits(mine.get(ledger.renter(self.renter), 0)),
                         "held_change": credits(mine.get(ledger.hold_account(self.renter), 0)), "memo": t["memo"]})
        return render.table(rows, ["when", "kind", "lease", "balance_change", "held_change", "memo"])

    async def cmd_history(self, args: Args, **_):
        if args.words:
            raise Usage("usage: history [--json]")
        txs = await self.b.history(self.renter)
        return self._out(args, txs, self._history_table(txs))

    async def cmd_redeem(self, args: Args, **_):
        if len(args.words) != 1:
            raise Usage("usage: redeem CODE")
        amount, balance = await self.b.accounts.redeem(self.renter, codes.digest(VOUCHER_PREFIX, args.words[0]),
                                                       time.time())
        audit.info("redeem renter=%s amount=%s", self.renter, credits(amount))
        return self._out(args, {"added": credits(amount), "balance": credits(balance), "added_micro": amount,
                                "balance_micro": balance},
                         f"voucher redeemed: +{credits(amount)} credits; balance {credits(balance)}\n")

    async def cmd_hosts(self, args: Args, **_):
        if args.words:
            raise Usage("usage: hosts [--json]")
        rows = await self.b.renter_hosts.hosts(self.renter)
        table = [{**r, "online": "yes" if r["online"] else ("banned" if r["banned"] else "no"),
                  "earned": credits(r["earned_micro"]), "note": r["refused"] or ("" if r["joined"] else "not joined yet")}
                 for r in rows]
        return self._out(args, rows, render.table(table, ["host", "online", "gpus", "leases", "earned", "note"]) if rows
                         else f"you have no hosts; add one: {self.where.ssh('ctl')} host invite NAME\n")

    async def cmd_host(self, args: Args, **_):
        sub = args.words[0] if args.words else ""
        if sub not in ("invite", "payout") or len(args.words) != 2:
            raise Usage("usage: host invite NAME | host payout NAME")
        name = args.words[1]
        if sub == "invite":
            token = await self.b.renter_hosts.invite(self.renter, name)
            where = hosts_mod.join_address(self.b.config)
            audit.info("host-invite renter=%s host=%s", self.renter, name)
            return self._out(args, {"host": name, "token": token, "join": where},
                             f"On your GPU machine, within 24 hours, run:\n  hostd join {where} {token}\n"
                             f"then: hostd run (see {self.where.ssh('ctl')} hosts)\n")
        amount, balance = await self.b.renter_hosts.pay_out(self.renter, name)
        audit.info("payout renter=%s host=%s amount=%s", self.renter, name, credits(amount))
        return self._out(args, {"moved": credits(amount), "moved_micro": amount, "balance": credits(balance),
                                "balance_micro": balance},
                         f"moved {credits(amount)} credits of {name}'s earnings to your balance: {credits(balance)}\n")

    async def cmd_keys(self, args: Args, stdin: bytes = b"", **_):
        sub = args.words[0] if args.words else "list"
        if sub == "list" and len(args.words) <= 1:
            rows = await self.b.accounts.keys(self.renter)
            return self._out(args, rows, render.table(rows, ["fingerprint", "added"]))
        if sub == "add":
            key = one_key(stdin.decode(errors="replace"))
            try:
                await self.b.accounts.add_key(self.renter, key)
            except KeyTaken:
                raise BrokerError("that key cannot be added") from None  # never say whose it is
            return f"key {material.fingerprint(key)} added\n"
        if sub == "rm" and len(args.words) == 2:
            await self.b.accounts.remove_key(self.renter, args.words[1])
            return f"key {args.words[1]} removed\n"
        raise Usage("usage: keys list | keys add (public key on stdin) | keys rm FINGERPRINT")
