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


class _Link:
    def __init__(self):
        self.conn = _Tunnel()


class _Links:
    def __init__(self, hosts):
        self.links = hosts

    def get(self, name):
        return self.links.get(name)


class _Conn:
    def get_extra_info(self, name):
        return ("127.0.0.1", 4242)


class _Owners:
    """The peer link as Reach uses it: routes through the broker named by the heartbeat's owner rows."""

    async def route(self, owner, lease, host, renter):
        from shellrent.broker.peerlink import PeerRoute
        return PeerRoute(lease, host, renter, _Tunnel(), owner["broker"])


async def test_a_login_takes_two_store_round_trips_direct_or_through_another_broker(tmp_path):
    """The key (asked twice by OpenSSH: the query, then the signed request) and the renter's leases:
    two calls on the store thread, whether the host's tunnel is here or on another broker."""
    import asyncssh

    from shellrent.broker.config import Config
    from shellrent.broker.service import Broker
    from shellrent.broker.sshserver import AuthLimiter, RenterServer
    from shellrent.broker.signup import SignupLimiter
    from shellrent.broker.startups import Startups
    from shellrent.broker.store import Store
    from shellrent.keys import material

    key = asyncssh.generate_private_key("ssh-ed25519")
    store = Store(tmp_path / "b.db")
    b = Broker(Config(home=tmp_path), store, _Links({"pc1": _Link()}), peers=_Owners())
    try:
        store.add_renter("alice", material.fingerprint(key), material.public_line(key))
        for lid, host in (("ab12cd34", "pc1"), ("cd34ab12", "pc2")):
            store.insert_lease({"id": lid, "renter": "alice", "host": host, "image": "x", "state": "active",
                                "created": 1.0, "ends_at": 4e9, "gpus": []})
        b.cluster.owners = {"pc2": {"host": "pc2", "broker": "b-other", "peer": "x:1", "peer_key": "k"}}
        b.cluster.fresh = lambda: True  # as right after a heartbeat
        calls = []
        submit = b._db._pool.submit

        def counted(fn, *args):  # every store call goes through the store thread's pool
            calls.append(getattr(fn, "__name__", "?"))
            return submit(fn, *args)
        b._db._pool.submit = counted
        for lid, kind in (("ab12cd34", "Route"), ("cd34ab12", "PeerRoute")):
            calls.clear()
            server = RenterServer(b, AuthLimiter(20, 60, 300), {}, Startups(10, 10), SignupLimiter())
            server.connection_made(_Conn())
            server.begin_auth(f"rent+{lid}")
            assert await server.validate_public_key(f"rent+{lid}", key)  # the query
            assert await server.validate_public_key(f"rent+{lid}", key)  # the signed request
            route = await server._target()
            assert type(route).__name__ == kind and route.lease == lid
            assert calls == ["renter_by_key", "leases"], calls
    finally:
        b.close()
