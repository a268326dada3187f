"""Renter -> control plane. The broker relays only what a renter may ask for, and hostd takes control
calls on its control channel only. Each end is broken alone to show the other still holds: a broker
that relays anything (FakeBroker, with the real broker's pinned key, against the real hostd) and a
host that accepts anything (FakeHost, against the real broker). Real processes, Docker and OpenSSH."""
import asyncio
import json
import signal

import asyncssh
import pytest

from shellrent.common import protocol

from ..cluster import IMAGE, Cluster, wait_for
from .fakehost import FakeBroker, FakeHost, inventory

pytestmark = [pytest.mark.docker, pytest.mark.hostile]

REFUSED = "shellrent: subsystem {!r} is not available (only sftp is)"


def _state(c, lease: str) -> str:
    return next(x["state"] for x in json.loads(c.broker("lease", "list", "--json").stdout) if x["id"] == lease)


def test_renter_cannot_reach_control_through_the_relay(cluster):
    c = cluster
    for sub in (protocol.CONTROL, "shellrent-control-v1", "shellrent-events-v1", "netconf"):
        r = c.ssh(sub, opts=["-s"], input=b'{"op":"hello","call":1}\n{"op":"lease.discard","id":"%s"}\n'
                  % c.lease.encode())
        assert r.returncode == 2, r
        assert r.stderr.decode().strip() == REFUSED.format(sub)
        assert r.stdout == b""
    # The lease env var is the broker's to set: a renter's own value never reaches hostd.
    r = c.ssh("echo $LC_X-$SHELLRENT_LEASE-", opts=["-o", "SetEnv=SHELLRENT_LEASE=00000000 LC_X=ok"])
    assert r.stdout.decode().strip() == "ok--"
    # Forwards: only ports on the container's localhost; no remote forwards.
    r = c.ssh(opts=["-W", "10.9.9.9:80"])
    assert r.returncode == 255 and b"forwarding failed" in r.stderr
    r = c.ssh(opts=["-N", "-o", "ExitOnForwardFailure=yes", "-R", "0:localhost:22"])
    assert r.returncode == 255 and b"forwarding failed" in r.stderr
    # Nothing was touched: the lease runs, its container too, and the shell still works.
    assert _state(c, c.lease) == "active"
    assert len(c.containers()) == 1
    assert c.ssh("hostname", check=True).stdout.decode().strip() == f"rent-{c.lease}"


async def _fake_broker(c) -> FakeBroker:
    """Stop the real broker and put a FakeBroker on its tunnel port; the real hostd reconnects to it."""
    epoch = json.loads(c.hostd("pc1", "status", "--json").stdout)["epoch"]  # the real broker's, last
    await asyncio.to_thread(c.kill, "broker", signal.SIGTERM)
    fake = FakeBroker(c.bhome / "tunnel_client_ed25519_key", epoch)
    await fake.listen(c.tunnel_port)
    await asyncio.wait_for(fake.connected.wait(), 30)
    return fake


async def _refused(conn, **kw) -> None:
    with pytest.raises(asyncssh.ChannelOpenError):
        await conn.open_session(**kw)


async def test_hostd_holds_when_the_broker_relays_anything(fresh_cluster, tmp_path):
    c = fresh_cluster
    await asyncio.to_thread(c.add_host, "pc1")
    lease = await asyncio.to_thread(c.create_lease)
    fake = await _fake_broker(c)
    try:
        # A first channel that is not control: refused, and control can no longer be had on this link.
        writer, reader, stderr = await fake.conn.open_session(command="id", env={protocol.LEASE_ENV: lease})
        assert b"no control channel" in await stderr.read()
        await _refused(fake.conn, subsystem=protocol.CONTROL)
        fake.conn.close()
        fake.connected.clear()
        await asyncio.wait_for(fake.connected.wait(), 30)  # hostd dials again

        await fake.open_control()
        hello = await fake.call("hello")
        assert hello["ok"] and lease in hello["leases"]
        assert (await fake.call("welcome", host="pc1"))["ok"]
        # Control on any later channel, as a relayed renter channel would ask: refused by hostd.
        for sub in (protocol.CONTROL, "shellrent-control-v1", "shellrent-events-v1"):
            await _refused(fake.conn, subsystem=sub)
        # Ids and paths from the network are checked before any use.
        pwned = tmp_path / "pwned"
        bad = [{"id": f"../../../../..{pwned}"}, {"renter": "../x"}, {"image": "img;rm -rf /"},
               {"gpus": ["$(reboot)"]}, {"ends_at": float("1e300")}, {"id": "ABCDEF12"}]
        for over in bad:
            start = {"id": "0123abcd", "renter": "bob", "image": IMAGE, "ends_at": 4e9, "gpus": [], **over}
            reply = await fake.call("lease.start", lease=start)
            assert reply["ok"] is False and reply["error"].startswith("bad control call: bad "), reply
        for op in ("lease.stop", "lease.discard", "lease.extend"):
            reply = await fake.call(op, id="../../etc", ends_at=1)
            assert reply["ok"] is False and "bad lease id" in reply["error"]
        assert not pwned.exists()
        assert not list((c.hostd_homes["pc1"] / "leases").glob("*pwned*"))
        reply = await fake.call("shell", command="id")
        assert reply == {"ok": False, "error": "unknown op 'shell'", "call": 1}
        # A renter session naming no valid lease, or a forward off the container's loopback: refused.
        for env in ({protocol.LEASE_ENV: "../../etc"}, {}):
            writer, reader, stderr = await fake.conn.open_session(command="id", env=env)
            assert "names no valid lease" in (await stderr.read()).decode()
        with pytest.raises(asyncssh.ChannelOpenError):
            await fake.conn.open_connection(protocol.target(lease, "10.0.0.1"), 80)
        # While a well-formed session still reaches the lease's container.
        writer, reader, _ = await fake.conn.open_session(command="hostname", env={protocol.LEASE_ENV: lease})
        assert (await reader.read()).decode().strip() == f"rent-{lease}"
    finally:
        fake.close()
    await asyncio.to_thread(c.start_broker)
    await asyncio.to_thread(c.wait_connected, "pc1")
    r = await asyncio.to_thread(c.ssh, "hostname")
    assert r.stdout.decode().strip() == f"rent-{lease}"
    assert _state(c, lease) == "active"


