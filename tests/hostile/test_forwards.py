"""Port forwards: each connect runs on its own and is bounded, so one renter's forwards into a full
listen backlog never delay another renter's forward. Real broker, hostd, Docker; asyncssh clients."""
import asyncio
import time

import asyncssh
import pytest

pytestmark = [pytest.mark.docker, pytest.mark.hostile]

# A listener that never accepts, with the smallest backlog: connects to it hang in SYN.
CLOGGED = ("nohup python3 -c 'import socket,time; s=socket.socket(); s.bind((\"127.0.0.1\",9999)); s.listen(0); "
           "time.sleep(3600)' >/dev/null 2>&1 &")
SERVER = "nohup python3 -m http.server 8000 --bind 127.0.0.1 >/dev/null 2>&1 &"


async def _client(c, user: str) -> asyncssh.SSHClientConnection:
    return await asyncssh.connect("127.0.0.1", c.ssh_port, username=user, known_hosts=str(c.root / "known_hosts"),
                                  client_keys=[asyncssh.read_private_key(str(c.key))])


async def _listening(conn, port: int) -> None:
    for _ in range(100):
        try:
            _, writer = await conn.open_connection("localhost", port)
            writer.close()
            return
        except asyncssh.ChannelOpenError:
            await asyncio.sleep(0.1)
    raise AssertionError(f"nothing listens on {port}")


async def test_a_clogged_forward_never_delays_another_lease(fresh_cluster):
    c = fresh_cluster
    await asyncio.to_thread(c.add_host, "pc1")
    a, b = await asyncio.to_thread(c.create_lease), await asyncio.to_thread(c.create_lease)
    for lease, cmd in ((a, CLOGGED), (b, SERVER)):
        assert (await asyncio.to_thread(c.ssh, cmd, user=f"rent+{lease}")).returncode == 0
    conn_a, conn_b = await _client(c, f"rent+{a}"), await _client(c, f"rent+{b}")
    try:
        await _listening(conn_b, 8000)
        started = time.monotonic()
        clogged = [asyncio.create_task(conn_a.open_connection("localhost", 9999)) for _ in range(8)]
        await asyncio.sleep(0.5)  # a's connects are under way and hanging
        _, writer = await conn_b.open_connection("localhost", 8000)
        took = time.monotonic() - started
        writer.close()
        assert took < 3, f"b's forward waited {took:.1f}s behind a's"
        results = await asyncio.wait_for(asyncio.gather(*clogged, return_exceptions=True), 20)
        bounded = time.monotonic() - started
        assert bounded < 15, f"a's connects took {bounded:.1f}s to give up"
        for result in results:  # the first may have made it into the backlog; the rest give up
            assert isinstance(result, (tuple, asyncssh.ChannelOpenError)), result
        assert any(isinstance(r, asyncssh.ChannelOpenError) for r in results)
    finally:
        conn_a.close()
        conn_b.close()
