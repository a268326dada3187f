"""Several broker homes on one PostgreSQL database: the second is made from the first's keys (renters
see one host key, hosts pin one tunnel key), each has its own peer key, and every operator command
works from either home against the shared records."""
import json
import os
import stat

from .cluster import BIN, run


def _broker(home, *args, check=True):
    return run(BIN / "broker", "--home", home, *args, check=check, env={**os.environ, "BROKER_DB": ""})


def _fingerprints(out: bytes) -> dict:
    return {line.split("  ")[0].strip(): line.split()[-1] for line in out.decode().splitlines()[1:]}


def test_a_second_home_takes_the_first_ones_keys_and_shares_its_records(pg_server, tmp_path):
    url = pg_server.fresh_schema()
    a, b = tmp_path / "a", tmp_path / "b"
    fa = _fingerprints(_broker(a, "init", "--db", url).stdout)
    fb = _fingerprints(_broker(b, "init", "--db", url, "--keys-from", a).stdout)
    assert fa["ssh host key"] == fb["ssh host key"] and fa["tunnel key"] == fb["tunnel key"]
    assert fa["peer key"] != fb["peer key"]
    for name in ("ssh_host_ed25519_key", "tunnel_client_ed25519_key", "peer_ed25519_key", "database"):
        assert stat.S_IMODE((b / name).stat().st_mode) == 0o600
    key = tmp_path / "k"
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key)
    _broker(b, "renter", "add", "alice", "--key", f"{key}.pub")
    _broker(a, "renter", "credit", "alice", "3")
    assert [r["name"] for r in json.loads(_broker(a, "renter", "list", "--json").stdout)] == ["alice"]
    ledger = json.loads(_broker(b, "ledger", "--json").stdout)
    assert ledger["balances"]["renter:alice"] == 3_000_000
    assert _fingerprints(_broker(b, "init").stdout) == fb  # idempotent, from the remembered database


def test_keys_from_is_refused_in_one_line_and_makes_nothing(pg_server, tmp_path):
    url = pg_server.fresh_schema()
    a = tmp_path / "a"
    _broker(a, "init", "--db", url)
    for args, says in ((["--keys-from", a], "--keys-from makes another broker of one database: give --db"),
                       (["--db", url, "--keys-from", tmp_path / "nowhere"], "is not a broker home"),
                       (["--db", url, "--keys-from", tmp_path], "is not a broker home")):
        r = _broker(tmp_path / "b", "init", *args, check=False)
        assert r.returncode == 1 and says in r.stderr.decode() and len(r.stderr.splitlines()) == 1, r.stderr
        assert not (tmp_path / "b").exists()
    c = tmp_path / "c"
    _broker(c, "init", "--db", url)  # a home with keys of its own
    r = _broker(c, "init", "--db", url, "--keys-from", a, check=False)
    assert r.returncode == 1 and b"already has a ssh_host_ed25519_key of its own" in r.stderr


def test_init_again_is_idempotent_and_never_moves_a_home_to_another_database(pg_server, tmp_path):
    url, other = pg_server.fresh_schema(), pg_server.fresh_schema()
    a, b = tmp_path / "a", tmp_path / "b"
    _broker(a, "init", "--db", url)
    first = _fingerprints(_broker(b, "init", "--db", url, "--keys-from", a).stdout)
    assert _fingerprints(_broker(b, "init", "--db", url, "--keys-from", a).stdout) == first  # run twice: the same
    r = _broker(b, "init", "--db", other, check=False)
    assert r.returncode == 1 and b"already uses another database" in r.stderr
    lite = tmp_path / "lite"
    _broker(lite, "init")
    r = _broker(lite, "init", "--db", url, check=False)
    assert r.returncode == 1 and b"keeps its records in broker.db" in r.stderr
    assert not (lite / "database").exists()


def test_a_url_libpq_cannot_parse_is_one_line_without_the_url(tmp_path):
    r = _broker(tmp_path / "a", "init", "--db", "postgresql://u:s3cr%zzet@db/x", check=False)
    assert r.returncode == 1 and b"cannot be parsed" in r.stderr and b"s3cr" not in r.stderr
    assert len(r.stderr.splitlines()) == 1


def test_a_second_broker_serving_the_same_database_is_refused_for_now(pg_server, tmp_path):
    import signal
    import subprocess

    from .cluster import wait_for
    url = pg_server.fresh_schema()
    a, b = tmp_path / "a", tmp_path / "b"
    _broker(a, "init", "--db", url)
    _broker(b, "init", "--db", url, "--keys-from", a)
    env = {**os.environ, "BROKER_DB": ""}
    with open(tmp_path / "a.log", "wb") as log:
        first = subprocess.Popen([str(BIN / "broker"), "--home", str(a), "serve", "--ssh", "127.0.0.1:0",
                                  "--tunnel", "127.0.0.1:0"], stdout=log, stderr=log, env=env)
    try:
        wait_for(lambda: (a / "serve.json").exists(), what="the first broker to serve")
        r = run(BIN / "broker", "--home", b, "serve", "--ssh", "127.0.0.1:0", "--tunnel", "127.0.0.1:0",
                check=False, env=env, timeout=60)
        assert r.returncode == 1 and b"another broker already serves this database" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(30)
