"""The peer port, attacked: a renter's key, a stranger's key, the broker's own renter-facing key, a
broker whose row went stale and a hostd dialling it are refused at authentication; a live broker
gets only what a broker may ask (a lease's channels, checked again; a launch; lease.extend)."""
import asyncio
import subprocess
import tempfile
from pathlib import Path

import asyncssh
import pytest

from shellrent.broker.peerlink import RPC
from shellrent.broker.store.postgres import Store as PgStore
from shellrent.common import protocol
from shellrent.keys import material

from ..cluster import Cluster

pytestmark = pytest.mark.hostile


@pytest.fixture
def peered(pg_server):
    url = pg_server.fresh_schema()
    c = Cluster(Path(tempfile.mkdtemp(prefix="shellrent-test-")), env={"BROKER_DB": url})
    try:
        c.start_broker("--peer", "127.0.0.1:0")
        c.url = url
        yield c
    finally:
        c.close()


async def _login(c, key, **kw):
    pinned = material.parse_public_key(material.public_line(
        material.load_or_create(c.bhome / "peer_ed25519_key")))
    return await asyncio.wait_for(asyncssh.connect(
        "127.0.0.1", c.info["peer"][1], username=kw.pop("username", "peer"), client_keys=[key],
        known_hosts=([pinned], [], []), **kw), 10)


def _as_broker(c, key, heartbeat=None) -> None:
    store = PgStore(c.url)
    try:
        store.register_broker("b-evil", "x:1", "x:2", "127.0.0.1:9", material.public_line(key))
        if heartbeat is not None:
            store._sql("UPDATE brokers SET heartbeat = ? WHERE id = 'b-evil'", [heartbeat])
    finally:
        store.close()


async def test_only_a_live_brokers_key_logs_in_on_the_peer_port(peered, tmp_path):
    c = peered
    r = subprocess.run(["ssh", "-p", str(c.info["peer"][1]), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                        "-o", f"UserKnownHostsFile={tmp_path / 'kh'}", "-i", str(c.key), "-o", "IdentitiesOnly=yes",
                        "peer@127.0.0.1", "true"], capture_output=True, timeout=30)
    assert r.returncode == 255 and b"Permission denied" in r.stderr  # the renter's key
    stranger = asyncssh.generate_private_key("ssh-ed25519")
    renter_facing = material.load_or_create(c.bhome / "ssh_host_ed25519_key")
    for key in (stranger, renter_facing):
        with pytest.raises(asyncssh.PermissionDenied):
            await _login(c, key)
    _as_broker(c, stranger, heartbeat=0.0)  # a row, but not heard from for ages
    await asyncio.sleep(1.1)  # the table is read again at most once a second for an unknown key
    with pytest.raises(asyncssh.PermissionDenied):
        await _login(c, stranger)
    _as_broker(c, stranger)
    await asyncio.sleep(1.1)
    with pytest.raises(asyncssh.PermissionDenied):
        await _login(c, stranger, username="rent")  # the user is `peer`, nothing else
    async with await _login(c, stranger) as conn:  # a live broker's key: in
        assert conn is not None
    with pytest.raises((OSError, asyncssh.Error, asyncio.TimeoutError)):  # a hostd dialling the peer port
        reverse = await asyncio.wait_for(asyncssh.connect_reverse(
            "127.0.0.1", c.info["peer"][1], server_host_keys=[stranger]), 10)
        await asyncio.wait_for(reverse.wait_closed(), 10)
        raise OSError("closed")


class _Lines(asyncssh.SSHClientSession):
    def __init__(self):
        self.data = b""

    def data_received(self, data, datatype):
        self.data += data


async def test_a_live_broker_gets_only_what_a_broker_may_ask(peered):
    c = peered
    key = asyncssh.generate_private_key("ssh-ed25519")
    _as_broker(c, key)
    await asyncio.sleep(1.1)
    async with await _login(c, key) as conn:
        for req in ({"verb": "call", "lease": "ab12cd34", "op": "lease.discard"},
                    {"verb": "shell", "lease": "ab12cd34"}, {"verb": "launch", "lease": "../etc"},
                    {"verb": "launch", "lease": "ab12cd34"}):
            chan, call = await conn.create_session(_Lines, subsystem=RPC, encoding=None)
            chan.write(protocol.encode(req))
            chan.write_eof()
            await asyncio.wait_for(chan.wait_closed(), 10)
            reply = protocol.decode(call.data.strip().splitlines()[-1])
            assert reply["ok"] is False and reply["error"], req
        chan, session = await conn.create_session(_Lines, "true", env={protocol.LEASE_ENV: "ab12cd34",
                                                                      "SHELLRENT_RENTER": "alice"}, encoding=None)
        await asyncio.wait_for(chan.wait_closed(), 10)
        assert chan.get_exit_status() == 2 and b"no lease 'ab12cd34'" in session.data  # refused, nothing ran
        for dest in ("10.0.0.1", "lease.ab12cd34/10.0.0.1", "lease.ab12cd34/localhost"):
            with pytest.raises(asyncssh.ChannelOpenError):
                await conn.create_connection(asyncssh.SSHTCPSession, dest, 22)
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.create_unix_connection(asyncssh.SSHTCPSession, "/var/run/docker.sock")
