"""hostd's tunnel to the broker: dialled out from this machine (the broker is the SSH client of the
server hostd runs on it), kept up with jittered exponential backoff, moved to another broker of the
cluster when one is lost, and the one-time join."""
import asyncio
import logging
import random
import re

import asyncssh

from shellrent.common import algorithms, flow, protocol
from shellrent.keys import tokens

from .control import JoinError
from .sshserver import HostServer

log = logging.getLogger("shellrent.agent")
CIPHERS = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com"]
MAX_BROKERS = 16
CONNECT_TIMEOUT = 10  # seconds to reach a broker and finish the handshake; then the next one is tried
HOSTNAME = re.compile(r"[A-Za-z0-9_.:-]{1,253}")


async def connect(agent, host: str, port: int) -> asyncssh.SSHServerConnection:
    flow.mend_windows()
    return await asyncio.wait_for(asyncssh.connect_reverse(host, port, **algorithms.server(
        server_factory=lambda: HostServer(agent.broker_fingerprint, agent.control, agent.sessionhost),
        server_host_keys=[agent.key], signature_algs=algorithms.HOST_KEYS, encoding=None, line_editor=False,
        encryption_algs=CIPHERS, x11_forwarding=False, agent_forwarding=False, allow_scp=False,
        keepalive_interval=agent.config.keepalive, keepalive_count_max=3, login_timeout=30,
        server_version="shellrent-hostd")), CONNECT_TIMEOUT)


def brokers_from(raw) -> list[list]:
    """The brokers' tunnel addresses a welcome lists ([host, port] each; at most MAX_BROKERS); a
    malformed entry is left out."""
    out = []
    for item in raw[:MAX_BROKERS] if isinstance(raw, list) else []:
        if isinstance(item, list) and len(item) == 2 and isinstance(item[0], str) and HOSTNAME.fullmatch(item[0]) \
                and protocol.number_in(item[1], 1, 65535, True):
            out.append([item[0], item[1]])
    return out


def candidates(first: list, learned: list) -> list[list]:
    """Where to dial: the address joined (or given), then the brokers last learned, each once."""
    seen, out = set(), []
    for addr in [first, *learned]:
        if tuple(addr) not in seen:
            seen.add(tuple(addr))
            out.append(list(addr))
    return out


def next_dial(addrs: list[list], last: list | None) -> list:
    """The address to dial after `last` (lost, or failed): the one after it in the list, never it
    again while there is another (it may be the broker that died); the first when it is not listed."""
    if last not in addrs:
        return addrs[0]
    return addrs[(addrs.index(last) + 1) % len(addrs)]


async def stay_connected(agent, host: str, port: int) -> None:
    """Keep a tunnel to a live broker: after a drop, the next broker of the cluster (the address
    given, then those its brokers last named) after a short random wait, so that a broker's death
    is no reconnect storm; full-jitter exponential backoff once every address has failed in turn.
    The status says why it is down."""
    config, status, failures, last = agent.config, agent.status, 0, None
    while True:
        agent.control.rejected = None
        addrs = candidates([host, port], (config.load_pin() or {}).get("brokers", []))
        dial = addrs[0] if last is None else next_dial(addrs, last)
        try:
            conn = await connect(agent, *dial)
        except (OSError, asyncssh.Error, asyncio.TimeoutError) as exc:
            status.set(connected=False, error=f"connect to {dial[0]}:{dial[1]} failed: {exc or type(exc).__name__}")
            failures += 1
        else:
            status.set(via=f"{dial[0]}:{dial[1]}")
            await conn.wait_closed()
            if status.get("connected"):
                failures = 0
            else:
                failures += 1
            status.set(connected=False, error=agent.control.rejected or "connection closed")
        last = dial
        rounds = max(0, failures - 1) // len(addrs)
        delay = random.uniform(0, min(config.backoff_max, config.backoff_base * 2 ** min(rounds, 30)))
        log.info("reconnecting in %.1fs (last tried %s:%d)", delay, dial[0], dial[1])
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
