"""Self-serve accounts with OpenSSH against a real broker: `ssh signup@broker NAME [CODE]` under each
BROKER_SIGNUP policy, credit vouchers redeemed with `ssh ctl@broker redeem CODE`, the hint an unknown
user gets, and the operator's credit commands refusing what they should in one line."""
import asyncio
import json
import sqlite3
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import asyncssh
import pytest

from .cluster import Cluster


@pytest.fixture
def broker(tmp_path, request):
    c = Cluster(tmp_path, env=getattr(request, "param", {}), renter=True)
    c.start_broker()
    yield c
    c.close()


def _renters(c: Cluster) -> list[str]:
    return [r["name"] for r in json.loads(c.broker("renter", "list", "--json").stdout)]


def _balances(c: Cluster) -> dict:
    return json.loads(c.broker("ledger", "--json").stdout)["balances"]


@pytest.mark.parametrize("broker", [{"BROKER_SIGNUP": "code", "BROKER_SIGNUPS_PER_HOUR": "50"}], indirect=True)
def test_a_signup_code_makes_one_account_once(broker):
    c = broker
    codes = c.broker("signup-code", "create", "--count", "2").stdout.decode().split()
    assert len(codes) == 2 and all(code.startswith("SU-") for code in codes)
    bob, carol = c.new_key("bob"), c.new_key("carol")

    r = c.ssh("bob", codes[0].lower(), user="signup", key=bob)  # typed in any case
    assert r.returncode == 0, r.stderr
    assert f"ssh -p {c.ssh_port} ctl@127.0.0.1 redeem" in r.stdout.decode()  # the real address, no placeholder
    assert c.ssh("balance", user="ctl", key=bob).stdout.decode().startswith("balance 0.00")

    again = c.ssh("carol", codes[0], user="signup", key=carol)
    assert again.returncode == 2 and again.stderr.decode() == "signup: that signup code was used already\n"
    assert c.ssh("carol", "SU-AAAA-AAAA-AAAA-AAAA", user="signup", key=carol).stderr.decode() == \
        "signup: unknown signup code\n"
    missing = c.ssh("carol", user="signup", key=carol)
    assert missing.returncode == 2 and "a signup code is needed" in missing.stderr.decode()
    bad = c.ssh("Carol!", codes[1], user="signup", key=carol)  # a bad name does not use the code up
    assert bad.returncode == 2 and "bad renter name" in bad.stderr.decode()
    taken = c.ssh("bob", codes[1], user="signup", key=carol)  # nor a name that exists
    assert taken.returncode == 2 and "already exists" in taken.stderr.decode()
    assert c.ssh("carol", codes[1], user="signup", key=carol).returncode == 0
    known = c.ssh("bobby", "SU-AAAA-AAAA-AAAA-AAAA", user="signup", key=bob)
    assert known.returncode == 2 and "already belongs to renter bob" in known.stderr.decode()
    assert _renters(c) == ["alice", "bob", "carol"]

    audit = (c.bhome / "audit.log").read_text()
    assert "signup renter=bob ip=127.0.0.1" in audit and "signup renter=carol" in audit
    assert "signup-fail name='carol'" in audit
    assert codes[0] not in audit and codes[1] not in audit  # codes are secrets: only their hashes are kept
    db = sqlite3.connect(c.bhome / "broker.db")
    assert not [row for row in db.execute("SELECT * FROM signup_codes") if codes[0] in str(row)]
    db.close()


@pytest.mark.parametrize("broker", [{"BROKER_SIGNUP": "code", "BROKER_SIGNUPS_PER_HOUR": "50"}], indirect=True)
def test_two_people_racing_for_one_code_make_one_account(broker):
    c = broker
    code = c.broker("signup-code", "create").stdout.decode().strip()
    keys = [c.new_key(f"racer{i}") for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: c.ssh(f"racer{i}", code, user="signup", key=keys[i]), range(4)))
    assert sorted(r.returncode for r in results) == [0, 2, 2, 2]
    assert len([n for n in _renters(c) if n.startswith("racer")]) == 1


def test_signup_is_closed_unless_the_operator_opens_it(tmp_path):
    c = Cluster(tmp_path, env={"BROKER_CONTACT": "ops@example.org"})
    try:
        c.start_broker()
        r = subprocess.run(["ssh", "-p", str(c.ssh_port), "-o", "LogLevel=INFO", *c.ssh_opts(c.new_key("dave")),
                            "signup@127.0.0.1", "dave"], capture_output=True, timeout=60)
        assert r.returncode == 255  # closed: no login at all, only the banner that says whom to ask
        assert ("shellrent: this broker does not take signups: ask ops@example.org for an account "
                "(send your public key, e.g. ~/.ssh/id_ed25519.pub)") in r.stderr.decode()
        assert _renters(c) == ["alice"]
    finally:
        c.close()


