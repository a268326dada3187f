"""Which database a broker home uses, and opening it: SQLite (broker.db in the home, the default) or
PostgreSQL (`--db postgresql://...` at init, remembered in the home's `database` file, mode 0600;
BROKER_DB names one for any command). The URL may hold a password: it is never printed or logged."""
import os
from pathlib import Path

from ..errors import BrokerError

SCHEMES = ("postgresql://", "postgres://")


def check_url(url: str) -> str:
    """A database URL the broker can use: one line naming what it takes otherwise."""
    url = url.strip()
    if not url.startswith(SCHEMES) or "\n" in url:
        raise BrokerError("--db takes a PostgreSQL URL, e.g. postgresql://shellrent@db.example/shellrent "
                          "(without --db the broker keeps broker.db in its home)")
    import psycopg.conninfo
    try:
        psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error:  # libpq's message may quote the URL, password included: not shown
        raise BrokerError("the database URL cannot be parsed (check its %-escapes and its ?options)") from None
    return url


def url_of(home: Path, given: str | None = None) -> str | None:
    """The PostgreSQL URL of this home (given, else BROKER_DB, else the one init remembered), or None
    for SQLite."""
    given = given or os.environ.get("BROKER_DB", "")
    if given:
        return check_url(given)
    try:
        return check_url((home / "database").read_text())
    except FileNotFoundError:
        return None


def check_switch(home: Path, sqlite_path: Path, url: str) -> None:
    """init --db on a home that already keeps its records elsewhere would leave them behind (renters,
    credit, live leases, the hosts' pinned keys): refused."""
    if sqlite_path.exists():
        raise BrokerError(f"{home} keeps its records in broker.db: a PostgreSQL database needs a new home "
                          f"(moving records from one database to another is not done)")
    try:
        known = (home / "database").read_text().strip()
    except FileNotFoundError:
        return
    if known != url:
        raise BrokerError(f"{home} already uses another database (its `database` file): give a new home")


def remember(home: Path, url: str) -> None:
    path = home / "database"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(url + "\n")
    os.chmod(path, 0o600)


def open_store(home: Path, sqlite_path: Path, url: str | None, now=None, create: bool = False):
    """The store: PostgreSQL when url is given, else the SQLite file (which must exist unless create)."""
    kw = {"now": now} if now else {}
    if url:
        from .postgres import Store as PgStore, UNREACHABLE
        import psycopg
        try:
            return PgStore(url, **kw)
        except psycopg.OperationalError as exc:
            first = (str(exc).strip().splitlines() or [UNREACHABLE])[0]
            raise BrokerError(f"cannot open the broker's PostgreSQL database: {first}") from None
        except psycopg.Error as exc:  # e.g. the user may not create tables: its class, not its text
            raise BrokerError(f"cannot use the broker's PostgreSQL database ({type(exc).__name__})") from None
    if not create and not sqlite_path.exists():
        raise BrokerError(f"{home} is not a broker home: run `broker --home {home} init` first")
    from .sqlite import Store
    return Store(sqlite_path, **kw)
