"""The broker's records: renters and keys, hosts and join tokens, uptime, leases and their down
times, and the ledger. `Store` is the SQLite backend (store.sqlite, its schema in store.sqlite_schema);
`Db` runs its calls on the running broker's one store thread (store.writer). SQL lives in this package
and nowhere else."""
from .sqlite import Store
from .sql_leases import MAX_DOWNS
from .writer import Db

__all__ = ["Db", "MAX_DOWNS", "Store"]
