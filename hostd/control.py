"""hostd's control calls from the broker (hello, welcome, reject, clock, earnings, image.pull and the
lease calls), each checked at the edge; every call but the first three waits for the welcome."""
import asyncio
import json
import logging
import time

from shellrent.common import protocol

from . import offload
from .inventory import VERSION
from .pulls import PullError


log = logging.getLogger("shellrent.hostd")


class JoinError(Exception):
    """Joining the broker failed; str() is the reason."""


class Control:
    """The calls one hostd answers; `d` is the daemon (hostd.agent) whose parts they drive."""

    def __init__(self, daemon, token: str | None):
        self._d = daemon
        self._token = token
        self.host_name: str | None = None  # the broker's name for this host, once welcomed
        self.rejected: str | None = None  # why the broker refused the last connection
        self.epoch = 0  # the highest epoch a broker welcomed this host at: a call of a lower one is refused
        self.joined = daemon.loop.create_future()
        self._ops = {"hello": self._hello, "welcome": self._welcome, "reject": self._reject,
                     "clock": self._clock, "earnings": self._earnings, "image.pull": self._image_pull,
                     "lease.start": self._lease_start, "lease.stop": self._lease_stop,
                     "lease.extend": self._lease_extend, "lease.auto": self._lease_auto, "lease.discard": self._lease_discard,
                     "brokers": self._brokers, "inventory.verdict": self._inventory_verdict}

    async def call(self, req: dict, channel=None) -> dict:
        op = req.get("op")
        handler = self._ops.get(op) if isinstance(op, str) else None
        if handler is None:
            return {"ok": False, "error": f"unknown op {protocol.printable(str(op))[:40]!r}"}
        if op not in ("hello", "welcome", "reject") and self.host_name is None:
            return {"ok": False, "error": f"{op} before welcome"}
        epoch = req.get("epoch")
        if epoch is None and self.epoch and op not in ("hello", "reject"):
            return {"ok": False, "error": f"{op} without an epoch: a broker of this host's cluster sends its epoch"}
        if epoch is not None and (not protocol.number_in(epoch, 0, 1 << 62, True) or epoch < self.epoch):
            return {"ok": False, "error": f"stale broker: its epoch {protocol.printable(str(epoch))[:20]} is below "
                                          f"{self.epoch}, another broker drives this host now"}
        if epoch is not None:
            self.epoch = epoch  # the broker took this host again: a higher epoch from now on
        reply = await handler(req)
        if op == "welcome" and channel is not None:
            self._d.outbox.attach(channel)
        return reply

    def detach(self, channel) -> None:
        self._d.outbox.detach(channel)

    async def _hello(self, req):
        d = self._d
        leases = {r["id"]: {"state": r["state"], "ended_at": r.get("ended_at"), "ends_at": r.get("ends_at"),
                            "downs": json.loads(r.get("downs") or "[]")[-100:]}
                  for r in d.store.all()} if d.store else {}
        inv = None
        if d.inventory:
            inv = d.inventory.last = await offload.call(d.inventory.read, timeout=30)
        return {"ok": True, "proto": protocol.PROTO, "version": VERSION, "token": self._token, "epoch": self.epoch,
                "leases": leases,
                "inventory": inv, "time": d.clock.host()}

    async def _welcome(self, req):
        self.host_name = protocol.name(req.get("host"), "host name")
        self._d.learn_brokers(req.get("brokers"))
        self._clock_from(req)
        self._d.status.set(connected=True, host=self.host_name, since=time.time(), error=None, epoch=self.epoch)
        if not self.joined.done():
            self.joined.set_result(self.host_name)
        return {"ok": True}

    async def _brokers(self, req):
        """The cluster's brokers changed: where their tunnels are now (dialled when this one is lost)."""
        self._d.learn_brokers(req.get("brokers"))
        return {"ok": True}

    async def _clock(self, req):
        """The broker measures this machine's clock (the reply's time) and says what it measured before."""
        self._clock_from(req)
        return {"ok": True, "time": self._d.clock.host()}

    def _clock_from(self, req: dict) -> None:
        if req.get("offset") is None:
            return
        try:
            moved = self._d.clock.set(req["offset"])
        except ValueError as exc:
            raise protocol.WireError(str(exc)) from None
        if moved and self._d.leases:
            self._d.leases.clock_moved()

    async def _reject(self, req):
        error = protocol.printable(str(req.get("error") or "the broker refused this host"))[:300]
        self.rejected = error
        self._d.status.set(connected=False, error=error)
        if not self.joined.done():
            self.joined.set_exception(JoinError(error))
        if req.get("banned") is True and self.epoch and req.get("epoch") is None:
            log.warning("a ban without an epoch from a broker of this host's cluster: its leases run on")
        elif req.get("banned") is True and self._d.leases:  # the operator's ban: the renters' containers stop
            active = [rec["id"] for rec in self._d.store.all() if rec["state"] == "active"]
            if active:
                log.warning("banned by the broker: ending %d lease(s)", len(active))
            for lease_id in active:
                asyncio.get_running_loop().create_task(self._d.leases.end(lease_id, why="banned"))
        return {"ok": True}

    async def _inventory_verdict(self, req):
        """The broker took this host's inventory (error null), or refused it and says why."""
        error = req.get("error")
        self._d.status.set(inventory_error=None if error is None else protocol.printable(str(error))[:300])
        return {"ok": True}

    async def _earnings(self, req):
        earned = req.get("earned", 0)
        if isinstance(earned, bool) or not isinstance(earned, int):
            raise protocol.WireError("bad earnings")
        self._d.status.set(earned=earned)
        return {"ok": True}

    async def _image_pull(self, req):
        """Pull a listed image for a rent, sending its progress as pull.progress events; answered
        when it is here. Only listed images: a renter never has a provider pull an image of its own."""
        image = protocol.image(req.get("image"))
        listed = self._d.settings()["images"]
        if image not in protocol.image_list(listed):
            return {"ok": False, "error": f"image {image!r} is not listed on this host (listed: {listed})"}
        try:  # one relay per pull, however many rents wait
            await self._d.pulls.pull(image, self._relay_pull)
        except PullError as exc:
            return {"ok": False, "error": f"pulling {image} failed: {exc}"}
        return {"ok": True}

    def _relay_pull(self, view: dict) -> None:  # the same bound method each time: Pulls relays it once
        self._d.emit({"type": "pull.progress", **view})

    async def _lease_start(self, req):
        return await self._d.starts.start(req)

    async def _lease_stop(self, req):
        d, lease_id = self._d, protocol.lease_id(req.get("id"))
        await d.starts.wait(lease_id)  # stopped while its container is being made: stop it once made
        rec = d.store.get(lease_id)
        if not rec:
            return {"ok": True, "state": "absent"}
        await d.leases.end(lease_id, why=protocol.end_reason(req.get("why")) or "released")
        rec = d.store.get(lease_id)
        return {"ok": True, "state": rec["state"], "ended_at": rec.get("ended_at")}

    async def _lease_extend(self, req):
        try:
            self._d.leases.extend(protocol.lease_id(req.get("id")),
                                  protocol.timestamp(req.get("ends_at"), "end time"))
        except ValueError as exc:
            return {"ok": False, "error": str(exc)}
        return {"ok": True}

    async def _lease_auto(self, req):
        """Whether the broker auto-extends the lease, and why it cannot when it cannot (the warnings say it)."""
        note = protocol.printable(str(req.get("note") or ""))[:300]
        try:
            self._d.leases.set_auto(protocol.lease_id(req.get("id")), req.get("auto") is True, note)
        except ValueError as exc:
            return {"ok": False, "error": str(exc)}
        return {"ok": True}

    async def _lease_discard(self, req):
        lease_id = protocol.lease_id(req.get("id"))
        await self._d.starts.wait(lease_id)  # its container is being made: discard it once it is
        await self._d.leases.discard(lease_id)
        return {"ok": True}
