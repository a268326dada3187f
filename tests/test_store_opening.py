"""Which database a broker home uses: --db, else BROKER_DB, else what init remembered, else SQLite."""
import stat

import pytest

from shellrent.broker.errors import BrokerError
from shellrent.broker.store import opening


def test_the_database_named_first_wins_and_the_remembered_url_is_kept_0600(tmp_path, monkeypatch):
    monkeypatch.delenv("BROKER_DB", raising=False)
    assert opening.url_of(tmp_path) is None  # SQLite
    opening.remember(tmp_path, "postgresql://u:secret@db/x")
    assert stat.S_IMODE((tmp_path / "database").stat().st_mode) == 0o600
    assert opening.url_of(tmp_path) == "postgresql://u:secret@db/x"
    monkeypatch.setenv("BROKER_DB", "postgres://env/y")
    assert opening.url_of(tmp_path) == "postgres://env/y"
    assert opening.url_of(tmp_path, "postgresql://given/z") == "postgresql://given/z"


@pytest.mark.parametrize("url", ["mysql://x/y", "sqlite:///broker.db", "postgresql://a\nb", " ", "db.example"])
def test_a_url_that_is_not_postgresqls_is_one_line(url):
    with pytest.raises(BrokerError, match="^--db takes a PostgreSQL URL"):
        opening.check_url(url)


def test_a_sqlite_home_that_was_never_made_says_how_to_make_it(tmp_path):
    with pytest.raises(BrokerError, match="is not a broker home: run `broker --home .* init` first"):
        opening.open_store(tmp_path, tmp_path / "broker.db", None)
