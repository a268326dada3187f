"""The way to a lease's container: the lease, its host and the tunnel that reaches it, as the relay
uses it to open sessions and port forwards there. Today the tunnel is a host's own connection to this
broker; a route through another broker can stand behind the same two calls."""
from shellrent.common import protocol


class Route:
    def __init__(self, lease: str, host: str, tunnel):
        self.lease = lease
        self.host = host
        self._tunnel = tunnel  # the host's SSH connection (an asyncssh client connection)

    async def open_session(self, factory, **kw):
        """A session channel to the lease's container on its host: (channel, session)."""
        return await self._tunnel.create_session(factory, **kw)

    async def open_forward(self, factory, dest_host: str, port: int, orig: tuple[str, int], **kw):
        """A direct-tcpip channel to dest_host:port (a loopback name) inside the lease's container."""
        return await self._tunnel.create_connection(factory, protocol.target(self.lease, dest_host), port, *orig,
                                                    **kw)

    def __repr__(self) -> str:
        return f"Route(lease={self.lease!r}, host={self.host!r})"
