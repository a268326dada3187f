"""The running broker's composition root: the use cases, each given its collaborators, and the
entry points the adapters (ssh server, ctl commands, admin socket, tunnels) call. No logic here.

Store calls run on the store's one thread (store.writer.Db); `links()` is the tunnel registry, set
once the server has made it.
"""
import time

from .accounts import Accounts
from .channels import ChannelRegistry
from .cluster import Clock, Cluster, broker_id
from .config import Config
from .autoextend import AutoExtend
from .extending import Extending
from .hostevents import HostEvents
from .hosts import Hosts
from .hostsync import HostSync
from .jobs import Jobs
from .logins import Logins
from .market import Market
from .pullwaits import PullWaits
from .reach import Reach
from .renterhosts import RenterHosts
from .renting import Renting
from .settlement import Settlement
from .store import Db, Store
from .tasks import Tasks
from .tunnels import Tunnels


class Broker:
    """The broker's use cases, wired."""

    def __init__(self, config: Config, store: Store, tunnels: Tunnels | None = None, now=time.time, peers=None):
        clock = Clock() if now is time.time else None  # the database's time, unless a test gives one
        now = clock or now
        self.config, self.store, self.tunnels, self.now = config, store, tunnels, now
        self._db = Db(store)
        db, links = self._db.run, lambda: self.tunnels
        self.channels, self.tasks = ChannelRegistry(), Tasks()
        self.cluster = Cluster(db, store, broker_id(config.home), clock)
        self.reach = Reach(db, store, links, self.cluster, peers)
        self.market = Market(db, store, links, now)
        if peers is not None:
            self.market.max_age = 2.0  # the other brokers rent and release too
        self.accounts = Accounts(db, store)
        self.renter_hosts = RenterHosts(config, db, store, links, earnings=lambda host: self.hosts.send_earnings(host))
        self.logins = Logins(db, store, self.reach, now)
        self.pulls = PullWaits(config, db, store, now)
        self.hosts = Hosts(config, db, store, links, self.market, self.tasks, now,
                           reconcile=lambda link, theirs: self.hostsync.reconcile(link, theirs), cluster=self.cluster)
        self.renting = Renting(config, db, store, self.reach, self.cluster, self.market, self.pulls, self.tasks,
                               now, sync=lambda host: self.hostsync.sync(host))
        self.settlement = Settlement(config, db, store, self.logins, self.pulls, self.channels, self.market,
                                     self.tasks, now, earnings=self.hosts.send_earnings,
                                     sync_lease=lambda lid: self.hostsync.sync_lease(lid))
        self.extending = Extending(config, db, store, self.reach, self.logins, self.tasks, now)
        self.events = HostEvents(db, store, self.market, self.hosts, self.pulls, self.settlement, now)
        self.hostsync = HostSync(config, db, store, links, self.events, self.settlement, self.renting.in_flight,
                                 self.tasks, now)
        self.jobs = Jobs(db, store, links, self.market, self.renting, self.settlement, self.hostsync.sync_all, now,
                         self.cluster, self.channels, config, AutoExtend(db, store, self.extending))
        # the entry points the adapters call
        self.db = db
        self.renter_for_key, self.session_target = self.accounts.renter_for_key, self.logins.session_target
        self.balance, self.history = self.accounts.balance, self.accounts.history
        self.offers, self.quote, self.rent = self.market.offers, self.renting.quote, self.renting.rent
        self.create_lease, self.extend = self.renting.create_lease, self.extending.extend
        self.set_auto = self.extending.set_auto
        self.release, self.end_lease = self.settlement.release, self.settlement.end_lease
        self.identify_host, self.host_connected = self.hosts.identify, self.hosts.connected
        self.host_disconnected, self.event = self.hosts.disconnected, self.events.event
        self.welcome_host = self.hosts.welcome
        self.housekeeping, self.recover = self.jobs.housekeeping, self.jobs.recover

    def close(self) -> None:
        self._db.close()
