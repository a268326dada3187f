import time
from types import SimpleNamespace

import pytest

from shellrent.broker import accounts, hosts, logins
from shellrent.broker.accounts import Accounts
from shellrent.broker.commands import Commands
from shellrent.broker.config import Config, Where, parse_addr
from shellrent.broker.errors import BrokerError, NotFound
from shellrent.broker.sshserver import AuthLimiter
from shellrent.broker.store import Store
from shellrent.keys import material, tokens


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "b.db")
    yield s
    s.close()


def _pub(tmp_path, name="k"):
    return material.public_line(material.load_or_create(tmp_path / name)) + " someone@laptop"


def test_add_renter_and_find_by_key(store, tmp_path):
    fpr = accounts.add_renter(store, "alice", _pub(tmp_path))
    assert store.renter_by_key(fpr) == "alice"
    with pytest.raises(BrokerError, match="renter 'alice' already exists"):
        accounts.add_renter(store, "alice", _pub(tmp_path, "k2"))
    with pytest.raises(BrokerError, match="already belongs to renter 'alice'"):
        accounts.add_renter(store, "bob", _pub(tmp_path))
    assert [r["name"] for r in store.renters()] == ["alice"]  # the failed adds left nothing


@pytest.mark.parametrize("name", ["Alice", "1x", "a b", "x" * 33, ""])
def test_bad_names(store, tmp_path, name):
    with pytest.raises(BrokerError, match="bad renter name"):
        accounts.add_renter(store, name, _pub(tmp_path))


def test_token_is_single_use_and_expires(store, tmp_path):
    cfg = Config(home=tmp_path)
    token = hosts.invite(store, cfg, "pc1", "SHA256:brokerfpr")
    secret, fpr = tokens.split(token)
    assert fpr == "SHA256:brokerfpr"
    now = time.time()
    assert store.consume_token(tokens.hash_secret(secret), "SHA256:host", "ssh-ed25519 AAAA", now) == "pc1"
    with pytest.raises(BrokerError, match="invalid, expired or already used"):
        store.consume_token(tokens.hash_secret(secret), "SHA256:other", "k", now)
    assert store.host_by_key("SHA256:host")["name"] == "pc1"
    with pytest.raises(BrokerError, match="already joined"):
        hosts.invite(store, cfg, "pc1", "SHA256:brokerfpr")

    late = tokens.split(hosts.invite(store, cfg, "pc2", "SHA256:b"))[0]
    with pytest.raises(BrokerError, match="expired"):
        store.consume_token(tokens.hash_secret(late), "SHA256:h2", "k", now + cfg.token_ttl + 1)


def _lease(id_, state="active", ends_at=2e9):
    return {"id": id_, "state": state, "ends_at": ends_at}


def test_pick_lease():
    now = 1e9
    assert logins.pick_lease([_lease("a")], "al", None, now)["id"] == "a"
    assert logins.pick_lease([_lease("a"), _lease("b")], "al", "b", now)["id"] == "b"
    with pytest.raises(NotFound, match="renter al has no active lease"):
        logins.pick_lease([_lease("a", "ended")], "al", None, now)
    with pytest.raises(NotFound, match="renter al has no active lease"):
        logins.pick_lease([_lease("a", ends_at=now - 1)], "al", None, now)
    with pytest.raises(BrokerError, match=r"several active leases \(a b\)"):
        logins.pick_lease([_lease("a"), _lease("b")], "al", None, now)
    with pytest.raises(NotFound, match="no lease 'zz' for renter al"):
        logins.pick_lease([_lease("a")], "al", "zz", now)
    with pytest.raises(BrokerError, match="lease a is failed, not active"):
        logins.pick_lease([_lease("a", "failed")], "al", "a", now)
    with pytest.raises(BrokerError) as err:  # in the seconds between its end and the broker ending it
        logins.pick_lease([_lease("a", ends_at=now - 1)], "al", "a", now)
    assert str(err.value) == "lease a has ended: its time ran out at 01:46:39 UTC"


@pytest.mark.parametrize("user, expected", [("rent", ("rent", None)), ("rent+ab12", ("rent", "ab12")),
                                            ("ctl", ("ctl", None))])
def test_login_names(user, expected):
    assert logins.lease_from_username(user) == expected


@pytest.mark.parametrize("user", ["root", "ctl+x", "rent-x", ""])
def test_bad_login_names(user):
    with pytest.raises(BrokerError, match="unknown user"):
        logins.lease_from_username(user)


def test_auth_limiter_blocks_then_forgets():
    lim = AuthLimiter(limit=3, window=60, block_for=100)
    for t in (0, 1):
        lim.failed("1.2.3.4", t)
    assert not lim.blocked("1.2.3.4", 2)
    lim.failed("1.2.3.4", 2)
    assert lim.blocked("1.2.3.4", 3) and not lim.blocked("5.6.7.8", 3)
    assert not lim.blocked("1.2.3.4", 103)


def test_auth_limiter_window_slides():
    lim = AuthLimiter(limit=3, window=10, block_for=100)
    for t in (0, 20, 40):
        lim.failed("ip", t)
    assert not lim.blocked("ip", 41)


@pytest.mark.parametrize("text, addr", [("127.0.0.1:2222", ("127.0.0.1", 2222)), (":22", ("0.0.0.0", 22)),
                                        ("[::1]:0", ("::1", 0))])
def test_parse_addr(text, addr):
    assert parse_addr(text) == addr


