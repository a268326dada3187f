"""The marketplace end to end: ctl offers -> ctl rent -> ssh rent@ -> warnings -> SIGTERM, SIGKILL ->
files by sftp after the end -> purge; extend/release money; a race for the last GPU; a broker killed
mid-rent. Real broker, hostd, Docker and OpenSSH; lease timings shortened through hostd settings."""
import json
import subprocess

import pytest

from .cluster import Cluster, run, wait_for
from .tty import Terminal

pytestmark = pytest.mark.docker

FAST = {"fake_gpus": "RTX 4090:24", "price": "0.40", "warnings": "6s,4s,2s", "grace": "3s",
        "retention": "12s"}


def ctl(c: Cluster, *args, key=None, **kw):
    return c.ssh(*args, user="ctl", key=key, **kw)


def ctl_json(c: Cluster, *args, key=None):
    r = ctl(c, *args, "--json", key=key)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture
def market(fresh_cluster):
    c = fresh_cluster
    c.add_host("pc1", FAST)
    c.broker("renter", "credit", "alice", "5")
    wait_for(lambda: ctl_json(c, "offers"), what="the host's offer")
    return c


def _earned(c: Cluster) -> int:
    return json.loads(c.hostd("pc1", "status", "--json").stdout)["earned_micro"]


def test_offers_query_errors_and_pause(market):
    c = market
    offers = ctl_json(c, "offers", "gpu_name=RTX_4090 num_gpus>=1 dph<=0.5")
    assert [(o["host_id"], o["gpu_name"], o["num_gpus"], o["dph"]) for o in offers] == [("pc1", "RTX 4090", 1, 0.4)]
    assert ctl_json(c, "offers", "gpu_ram>=48") == []
    r = ctl(c, "offers", "gpu_rma>=48")
    assert r.returncode == 2
    assert r.stderr.decode() == "ctl: unknown field 'gpu_rma' in 'gpu_rma>=48'\n"
    assert b"OFFER" in ctl(c, "offers").stdout  # a table for people
    c.hostd("pc1", "pause")
    wait_for(lambda: ctl_json(c, "offers") == [], what="a paused host to leave the market")
    c.hostd("pc1", "resume")
    wait_for(lambda: ctl_json(c, "offers"), what="the host to come back")


def test_only_the_images_the_provider_lists_can_be_rented(market):
    c = market
    for args in (["--yes"], []):
        r = ctl(c, "rent", "--hours", "1", "--image", "debian:12", *args)
        assert r.returncode == 2
        assert r.stderr.decode() == ("ctl: image 'debian:12' is not allowed by the matching offers; "
                                     "allowed: shellrent-base:bookworm\n")
    assert ctl_json(c, "ls") == []
    assert ctl_json(c, "balance")["held_micro"] == 0


