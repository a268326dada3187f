"""Renters' open channels (sessions and forwards) by lease, so that a lease's end closes them and
metrics can count them."""


class ChannelRegistry:
    """Each tracked channel has .end(why); a lease's channels are closed together."""

    def __init__(self):
        self._by_lease: dict[str, set] = {}

    def track(self, lease_id: str, channel) -> None:
        channel.relayed_lease = lease_id
        self._by_lease.setdefault(lease_id, set()).add(channel)

    def untrack(self, channel) -> None:
        lease_id = getattr(channel, "relayed_lease", None)
        channels = self._by_lease.get(lease_id)
        if channels is not None:
            channels.discard(channel)
            if not channels:
                del self._by_lease[lease_id]

    def close_lease(self, lease_id: str, why: str) -> None:
        for channel in list(self._by_lease.pop(lease_id, ())):
            channel.end(why)

    def leases(self) -> set[str]:
        return set(self._by_lease)

    def all(self) -> list:
        return [ch for channels in self._by_lease.values() for ch in channels]