@pytest.mark.parametrize("text", ["nohost", "h:port", "h:70000"])
def test_parse_addr_errors(text):
    with pytest.raises(ValueError, match="bad address"):
        parse_addr(text)


async def test_ctl_config_tmux_is_per_renter_and_checks_its_words(store, tmp_path):
    accounts.add_renter(store, "alice", _pub(tmp_path))
    accounts.add_renter(store, "bob", _pub(tmp_path, "k2"))

    async def db(fn, *args):
        return fn(*args)
    broker = SimpleNamespace(accounts=Accounts(db, store))
    alice, bob = Commands(broker, "alice"), Commands(broker, "bob")
    assert (await alice.run("config --json")) == (0, '{"tmux": false}\n')
    code, text = await alice.run("config tmux on")
    assert code == 0 and text.startswith("tmux on: ")
    assert store.renter_config("alice") == {"tmux": True} and store.renter_config("bob") == {"tmux": False}
    for bad in ("config tmux", "config tmux yes", "config color on", "config tmux on now"):
        assert await bob.run(bad) == (2, "ctl: usage: config | config tmux on|off\n")
    assert store.renter_config("bob") == {"tmux": False}
    assert (await alice.run("config tmux off"))[1].startswith("tmux off: ")


async def test_extend_and_release_with_several_leases_name_them():
    async def several(*_):
        raise logins.SeveralLeases("several active leases (aa11 bb22): log in as rent+LEASE", ["aa11", "bb22"])
    broker = SimpleNamespace(extend=several, release=several)
    code, text = await Commands(broker, "alice").run("extend 30m")
    assert (code, text) == (2, "ctl: you have several active leases (aa11 bb22): say which, e.g. extend aa11 30m\n")
    code, text = await Commands(broker, "alice").run("release")
    assert (code, text) == (2, "ctl: you have several active leases (aa11 bb22): say which, e.g. release aa11\n")


def test_a_login_with_several_leases_is_told_the_command_with_the_real_address():
    now = 1000.0
    with pytest.raises(logins.SeveralLeases, match=r"e.g. ssh -p 2222 rent\+a@gpu.example.org"):
        logins.pick_lease([_lease("a"), _lease("b")], "al", None, now, where=Where("gpu.example.org", 2222))
    with pytest.raises(NotFound, match=r"rent one with: ssh ctl@gpu.example.org rent --hours 1"):
        logins.pick_lease([], "al", None, now, where=Where("gpu.example.org"))


def test_a_name_cannot_end_in_a_newline():
    for bad in ("bob\n", "bob\nroot", " bob", "Bob"):
        with pytest.raises(BrokerError, match="bad renter name"):
            accounts.check_name("renter", bad)


async def test_help_and_the_files_hint_name_the_broker_as_the_renter_reached_it():
    where = Where("gpu.example.org", 2222)
    code, text = await Commands(SimpleNamespace(), "alice", where).run("help")
    assert code == 0 and text.startswith("usage: ssh -p 2222 ctl@gpu.example.org COMMAND [ARGS]")
    assert "then: ssh -p 2222 rent@gpu.example.org" in text and "BROKER" not in text
    code, text = await Commands(SimpleNamespace(), "alice", Where("gpu.example.org")).run("nosuch")
    assert text == "ctl: unknown command 'nosuch'; try: ssh ctl@gpu.example.org help\n"
    with pytest.raises(BrokerError, match=r"its files stay readable: sftp -P 2222 rent\+a@gpu.example.org"):
        logins.pick_lease([_lease("a", "ended")], "al", "a", 1000.0, where=where)


async def test_auto_extend_and_workspace_options_are_checked_before_anything_is_asked():
    calls = []

    async def set_auto(renter, lid, on):
        calls.append((renter, lid, on))
        return {"id": "aa11", "state": "active", "host": "pc1", "gpus": [], "image": "i", "ends_at": time.time() + 60,
                "price": 0, "held": 0, "auto": 60 if on else 0}
    ctl = Commands(SimpleNamespace(set_auto=set_auto), "alice")
    for bad in ("extend --auto maybe", "extend a b --auto on", "extend --auto"):
        code, text = await ctl.run(bad)
        assert code == 2 and text.count("\n") == 1, text
    assert calls == []
    code, text = await ctl.run("extend aa11 --auto on")
    assert code == 0 and text.startswith("lease aa11: auto-extend on, by 1m; ") and calls == [("alice", "aa11", True)]
    assert (await ctl.run("extend --auto off"))[1].startswith("lease aa11: auto-extend off; ")
    assert calls[-1] == ("alice", None, False)
    code, text = await ctl.run("rent gpu_name=x --workspace aa11 --hours 1")
    assert (code, text) == (2, "ctl: rent --workspace takes no query: the lease's host is the one that keeps it\n")


async def test_auto_with_several_leases_names_them_and_credit_too_close_to_round_is_exact():
    from shellrent.broker.ledger import credits_needed

    async def several(*_):
        raise logins.SeveralLeases("several", ["aa11", "bb22"])
    code, text = await Commands(SimpleNamespace(set_auto=several), "alice").run("extend --auto off")
    assert (code, text) == (2, "ctl: you have several active leases (aa11 bb22): say which, e.g. extend aa11 --auto off\n")
    assert credits_needed(6_400, 13_300) == "this needs 0.013300 credits and the balance is 0.006400"
    assert credits_needed(100_000, 2_000_000) == "this needs 2.00 credits and the balance is 0.10"