def test_full_lease_life(market, tmp_path):
    c = market
    r = ctl(c, "rent", "gpu_ram>=24", "--hours", "25s")
    assert r.returncode == 2 and b"add --yes to rent" in r.stderr
    assert ctl_json(c, "ls") == []                                    # a quote changes nothing
    lease = ctl_json(c, "rent", "gpu_ram>=24", "--hours", "25s", "--yes")
    lid = lease["id"]
    assert (lease["state"], lease["gpu_name"], lease["gpus"]) == ("active", "RTX 4090", 1)
    info = c.ssh("cat /etc/shellrent/lease; echo ENV=$SHELLRENT_ENDS_AT", check=True).stdout.decode()
    assert f"SHELLRENT_LEASE_ID={lid}" in info and "SHELLRENT_REMAINING=" in info
    assert info.split("ENV=")[1].strip() == info.split("SHELLRENT_ENDS_AT=")[1].split()[0]

    # a job that outlives SIGTERM (it logs it), a tmux pane, an interactive session, a plain session
    job = b"trap 'date +%s.%N > /workspace/term.log' TERM\nwhile :; do sleep 0.2; done\n"
    c.ssh("cat > /workspace/job.sh && (setsid sh /workspace/job.sh </dev/null >/dev/null 2>&1 &) && "
          "tmux new -d -s pane", input=job, check=True)
    term = Terminal(c.ssh_cmd("rent", "-tt"))
    plain = subprocess.Popen(c.ssh_cmd("rent") + ["sleep 120"], stderr=subprocess.PIPE)
    try:
        term.wait("/workspace#")
        term.wait("ends in", timeout=40)                             # T-6s, T-4s, T-2s
        pane = wait_for(lambda: "ends in" in (p := c.ssh("tmux capture-pane -p -t pane").stdout.decode()) and p,
                        timeout=40, what="the warning in a tmux pane")
        assert f"lease {lid} ends in" in pane
        plain_err = plain.communicate(timeout=60)[1].decode()
    finally:
        term.close()
        plain.kill()
    assert f"*** shellrent: lease {lid} ends in" in plain_err
    wait_for(lambda: not c.containers(), timeout=60, what="the container to go at the end")
    wait_for(lambda: ctl_json(c, "show", lid)["state"] == "ended", timeout=30, what="the lease to be ended")

    # /workspace stays readable by sftp during retention
    batch = tmp_path / "batch"
    batch.write_text(f"get /workspace/term.log {tmp_path / 'term.log'}\n")
    run("sftp", "-b", batch, "-P", str(c.ssh_port), *c.ssh_opts(), f"rent+{lid}@127.0.0.1")
    term_at = float((tmp_path / "term.log").read_text())
    ended = c.hostd_log_time(f"lease {lid} ended")
    assert ended - term_at >= 2.5                                       # SIGKILL only after the 3 s grace
    r = c.ssh("true", user=f"rent+{lid}")
    assert r.returncode == 2 and b"is ended, not active" in r.stderr    # a shell is not offered any more

    # purge after the retention period
    wait_for(lambda: ctl_json(c, "show", lid)["state"] == "purged", timeout=60, what="the purge")
    vols = run("docker", "volume", "ls", "-q", "--filter", f"name=shellrent-ws-{lid}").stdout
    assert vols.strip() == b""
    r = run("sftp", "-b", batch, "-P", str(c.ssh_port), *c.ssh_opts(), f"rent+{lid}@127.0.0.1", check=False)
    assert r.returncode != 0

    # the money of the whole life
    txs = ctl_json(c, "history")
    assert [t["kind"] for t in txs] == ["deposit", "hold", "settle"]
    settle = {e["account"]: e["amount"] for e in txs[-1]["entries"]}
    charge = settle["provider:pc1"] + settle["platform:fees"]
    assert 0 < charge <= 400_000 * 26 // 3600 + 1 and settle["platform:fees"] == charge * 10 // 100
    assert ctl_json(c, "balance")["balance_micro"] == 5_000_000 - charge
    wait_for(lambda: _earned(c) == settle["provider:pc1"], what="earnings in hostd status")
    ledger = json.loads(c.broker("ledger", "--json").stdout)
    assert all(sum(e["amount"] for e in t["entries"]) == 0 for t in ledger["transactions"])
    c.record_ledger(ledger)


def test_extend_and_release_charge_what_was_used(market):
    c = market
    lid = ctl_json(c, "rent", "--hours", "1h", "--yes")["id"]
    assert ctl_json(c, "balance")["held_micro"] == 400_000
    ext = ctl_json(c, "extend", "30m")
    assert ext["left"].startswith(("1h29m", "1h30m")) and ext["held"] == "0.60"
    assert c.ssh("cat /etc/shellrent/lease", check=True).stdout.decode().count("SHELLRENT_REMAINING=1h")
    r = ctl(c, "extend", lid, "500h")
    assert r.returncode == 2 and b"not enough credit" in r.stderr
    assert ctl_json(c, "balance")["held_micro"] == 600_000             # the refused extension held nothing
    out = ctl_json(c, "release")
    assert out["state"] == "ended"
    bal = ctl_json(c, "balance")
    assert bal["held_micro"] == 0
    charged = 5_000_000 - bal["balance_micro"]
    assert 0 <= charged <= 400_000 * 60 // 3600                         # a few seconds, not the hour
    assert out["refunded"] == f"{(600_000 - charged) / 1e6:.2f}" or out["refunded"].startswith("0.5")
    wait_for(lambda: not c.containers(), what="the released container to go")
    r = ctl(c, "extend", lid, "1h")
    assert r.returncode == 2 and b"not active" in r.stderr


def test_bad_ctl_input_is_one_line_and_exit_2(market):
    c = market
    for args, message in [(("frobnicate",), "ctl: unknown command 'frobnicate'"),
                          (("rent", "--yes"), "ctl: rent needs --hours H"),
                          (("rent", "--hours", "soon", "--yes"), "ctl: bad duration 'soon'"),
                          (("rent", "--hours", "1h", "--gpus", "9", "--yes"), "ctl: no offer has 9 free GPU(s)"),
                          (("show", "nope"), "ctl: no lease 'nope'"),
                          (("release",), "ctl: renter alice has no active lease"),
                          (("rent", "--hours", "100h", "--yes"), "ctl: not enough credit")]:
        r = ctl(c, *args)
        assert r.returncode == 2, args
        assert r.stderr.decode().startswith(message) and r.stderr.count(b"\n") == 1, r.stderr
    assert ctl_json(c, "ls") == [] or all(x["state"] == "failed" for x in ctl_json(c, "ls"))
    assert ctl_json(c, "balance")["balance_micro"] == 5_000_000


