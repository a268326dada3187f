"""A throwaway PostgreSQL server for the tests: Debian's postgresql, initdb and pg_ctl as the postgres
user in a temp dir, listening on a unix socket there only (no TCP port). Missing binaries are a
failure, never a skip: scripts/test.sh installs them."""
import glob
import os
import secrets
import shutil
import subprocess
import tempfile
import urllib.parse
from pathlib import Path

import pytest


def _bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if not found:
        pytest.fail(f"PostgreSQL's {name} not found: these tests need the postgresql package (scripts/test.sh)")
    return found


def _as_postgres(*argv, **kw):
    run_as = [] if os.getuid() else ["runuser", "-u", "postgres", "--"]
    return subprocess.run([*run_as, *argv], capture_output=True, text=True, timeout=120, **kw)


class PgServer:
    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="shellrent-pg-"))
        if not os.getuid():
            shutil.chown(self.dir, "postgres", "postgres")
        data = self.dir / "data"
        for argv in ([_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                      "--locale=C", "--no-sync"],
                     self._start_argv()):
            proc = _as_postgres(*argv)
            if proc.returncode:
                pytest.fail(f"{Path(argv[0]).name} failed: {(proc.stderr or proc.stdout).strip()[-500:]}")

    def _start_argv(self) -> list[str]:
        return [_bin("pg_ctl"), "-D", str(self.dir / "data"), "-w", "-l", str(self.dir / "log"), "-o",
                f"-k {self.dir} -c listen_addresses='' -c fsync=off -c synchronous_commit=off", "start"]

    def down(self) -> None:
        """The server stops (connections cut, fast shutdown); its data stays for up(). Not an immediate
        stop: this throwaway server runs with synchronous_commit off, so a crash would lose the
        last commits it acknowledged, which a production server (synchronous_commit on) does not."""
        proc = _as_postgres(_bin("pg_ctl"), "-D", str(self.dir / "data"), "-m", "fast", "stop")
        assert proc.returncode == 0, proc.stderr

    def up(self) -> None:
        proc = _as_postgres(*self._start_argv())
        assert proc.returncode == 0, proc.stderr

    def dsn(self, schema: str | None = None) -> str:
        """A database URL; with schema, the database's tables are made and found in it."""
        query = {"host": str(self.dir), **({"options": f"-c search_path={schema}"} if schema else {})}
        return "postgresql://postgres@/postgres?" + urllib.parse.urlencode(query, quote_via=urllib.parse.quote)

    def fresh_schema(self) -> str:
        """A database URL of a new empty schema (a database of one's own, made in milliseconds)."""
        import psycopg
        name = "t_" + secrets.token_hex(6)
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {name}")
        return self.dsn(name)

    def stop(self) -> None:
        _as_postgres(_bin("pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)
