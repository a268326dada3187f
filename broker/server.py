"""The broker process: renter SSH listener, host tunnel listener, admin socket, housekeeping."""
import asyncio
import json
import logging
import os
import signal
from collections import defaultdict

import asyncssh

from shellrent.common import algorithms, flow, metrics as common_metrics
from shellrent.keys import material

from . import ciphers, metrics, proxyproto
from .admin import AdminServer
from .config import Config
from .quickack import QuickAckListener
from .service import Broker
from .sshserver import AuthLimiter, RenterServer
from .startups import Startups
from .store import opening
from .tunnels import Tunnels

# chacha20-poly1305 is OpenSSH's first choice but costs the broker a new cipher object and a
# Python-level poly1305 setup per packet; AES-GCM is one call into OpenSSL with AES-NI. Every
# OpenSSH since 6.2 speaks AES-GCM; aes-ctr covers older clients.
RENTER_CIPHERS = ciphers.WIDE  # AES-GCM to every client that has it (broker.ciphers)

log = logging.getLogger("shellrent.broker")
DRAIN = 3.0  # seconds the background tasks under way get to finish when the broker stops


class BrokerServer:
    """Owns the listeners and background tasks; stops within a bounded time."""

    def __init__(self, config: Config):
        self.config = config
        self._stop = asyncio.Event()
        self._closers = []

    async def start(self) -> dict:
        cfg = self.config
        host_key = material.load_or_create(cfg.host_key_path)
        client_key = material.load_or_create(cfg.client_key_path)
        self.broker = Broker(cfg, opening.open_store(cfg.home, cfg.db_path, cfg.db_url))
        self.broker.store.hold_serving()
        self.tunnels = Tunnels(client_key, self.broker.identify_host, cfg.keepalive,
                               self.broker.host_connected, self.broker.host_disconnected, self.broker.event,
                               Startups(cfg.max_startups, cfg.max_startups_per_ip))
        self.tunnels.login_timeout = cfg.login_timeout
        self.broker.tunnels = self.tunnels
        await self.broker.recover()
        tunnel_port = await self.tunnels.listen(*cfg.tunnel_addr)
        limiter = AuthLimiter(cfg.auth_fail_limit, cfg.auth_fail_window, cfg.auth_block_for)
        sessions = defaultdict(int)
        startups = Startups(cfg.max_startups, cfg.max_startups_per_ip)
        ciphers.install()
        flow.mend_windows()
        ssh = await asyncssh.create_server(
            lambda: RenterServer(self.broker, limiter, sessions, startups), *cfg.ssh_addr,
            **algorithms.server(
                server_host_keys=[host_key], encoding=None, line_editor=False, encryption_algs=RENTER_CIPHERS,
                login_timeout=cfg.login_timeout, keepalive_interval=cfg.keepalive * 4,
                x11_forwarding=False, agent_forwarding=False, allow_scp=False,
                server_version="shellrent", tunnel=QuickAckListener(startups, proxyproto.networks(cfg.proxy_from))))
        admin = AdminServer(cfg.admin_socket, self.broker)
        await admin.start()
        self._closers = [ssh.close, admin.close]
        if cfg.metrics_addr:
            served = await common_metrics.serve(*cfg.metrics_addr, metrics.REGISTRY,
                                              lambda: metrics.refresh(self.broker))
            self._closers.append(served.close)
            info_metrics = [cfg.metrics_addr[0], served.sockets[0].getsockname()[1]]
        self._housekeeping = asyncio.get_running_loop().create_task(self._expire_loop())
        info = {"pid": os.getpid(), "ssh": [cfg.ssh_addr[0], ssh.sockets[0].getsockname()[1]],
                "tunnel": [cfg.tunnel_addr[0], tunnel_port]}
        if cfg.metrics_addr:
            info["metrics"] = info_metrics
        (cfg.home / "serve.json").write_text(json.dumps(info))
        log.info("listening: renters on %s:%d, hosts on %s:%d", *info["ssh"], *info["tunnel"])
        return info

    async def _expire_loop(self):
        while True:
            try:
                await self.broker.housekeeping()
            except Exception:
                log.exception("housekeeping failed")
            await asyncio.sleep(self.config.housekeeping)

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Serve until SIGINT/SIGTERM. Containers on hosts keep running."""
        await self.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop)
        await self._stop.wait()
        log.info("shutting down")
        self._housekeeping.cancel()
        for close in self._closers:
            close()
        await self.broker.tasks.drain(DRAIN)  # a release or start under way writes its records first
        await self.tunnels.close()
        (self.config.home / "serve.json").unlink(missing_ok=True)
        self.broker.close()
