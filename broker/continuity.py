"""ctl's commands for carrying on: `workspaces` (the renter's kept workspaces), `rent --workspace
LEASE` (a new lease on the host that keeps LEASE's /workspace, with those files) and `extend LEASE
--auto on|off` (auto-extend); a part of broker.commands.Commands."""
import time

from . import render
from .errors import BrokerError, NoOffer, NotFound
from .logins import SeveralLeases
from .views import lease_view, when
from .workspaces import kept, usable


class Continuity:
    async def cmd_workspaces(self, args, **_):
        if args.words:
            raise BrokerError("usage: workspaces [--json]")
        leases = await self.b.accounts.leases(self.renter)
        names = {lease["host"] for lease in leases if lease["state"] == "ended"}
        hosts = {}
        for name in names:
            try:
                hosts[name] = await self.b.db(self.b.store.host, name)
            except NotFound:
                pass
        rows = kept(leases, hosts, time.time())
        if args.json:
            return render.as_json(rows)
        if not rows:
            return "no kept workspaces: a lease's /workspace is kept for a while after it ends\n"
        table = [{**r, "ended": when(r["ended"]), "until": when(r["until"])} for r in rows]
        return render.table(table, ["lease", "host", "gpu_name", "size_gb", "ended", "until"],
                            ["lease", "host", "gpu", "size_gb", "ended", "kept until"]) + \
            f"rent with one: {self.where.ssh('ctl')} rent --workspace {rows[-1]['lease']} --hours 1\n"

    async def workspace_host(self, args) -> str:
        """rent --workspace LEASE: the host that keeps it (the renter's own ended lease, still kept);
        the image defaults to that lease's."""
        lease_id = args.opts["--workspace"]
        if args.words:
            raise BrokerError("rent --workspace takes no query: the lease's host is the one that keeps it")
        try:
            old = await self.b.accounts.lease(lease_id)
        except NotFound:
            old = None
        host = None
        if old is not None and old["renter"] == self.renter:
            try:
                host = await self.b.db(self.b.store.host, old["host"])
            except NotFound:
                pass
        usable(old, self.renter, host, time.time(), lease_id)
        args.opts.setdefault("--image", old["image"])
        return old["host"]

    async def no_room(self, args, host: str, gpus: int, exc: NoOffer) -> BrokerError:
        """Why a rent --workspace found no offer on its host: offline, or not enough GPUs free."""
        if not await self.b.reach.link(host):
            return BrokerError(f"host {host}, which keeps the workspace of lease {args.opts['--workspace']}, is "
                               f"offline now: try again when it is back ({self.where.ssh('ctl')} workspaces "
                               f"says how long it is kept)")
        free = max([o["num_gpus"] for o in await self.b.offers(f"host_id={host}", None)] or [0])
        return BrokerError(f"host {host} has {free} GPU(s) free now, not {gpus}: "
                           + (f"rent with --gpus {free}, or later" if free else "try again later")
                           + f" (see: {self.where.ssh('ctl')} offers host_id={host})")

    async def auto(self, args) -> str:
        """extend [LEASE] --auto on|off."""
        value = args.opts["--auto"]
        if value not in ("on", "off") or len(args.words) > 1:
            raise BrokerError("usage: extend [LEASE] --auto on|off")
        try:
            lease = await self.b.set_auto(self.renter, args.words[0] if args.words else None, value == "on")
        except SeveralLeases as exc:
            raise BrokerError(exc.say_which(f"extend {{}} --auto {value}")) from None
        view = lease_view(lease, time.time())
        return self._out(args, view, f"lease {lease['id']}: auto-extend {view['auto_extend']}; "
                                     f"{view['left']} left\n")