async def test_broker_holds_when_the_host_accepts_anything(fresh_cluster):
    c = fresh_cluster
    token = c.broker("host", "invite", "evil").stdout.decode().splitlines()[-1]
    host = FakeHost(token, inventory(gpus=[], shared=[]))
    await host.connect(c.tunnel_port)
    try:
        lease = await asyncio.to_thread(c.create_lease, "evil")
        attempts = [dict(opts=["-s"], command=[protocol.CONTROL]), dict(opts=["-s"], command=["anything"]),
                    dict(opts=["-o", "SetEnv=SHELLRENT_LEASE=00000000 PATH=/evil LANG=C"], command=["true"]),
                    dict(opts=["-N", "-o", "ExitOnForwardFailure=yes", "-R", "0:localhost:22"], command=[]),
                    dict(opts=["-W", "10.1.2.3:80"], command=[]), dict(opts=["-W", "localhost:8888"], command=[])]
        for a in attempts:
            await asyncio.to_thread(c.ssh, *a["command"], opts=a["opts"], timeout=30)
        sessions = [ch for ch in host.channels if ch["kind"] == "session"]
        assert [(s["command"], s["subsystem"]) for s in sessions] == [("true", None)]
        env = sessions[0]["env"]
        assert env[protocol.LEASE_ENV] == lease and "PATH" not in env
        assert set(env) <= {protocol.LEASE_ENV, "LANG"} | {k for k in env if k.startswith("LC_")}
        forwards = [ch for ch in host.channels if ch["kind"] != "session"]
        assert forwards == [{"kind": "direct-tcpip", "dest": protocol.target(lease, "localhost"), "port": 8888}]
        ops = [call["op"] for call in host.calls]  # the verdict on its inventory comes when it comes
        assert [op for op in ops if op != "inventory.verdict"] == ["hello", "welcome", "earnings", "lease.start"]
        assert "inventory.verdict" in ops
    finally:
        host.close()
    wait_for(lambda: _state(c, lease) == "active", what="the lease to stay active")


async def test_sessions_and_forwards_share_one_limit_per_renter(tmp_path):
    c = Cluster(tmp_path / "c", env={"BROKER_SESSIONS_PER_RENTER": "4"})
    try:
        await asyncio.to_thread(c.start_broker)
        await asyncio.to_thread(c.add_host, "pc1")
        await asyncio.to_thread(c.create_lease)
        r = await asyncio.to_thread(c.ssh, "nohup python3 -m http.server 8000 --bind 127.0.0.1 >/dev/null 2>&1 &")
        assert r.returncode == 0
        key = asyncssh.read_private_key(str(c.key))
        async with asyncssh.connect("127.0.0.1", c.ssh_port, username="rent", client_keys=[key],
                                    known_hosts=str(c.root / "known_hosts")) as conn:
            async def forward():
                for _ in range(100):  # until the server in the container listens
                    try:
                        return await conn.open_connection("localhost", 8000)
                    except asyncssh.ChannelOpenError as exc:
                        if exc.code == asyncssh.OPEN_RESOURCE_SHORTAGE:
                            raise
                        await asyncio.sleep(0.1)
                raise AssertionError("the server in the container never listened")
            open_ = [await forward() for _ in range(4)]
            with pytest.raises(asyncssh.ChannelOpenError, match="too many open sessions and forwards"):
                await forward()
            with pytest.raises(asyncssh.ChannelOpenError):
                await conn.open_session(command="true")
            open_[0][1].close()
            await asyncio.sleep(0.5)
            open_.append(await forward())  # a closed forward gives its place back
            for _, writer in open_[1:]:
                writer.close()
    finally:
        await asyncio.to_thread(c.close)


async def test_a_renter_may_hold_only_so_many_connections_logged_in(tmp_path):
    c = Cluster(tmp_path / "c", env={"BROKER_CONNECTIONS_PER_RENTER": "3"})
    try:
        await asyncio.to_thread(c.start_broker)
        key = asyncssh.read_private_key(str(c.key))
        connect = lambda: asyncssh.connect("127.0.0.1", c.ssh_port, username="ctl", client_keys=[key],  # noqa: E731
                                           known_hosts=str(c.root / "known_hosts"))
        held = [await connect() for _ in range(3)]  # logged in, no session: each costs the broker memory
        refused = await asyncio.to_thread(c.ssh, "balance", user="ctl")
        assert refused.returncode == 255 and b"you have 3 connections open to this broker" in refused.stderr
        with pytest.raises((asyncssh.DisconnectError, asyncssh.PermissionDenied)):
            await connect()
        held.pop().close()
        await asyncio.sleep(0.5)
        ok = await asyncio.to_thread(c.ssh, "balance", user="ctl")  # a closed one gives its place back
        assert ok.returncode == 0, ok.stderr
        other = c.new_key("bob")
        await asyncio.to_thread(c.broker, "renter", "add", "bob", "--key", f"{other}.pub")
        assert (await asyncio.to_thread(c.ssh, "balance", user="ctl", key=other)).returncode == 0  # others unaffected
        for conn in held:
            conn.close()
    finally:
        await asyncio.to_thread(c.close)