def test_keys_commands(market):
    c = market
    second = c.new_key("alice2")
    r = ctl(c, "keys", "add", input=(second.parent / "alice2_key.pub").read_bytes())
    assert r.returncode == 0, r.stderr
    assert len(ctl_json(c, "keys", "list")) == 2
    assert ctl(c, "balance", key=second).returncode == 0               # the new key logs in
    fpr = r.stdout.decode().split()[1]
    assert ctl(c, "keys", "rm", fpr).returncode == 0
    assert ctl(c, "balance", key=second).returncode == 255


def test_two_renters_race_for_the_last_gpu(market):
    c = market
    bob = c.new_key("bob")
    c.broker("renter", "add", "bob", "--key", f"{bob}.pub")
    c.broker("renter", "credit", "bob", "5")
    procs = [subprocess.Popen(c.ssh_cmd("ctl", key=k) + ["rent", "--hours", "1h", "--yes"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for k in (c.key, bob)]
    outs = [p.communicate(timeout=120) for p in procs]
    results = [(p.returncode, err.decode()) for p, (_, err) in zip(procs, outs)]
    assert sorted(code for code, _ in results) == [0, 2]
    loser = [err for code, err in results if code == 2][0]
    assert loser.startswith("ctl: no offer has 1 free GPU(s)")
    balances = sorted(ctl_json(c, "balance", key=k)["balance_micro"] for k in (c.key, bob))
    assert balances == [4_600_000, 5_000_000]                           # one hold, no charge for the loser
    assert len(c.containers()) == 1


def test_broker_killed_mid_rent_leaves_no_container_and_no_charge(market):
    c = market
    owner = c.owner("pc1")
    events = subprocess.Popen(["docker", "events", "--filter", f"label=shellrent.hostd={owner}",
                               "--filter", "event=create", "--format", "{{.ID}}"], stdout=subprocess.PIPE)
    rent = subprocess.Popen(c.ssh_cmd("ctl") + ["rent", "--hours", "1h", "--yes"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        events.stdout.readline()                                       # the container is being made
        c.kill("broker")
    finally:
        events.kill()
        events.communicate()
    rent.communicate(timeout=30)
    assert rent.returncode != 0
    c.start_broker()
    c.wait_connected("pc1")
    wait_for(lambda: not c.containers(), timeout=60, what="the orphan container to be removed")
    leases = json.loads(c.broker("lease", "list", "--json").stdout)
    assert [x["state"] for x in leases] == ["failed"]
    assert ctl_json(c, "balance") == {**ctl_json(c, "balance"), "balance_micro": 5_000_000, "held_micro": 0}


def test_rent_at_login_with_the_interactive_picker(market):
    c = market
    term = Terminal(c.ssh_cmd("rent", "-tt"), width=120)
    try:
        term.wait("Offer [1-1, q to quit]:")
        assert "RTX 4090" in term.screen()
        term.type("7")
        term.wait("Please type a number")
        term.type("1")
        term.wait("Hours")
        term.type("90d")  # over the operator's limit: told so, and asked again
        term.wait("a lease may last at most 30d on this broker (operator limit BROKER_MAX_LEASE_DAYS=30)")
        term.wait("Hours (e.g. 2, 90m) [1]:")
        term.type("soon")
        term.wait("bad duration 'soon'")
        term.type("2h")
        term.wait("OK? [y/N]")
        assert "0.80 credits held" in term.screen()
        term.type("y")
        term.wait(f"next time: ssh -p {c.ssh_port} rent+")              # the broker as reached, no placeholder
        term.wait("/workspace#", timeout=60)                            # straight into the new lease's shell
        term.type("echo in-$SHELLRENT_LEASE_ID")
        lid = ctl_json(c, "ls")[0]["id"]
        term.wait(f"in-{lid}")
    finally:
        term.close()
    assert ctl_json(c, "balance")["held_micro"] == 800_000


def test_no_lease_without_a_terminal_names_the_rent_command(market):
    r = market.ssh("true")
    assert r.returncode == 2
    assert r.stderr.decode().strip().endswith(
        f"rent one with: ssh -p {market.ssh_port} ctl@127.0.0.1 rent --hours 1, "
        f"or ssh -p {market.ssh_port} rent@127.0.0.1 on a terminal")


def test_hostd_ends_the_lease_while_the_broker_is_down(market):
    c = market
    lid = ctl_json(c, "rent", "--hours", "8s", "--yes")["id"]
    c.kill("broker")
    wait_for(lambda: not c.containers(), timeout=60, what="hostd to end the lease on its own")
    c.start_broker()
    c.wait_connected("pc1")
    wait_for(lambda: ctl_json(c, "show", lid)["state"] == "ended", timeout=30, what="the broker to settle")
    settles = [t for t in ctl_json(c, "history") if t["kind"] == "settle"]
    assert len(settles) == 1
    bal = ctl_json(c, "balance")
    assert bal["held_micro"] == 0 and 5_000_000 - bal["balance_micro"] <= 400_000 * 9 // 3600
