"""Renters' input: every number is checked (one line, exit 2, nothing changes), and a key that is
someone else's is refused without saying whose. hostd's settings refuse NaN and infinity too."""
import json

import pytest

pytestmark = [pytest.mark.docker, pytest.mark.hostile]

BAD = [
    ("rent", "--hours", "nan", "--yes"), ("rent", "--hours", "inf", "--yes"), ("rent", "--hours", "-1", "--yes"),
    ("rent", "--hours", "1e400", "--yes"), ("rent", "--hours", "99999999d", "--yes"),
    ("rent", "--hours", "0", "--yes"), ("rent", "--hours", "1", "--gpus", "nan", "--yes"),
    ("rent", "--hours", "1", "--gpus", "-1", "--yes"), ("rent", "--hours", "1", "--gpus", "1e9", "--yes"),
    ("rent", "--hours", "1", "--gpus", "9" * 5000, "--yes"), ("extend", "nan"), ("extend", "-Infinity"),
    ("extend", "1e999999"), ("offers", "gpu_ram>=nan"), ("offers", "dph<inf"), ("offers", "num_gpus>-1e999"),
    ("rent", "gpu_ram>=NaN", "--hours", "1", "--yes"), ("rent", "--hours"), ("offers", "--foo"), ("ls", "--"),
    ("history", "-o"), ("rent", "--hours", "\u0661", "--yes"), ("rent", "--hours", "\u0661h", "--yes"),
    ("offers", "gpu_ram>=\u0661"), ("offers", "num_gpus>=1_0"), ("rent", "--hours", "1_0", "--yes"),
    ("show", "nosuchlease"),
]


def test_bad_numbers_get_one_line_and_exit_2(cluster):
    c = cluster

    def leases():
        return [(x["id"], x["state"], x["ends_at"]) for x in json.loads(c.ssh("ls", "--json", user="ctl").stdout)]

    before = leases()
    for args in BAD:
        r = c.ssh(*args, user="ctl")
        err = r.stderr.decode()
        assert r.returncode == 2, (args, r)
        assert err.startswith("ctl: ") and err.count("\n") == 1 and "internal error" not in err, (args, err)
    assert leases() == before


def test_someone_elses_key_cannot_be_added_and_says_nothing_of_whose(cluster):
    c = cluster
    bob = c.new_key("bob")
    c.broker("renter", "add", "bob", "--key", f"{bob}.pub")
    for key in (bob, c.key):  # another renter's key, and one's own again
        r = c.ssh("keys", "add", user="ctl", input=(key.parent / f"{key.name}.pub").read_bytes())
        assert r.returncode == 2
        assert r.stderr.decode() == "ctl: that key cannot be added\n"
    r = c.ssh("whoami", key=bob)
    assert r.returncode == 2 and b"renter bob has no active lease" in r.stderr  # bob's key is still bob's
    assert len(json.loads(c.ssh("keys", "list", "--json", user="ctl", check=True).stdout)) == 1


@pytest.mark.parametrize("key,value", [("price", "nan"), ("price", "inf"), ("price", "-1"), ("ram_per_gpu", "NaN"),
                                       ("cpu_per_gpu", "1e9"), ("grace", "99999999d"), ("geolocation", "\x1b[2J"),
                                       ("images", "a;b")])
def test_hostd_settings_refuse_what_is_not_a_finite_value(cluster, key, value):
    c = cluster
    before = c.hostd("pc1", "config", "show").stdout
    r = c.hostd("pc1", "config", "set", "--", key, value, check=False)
    assert r.returncode != 0 and f"for {key}".encode() in r.stderr and r.stderr.count(b"\n") == 1
    assert c.hostd("pc1", "config", "show").stdout == before
