"""`ctl ssh-config`: ~/.ssh/config entries for the renter's active leases, which OpenSSH reads as meant."""
import json
import subprocess
from types import SimpleNamespace

from shellrent.broker.accounts import Accounts
from shellrent.broker.commands import Commands


class Broker:
    def __init__(self, public_host=""):
        self.config = SimpleNamespace(public_host=public_host)
        self.store = SimpleNamespace(leases=lambda renter: [
            {"id": "a1b2c3d4", "state": "active", "ends_at": 2e9}, {"id": "0f0f0f0f", "state": "ended", "ends_at": 1e9},
            {"id": "99aa88bb", "state": "active", "ends_at": 2e9 + 60}])
        self.accounts = Accounts(self.db, self.store)

    async def db(self, fn, *args):
        return fn(*args)


async def test_entries_for_active_leases_that_openssh_parses(tmp_path):
    code, text = await Commands(Broker(), "alice", address=("203.0.113.7", 2222)).run("ssh-config")
    assert code == 0 and "0f0f0f0f" not in text
    path = tmp_path / "config"
    path.write_text(text)
    got = subprocess.run(["ssh", "-G", "-F", str(path), "shellrent-a1b2c3d4"], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    for line in ("hostname 203.0.113.7", "port 2222", "user rent+a1b2c3d4", "localforward 8889 [localhost]:8888",
                 "serveraliveinterval 30"):
        assert line in got
    code, out = await Commands(Broker(), "alice", address=("203.0.113.7", 2222)).run("ssh-config --json")
    assert [e["user"] for e in json.loads(out)] == ["rent+99aa88bb", "rent+a1b2c3d4"]
    # each lease its own local Jupyter port, so that two leases' forwards do not collide
    assert [e["local_forward"] for e in json.loads(out)] == ["8888 localhost:8888", "8889 localhost:8888"]
    assert "ssh -p 2222 ctl@203.0.113.7 ssh-config > ~/.ssh/shellrent.conf" in text


async def test_the_output_works_through_an_include_and_a_rerun_replaces_it(tmp_path):
    """As the header says: written to ~/.ssh/shellrent.conf and included from ~/.ssh/config."""
    main, conf = tmp_path / "config", tmp_path / "shellrent.conf"
    main.write_text(f"Include {conf}\n\nHost *\n    ServerAliveCountMax 3\n")
    broker = Broker()
    conf.write_text((await Commands(broker, "alice", address=("203.0.113.7", 2222)).run("ssh-config"))[1])
    got = subprocess.run(["ssh", "-G", "-F", str(main), "shellrent-a1b2c3d4"], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert "user rent+a1b2c3d4" in got and "localforward 8889 [localhost]:8888" in got
    broker.store.leases = lambda renter: [{"id": "a1b2c3d4", "state": "active", "ends_at": 2e9}]  # one ended
    conf.write_text((await Commands(broker, "alice", address=("203.0.113.7", 2222)).run("ssh-config"))[1])
    got = subprocess.run(["ssh", "-G", "-F", str(main), "shellrent-99aa88bb"], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert "user rent+99aa88bb" not in got  # the stale entry is gone
    got = subprocess.run(["ssh", "-G", "-F", str(main), "shellrent-a1b2c3d4"], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert "localforward 8888 [localhost]:8888" in got


async def test_the_operators_public_name_wins_and_no_lease_says_so():
    code, text = await Commands(Broker("gpu.example.org:22"), "alice", address=("10.0.0.5", 2222)).run("ssh-config")
    assert "    HostName gpu.example.org\n    Port 22\n" in text
    code, text = await Commands(Broker("gpu.example.org"), "alice", address=("10.0.0.5", 2222)).run("ssh-config")
    assert "    HostName gpu.example.org\n    Port 2222\n" in text
    broker = Broker()
    broker.store.leases = lambda renter: []
    code, text = await Commands(broker, "alice", address=("10.0.0.5", 2222)).run("ssh-config")
    assert code == 0 and "# no active lease: rent one first (ssh -p 2222 ctl@10.0.0.5 rent --hours 1)" in text
    code, text = await Commands(broker, "alice").run("ssh-config extra")
    assert code == 2 and text == "ctl: usage: ssh-config\n"
