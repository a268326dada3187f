"""hostd's tunnel to the broker: dialled out from this machine (the broker is the SSH client of the
server hostd runs on it), kept up with jittered exponential backoff, and the one-time join."""
import asyncio
import logging
import random

import asyncssh

from shellrent.common import algorithms, flow
from shellrent.keys import tokens

from .control import JoinError
from .sshserver import HostServer

log = logging.getLogger("shellrent.agent")
CIPHERS = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com"]


async def connect(agent, host: str, port: int) -> asyncssh.SSHServerConnection:
    flow.mend_windows()
    return await asyncio.wait_for(asyncssh.connect_reverse(host, port, **algorithms.server(
        server_factory=lambda: HostServer(agent.broker_fingerprint, agent.control, agent.sessionhost),
        server_host_keys=[agent.key], signature_algs=algorithms.HOST_KEYS, encoding=None, line_editor=False,
        encryption_algs=CIPHERS, x11_forwarding=False, agent_forwarding=False, allow_scp=False,
        keepalive_interval=agent.config.keepalive, keepalive_count_max=3, login_timeout=30,
        server_version="shellrent-hostd")), 30)


async def stay_connected(agent, host: str, port: int) -> None:
    """Reconnect after any drop, exponential backoff with full jitter; the status says why it is down."""
    config, status, attempt = agent.config, agent.status, 0
    while True:
        agent.control.rejected = None
        try:
            conn = await connect(agent, host, port)
        except (OSError, asyncssh.Error, asyncio.TimeoutError) as exc:
            status.set(connected=False, error=f"connect failed: {exc or type(exc).__name__}")
        else:
            await conn.wait_closed()
            if status.get("connected"):
                attempt = 0
            status.set(connected=False, error=agent.control.rejected or "connection closed")
        delay = random.uniform(0, min(config.backoff_max, config.backoff_base * 2 ** attempt))
        attempt = min(attempt + 1, 30)
        log.info("reconnecting to %s:%d in %.1fs", host, port, delay)
        await asyncio.sleep(delay)


async def join(config, host: str, port: int, token: str) -> str:
    """Register this machine with the broker once; returns the host name the broker gave it."""
    from .agent import Agent
    try:
        secret, fpr = tokens.split(token)
    except tokens.TokenError as exc:
        raise JoinError(str(exc)) from None
    if config.load_pin():
        raise JoinError(f"{config.home} has already joined a broker; use a new --home to join again")
    agent = Agent(config, fpr, token=secret)
    try:
        conn = await connect(agent, host, port)
    except asyncio.TimeoutError:
        raise JoinError(f"no broker answered at {host}:{port} (timed out)") from None
    except (OSError, asyncssh.Error) as exc:
        raise JoinError(f"cannot join the broker at {host}:{port}: {exc}") from None
    try:
        name = await asyncio.wait_for(asyncio.shield(agent.control.joined), 30)
    except asyncio.TimeoutError:
        raise JoinError(f"the server at {host}:{port} did not complete the join (is it a shellrent broker?)") from None
    finally:
        conn.close()
    config.save_pin({"addr": [host, port], "fingerprint": fpr, "host": name})
    return name
