"""The broker process: renter SSH listener, host tunnel listener, admin socket, housekeeping."""
import asyncio
import json
import logging
import os
import signal
import time
from collections import defaultdict

import asyncssh

from shellrent.common import algorithms, flow, metrics as common_metrics
from shellrent.keys import material

from . import ciphers, cluster as cluster_mod, metrics, proxyproto, relay
from .admin import AdminServer
from .config import Config, parse_addr
from .peerlink import CIPHERS as PEER_CIPHERS, Peers
from .peerserver import PeerServer
from .quickack import QuickAckListener
from .service import Broker
from .signup import SignupLimiter
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


def _named(host: str) -> str:
    """A bound address hosts can dial back, or '' for a wildcard one."""
    return "" if host in ("0.0.0.0", "::", "") else host


class BrokerServer:
    """Owns the listeners and background tasks; stops within a bounded time."""

    def __init__(self, config: Config):
        self.config = config
        self._stop = asyncio.Event()
        self._closers = []
        self._told = None  # the brokers' tunnels the hosts were last told

    async def start(self) -> dict:
        cfg = self.config
        host_key = material.load_or_create(cfg.host_key_path)
        client_key = material.load_or_create(cfg.client_key_path)
        peer_key = material.load_or_create(cfg.peer_key_path)
        self.peers = Peers(peer_key) if cfg.peer_addr else None
        self.broker = Broker(cfg, opening.open_store(cfg.home, cfg.db_path, cfg.db_url), peers=self.peers)
        self.broker.store.hold_serving(shared=bool(cfg.peer_addr))
        self.tunnels = Tunnels(client_key, self.broker.identify_host, cfg.keepalive,
                               self.broker.host_connected, self.broker.host_disconnected, self.broker.event,
                               Startups(cfg.max_startups, cfg.max_startups_per_ip), welcome=self.broker.welcome_host,
                               now=self.broker.now)
        self.tunnels.login_timeout = cfg.login_timeout
        self.broker.tunnels = self.tunnels
        cluster = self.broker.cluster
        cluster.peer_key = material.public_line(peer_key) if cfg.peer_addr else ""
        cluster.clustered = bool(cfg.peer_addr)
        cluster.on_lost = self._lost
        cluster.on_reclaimed = self._reclaimed
        await cluster.register()
        await self.broker.recover()
        tunnel_port = await self.tunnels.listen(*cfg.tunnel_addr)
        limiter = AuthLimiter(cfg.auth_fail_limit, cfg.auth_fail_window, cfg.auth_block_for)
        sessions = cluster.sessions = defaultdict(int)  # published with each heartbeat in a cluster
        startups = Startups(cfg.max_startups, cfg.max_startups_per_ip)
        signups = SignupLimiter()
        connections = defaultdict(int)  # logged-in connections per renter
        ciphers.install()
        flow.mend_windows()
        ssh = await asyncssh.create_server(
            lambda: RenterServer(self.broker, limiter, sessions, startups, signups, connections), *cfg.ssh_addr,
            **algorithms.server(
                server_host_keys=[host_key], encoding=None, line_editor=False, encryption_algs=RENTER_CIPHERS,
                login_timeout=cfg.login_timeout, keepalive_interval=cfg.keepalive * 4,
                x11_forwarding=False, agent_forwarding=False, allow_scp=False,
                server_version="shellrent", tunnel=QuickAckListener(startups, proxyproto.networks(cfg.proxy_from))))
        admin = AdminServer(cfg.admin_socket, self.broker)
        await admin.start()
        self._closers = [ssh.close, admin.close]
        ssh_port, where = ssh.sockets[0].getsockname()[1], cfg.advertise or _named(cfg.tunnel_addr[0])
        cluster.addresses = {"ssh": cluster_mod.join(where, ssh_port) if where else "",
                             "tunnel": cluster_mod.join(where, tunnel_port) if where else "", "peer": ""}
        if cfg.peer_addr:
            peer = await asyncssh.create_server(
                lambda: PeerServer(self.broker), *cfg.peer_addr, **algorithms.server(
                    server_host_keys=[peer_key], encoding=None, encryption_algs=PEER_CIPHERS,
                    window=relay.WINDOW, max_pktsize=relay.TUNNEL_PKTSIZE,  # as the tunnels: both ends are ours
                    login_timeout=10, keepalive_interval=5, keepalive_count_max=2, x11_forwarding=False,
                    agent_forwarding=False, allow_scp=False, server_version="shellrent-peer"))
            self._closers.append(peer.close)
            cluster.addresses["peer"] = cluster_mod.join(cfg.advertise, peer.sockets[0].getsockname()[1])
        await cluster.register()
        if cfg.metrics_addr:
            served = await common_metrics.serve(*cfg.metrics_addr, metrics.REGISTRY,
                                                lambda: metrics.refresh(self.broker),
                                                ready=lambda: not self.broker.cluster.draining)
            self._closers.append(served.close)
            info_metrics = [cfg.metrics_addr[0], served.sockets[0].getsockname()[1]]
        loop = asyncio.get_running_loop()
        self._housekeeping = [loop.create_task(self._expire_loop()), loop.create_task(self._beat_loop())]
        info = {"pid": os.getpid(), "ssh": [cfg.ssh_addr[0], ssh_port], "tunnel": [cfg.tunnel_addr[0], tunnel_port],
                "broker": cluster.id}
        if cfg.peer_addr:
            info["peer"] = list(parse_addr(cluster.addresses["peer"]))
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

    async def _drain(self) -> None:
        """Before a clustered broker stops: no new renters (its health says so, the others stop
        naming it to hosts), and its renters' sessions get up to BROKER_DRAIN seconds to finish."""
        if not self.peers:
            return
        cluster = self.broker.cluster
        cluster.draining = True
        self._closers[0]()  # the renter listener: new logins go to the other brokers
        try:
            await cluster.beat()
        except Exception as exc:
            log.warning("draining: %s", exc)
        deadline = time.monotonic() + self.config.drain
        while self.broker.channels.all() and time.monotonic() < deadline:
            await asyncio.sleep(0.2)

    async def _beat_loop(self):
        """The heartbeat: this broker's rows stay alive, the database's clock is measured again."""
        failing = False
        while True:
            await asyncio.sleep(cluster_mod.BEAT)
            try:
                await self.broker.cluster.beat()
                await self._tell_brokers()
                failing = False
            except Exception as exc:
                if not failing:
                    log.error("heartbeat: %s", exc)
                failing = True

    async def _tell_brokers(self) -> None:
        """When the cluster's brokers change, the hosts here learn where they are."""
        if not self.peers:
            return
        brokers = await self.broker.cluster.tunnels()
        if brokers == self._told:
            return
        self._told = brokers
        for link in list(self.tunnels.links.values()):
            self.broker.tasks.spawn(self._tell(link, brokers))

    async def _tell(self, link, brokers) -> None:
        try:
            await link.call("brokers", timeout=10, brokers=brokers)
        except Exception as exc:
            log.info("host %s: telling it the brokers failed: %s", link.name, exc)

    def _reclaimed(self, host: str, epoch: int) -> None:
        link = self.tunnels.get(host)
        if link:
            link.epoch = link.control.epoch = epoch

    def _lost(self, hosts: set[str]) -> None:
        """Hosts another broker drives now (this one was paused or cut off): their tunnels here close."""
        for name in hosts:
            link = self.tunnels.get(name)
            if link:
                link.conn.close()

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
        await self._drain()
        for task in self._housekeeping:
            task.cancel()
        for close in self._closers:
            close()
        await self.broker.tasks.drain(DRAIN)  # a release or start under way writes its records first
        await self.tunnels.close()
        if self.peers:
            self.peers.close()
            try:
                await self.broker.cluster.leave()  # its hosts are the others' at once
            except Exception as exc:
                log.warning("leaving the cluster: %s", exc)
        (self.config.home / "serve.json").unlink(missing_ok=True)
        self.broker.close()