@pytest.mark.parametrize("broker", [{"BROKER_SIGNUP": "open", "BROKER_SIGNUPS_PER_HOUR": "2"}], indirect=True)
def test_open_signup_is_limited_per_address(broker):
    c = broker
    assert c.ssh("erin", user="signup", key=c.new_key("erin")).returncode == 0
    extra = c.ssh("erin", "CODE", user="signup", key=c.new_key("erin2"))
    assert extra.returncode == 2 and "bad arguments" in extra.stderr.decode()  # leftover words
    assert c.ssh("frank", user="signup", key=c.new_key("frank")).returncode == 0
    third = c.ssh("gina", user="signup", key=c.new_key("gina"))
    assert third.returncode == 2 and "too many signups from your address" in third.stderr.decode()
    assert _renters(c) == ["alice", "erin", "frank"]
    # a signup login is nothing more: no files, no forward, one session per connection
    sftp = subprocess.run(["sftp", "-P", str(c.ssh_port), *c.ssh_opts(c.new_key("hal")), "signup@127.0.0.1"],
                          input=b"ls\n", capture_output=True, timeout=60)
    assert sftp.returncode != 0 and b"subsystem request failed" in sftp.stderr
    fwd = c.ssh(user="signup", key=c.new_key("hal"), opts=["-W", "localhost:22"])
    assert fwd.returncode == 255 and b"forwarding failed" in fwd.stderr
    assert asyncio.run(_two_sessions(c, c.new_key("hal"))) == "one signup per connection"


async def _two_sessions(c: Cluster, key) -> str:
    async with asyncssh.connect("127.0.0.1", c.ssh_port, username="signup", client_keys=[str(key)],
                                known_hosts=None) as conn:
        first = await conn.create_process("help")
        try:
            await conn.create_process("help")
        except asyncssh.ChannelOpenError as exc:
            return exc.reason
        finally:
            first.close()
    return "a second session opened"


def test_a_voucher_adds_its_credit_once(broker):
    c = broker
    codes = c.broker("voucher", "create", "12.5", "--count", "3", "--expires", "1h").stdout.decode().split()
    assert len(codes) == 3 and all(code.startswith("CR-") for code in codes)
    ok = c.ssh("redeem", codes[0], user="ctl")
    assert ok.returncode == 0 and ok.stdout.decode() == "voucher redeemed: +12.50 credits; balance 12.50\n"
    twice = c.ssh("redeem", codes[0], user="ctl")
    assert twice.returncode == 2 and twice.stderr.decode() == "ctl: that voucher was redeemed already\n"
    unknown = c.ssh("redeem", "CR-AAAA-AAAA-AAAA-AAAA", user="ctl")
    assert unknown.returncode == 2 and unknown.stderr.decode() == "ctl: unknown voucher code\n"
    junk = c.ssh("redeem", "'; DROP TABLE vouchers; --'", user="ctl")
    assert junk.returncode == 2 and "is not a code" in junk.stderr.decode()
    # two redeems of one code at once: one adds the credit
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: c.ssh("redeem", codes[1], "--json", user="ctl"), range(4)))
    assert sorted(r.returncode for r in results) == [0, 2, 2, 2]
    assert json.loads(c.ssh("balance", "--json", user="ctl").stdout)["balance_micro"] == 25_000_000
    balances = _balances(c)
    assert balances["platform:vouchers"] == -25_000_000 and sum(balances.values()) == 0
    rows = json.loads(c.broker("voucher", "list", "--json").stdout)
    assert sorted(r["renter"] or "-" for r in rows) == ["-", "alice", "alice"]


def test_an_expired_voucher_adds_nothing(broker):
    c = broker
    code = c.broker("voucher", "create", "5", "--expires", "1s").stdout.decode().strip()
    time.sleep(1.5)
    r = c.ssh("redeem", code, user="ctl")
    assert r.returncode == 2 and r.stderr.decode() == "ctl: that voucher has expired\n"
    assert "platform:vouchers" not in _balances(c)


def test_an_unknown_user_is_told_which_users_exist(broker):
    c = broker
    r = subprocess.run(["ssh", "-p", str(c.ssh_port), "-o", "LogLevel=INFO",  # banners show from INFO up
                        *c.ssh_opts(), "root@127.0.0.1"], capture_output=True, timeout=60)
    assert r.returncode == 255
    assert (f"shellrent: unknown user 'root': log in as rent, rent+LEASE, ctl or signup "
            f"(e.g. ssh -p {c.ssh_port} rent@127.0.0.1)") in r.stderr.decode()


def test_the_operators_credit_commands_refuse_in_one_line(broker):
    c = broker
    for args, message in [(["-5"], "Error: the amount must be more than zero; to take credit back: "
                                   "broker renter debit NAME AMOUNT\n"),
                          (["1e3"], "Error: bad amount '1e3': write it out, like 12.50 (no exponents)\n"),
                          (["20000"], "Error: 20000.00 credits is more than 10000.00 (BROKER_CREDIT_CAP): "
                                      "add --yes if you mean it\n")]:
        r = c.broker("renter", "credit", "alice", *args, check=False)
        assert r.returncode == 1 and r.stderr.decode() == message, (args, r.stderr)
    assert "renter:alice" not in _balances(c)
    assert c.broker("renter", "credit", "alice", "20000", "--yes").returncode == 0
    assert c.broker("renter", "debit", "alice", "19999.50", "--yes").returncode == 0
    over = c.broker("renter", "debit", "alice", "1", check=False)
    assert over.returncode == 1 and "not enough credit" in over.stderr.decode()
    assert _balances(c)["renter:alice"] == 500_000
    bad = c.broker("voucher", "create", "-1", check=False)
    assert bad.returncode == 1 and bad.stderr.decode() == "Error: the amount must be more than zero\n"
