"""A route names the lease it reaches and opens channels only into that lease's container."""
from shellrent.broker.route import Route
from shellrent.common import protocol


class _Tunnel:  # records what the relay asked of the host's connection
    def __init__(self):
        self.calls = []

    async def create_session(self, factory, **kw):
        self.calls.append(("session", kw))
        return "chan", "session"

    async def create_connection(self, factory, host, port, orig_host, orig_port, **kw):
        self.calls.append(("tcp", host, port, orig_host, orig_port, kw))
        return "chan", "tcp"


async def test_a_route_opens_sessions_and_forwards_in_its_lease_only():
    tunnel = _Tunnel()
    route = Route("ab12cd34", "gpu-box", tunnel)
    assert await route.open_session(object, env={"X": "1"}) == ("chan", "session")
    assert await route.open_forward(object, "localhost", 8888, ("127.0.0.1", 5000), window=1) == ("chan", "tcp")
    assert tunnel.calls == [("session", {"env": {"X": "1"}}),
                            ("tcp", protocol.target("ab12cd34", "localhost"), 8888, "127.0.0.1", 5000, {"window": 1})]
    assert protocol.parse_target(tunnel.calls[1][1]) == ("ab12cd34", "localhost")
    assert "gpu-box" in repr(route) and "ab12cd34" in repr(route)
