import json
import re
import stat

import pytest

from shellrent.hostd import gpus, settings
from shellrent.hostd.settings import SettingsError


def test_defaults_and_round_trip(tmp_path):
    path = tmp_path / "settings.json"
    assert settings.load(path)["price"] == 0.40
    values = settings.save(path, "fake_gpus", "RTX 4090:24,RTX 3060:12")
    settings.save(path, "grace", "2s")
    settings.save(path, "paused", "true")
    values = settings.load(path)
    assert (values["fake_gpus"], values["grace"], values["paused"]) == ("RTX 4090:24,RTX 3060:12", 2.0, True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["grace"] == "2s"  # stored as typed by the provider


@pytest.mark.parametrize("key, value, message", [
    ("price", "cheap", "bad value 'cheap' for price"),
    ("price", "-1", "must be from 0 to 10000"),
    ("price", "nan", "must be a finite number"),
    ("price", "-inf", "must be a finite number"),
    ("cpu_per_gpu", "1e3", "expected a whole number"),
    ("grace", "400d", "at most 366 days"),
    ("images", "a;b", "not an image name"),
    ("geolocation", "\x1b[2J", "at most 32 printable"),
    ("fake_gpus", "RTX 4090", "use MODEL:GB"),
    ("gpus", "first", "use all, or GPU indexes"),
    ("window", "night", "use HH:MM-HH:MM"),
    ("window", "25:00-08:00", "hours 00-23"),  # what the broker would refuse, refused here first
    ("window", "22:00-08:60", "use HH:MM-HH:MM"),
    ("grace", "soon", "use e.g. 30s"),
    ("paused", "maybe", "use true or false"),
    ("colour", "red", "unknown setting 'colour'"),
])
def test_bad_values_are_refused_and_nothing_changes(tmp_path, key, value, message):
    path = tmp_path / "settings.json"
    settings.save(path, "price", "0.5")
    with pytest.raises(SettingsError, match=message):
        settings.save(path, key, value)
    assert json.loads(path.read_text()) == {"price": "0.5"}


def test_broken_file_is_a_clear_error(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text("{nope")
    with pytest.raises(SettingsError, match="not valid JSON"):
        settings.load(path)


def test_warning_schedule():
    assert settings.warn_offsets({**settings.defaults(), "warnings": "1m,15m,5m"}) == [900, 300, 60]


def test_fake_gpus_are_stable_per_host_and_hand_over_no_devices():
    a = gpus.FakeSource("RTX 4090:24,RTX 3060:12", "host-a")
    assert [(g["index"], g["name"], g["memory_gb"]) for g in a.gpus()] == [(0, "RTX 4090", 24.0), (1, "RTX 3060", 12.0)]
    assert [g["uuid"] for g in a.gpus()] == [g["uuid"] for g in gpus.FakeSource("RTX 4090:24,RTX 3060:12", "host-a").gpus()]
    assert a.gpus()[0]["uuid"] != gpus.FakeSource("RTX 4090:24", "host-b").gpus()[0]["uuid"]
    assert a.device_ids([a.gpus()[0]["uuid"]]) == []


def test_without_nvml_no_gpus_are_shared():
    source = gpus.open_source("", "x")
    if source.kind == "fake":  # no NVIDIA driver here: nothing is shared, nothing is made up
        assert source.gpus() == []
    else:                      # a GPU machine: real devices, named by UUID
        assert source.gpus() and all(g["uuid"].startswith("GPU-") for g in source.gpus())


def test_config_show_prints_what_config_set_takes_back(tmp_path):
    """Every value `hostd config show` prints, given to `config set`, leaves the settings as they were."""
    import subprocess
    from .cluster import BIN
    home = tmp_path / "h"
    for key, value in (("retention", "48h"), ("grace", "90s"), ("paused", "yes"), ("fake_gpus", "RTX 4090:24")):
        subprocess.run([BIN / "hostd", "--home", home, "config", "set", key, value], check=True, capture_output=True)
    before = settings.load(home / "settings.json")
    shown = subprocess.run([BIN / "hostd", "--home", home, "config", "show"], check=True, capture_output=True,
                           text=True).stdout
    printed = dict(re.match(r"(\S+) +(.*?)  +\S", line).groups() for line in shown.splitlines())
    assert (printed["retention"], printed["grace"], printed["paused"], printed["watchdog"]) == \
        ("2d", "1m30s", "true", "5s")
    for key, text in printed.items():
        text = "" if text == "''" else text
        settings.save(home / "settings.json", key, text)
    assert settings.load(home / "settings.json") == before


@pytest.mark.parametrize("text, bits", [
    ("0", 0), ("00", 0), ("800kbit", 800_000), ("50mbit", 50_000_000), ("50MBIT", 50_000_000),
    ("1.5mbit", 1_500_000), ("1gbit", 1_000_000_000), ("40 mbit", 40_000_000), ("100gbit", 100_000_000_000)],
    ids=lambda v: str(v))
def test_a_rate_is_bits_per_second_and_shows_as_config_set_takes_it(text, bits):
    assert settings.parse("bandwidth", text) == bits
    assert settings.parse("bandwidth", settings.shown("bandwidth", bits)) == bits


@pytest.mark.parametrize("text, message", [
    ("fast", "use e.g. 50mbit"), ("50", "use e.g. 50mbit"), ("-5mbit", "use e.g. 50mbit"),
    ("10mbps", "bps is bytes in tc's units"), ("10kbps", "bps is bytes"), ("50kbit", "from 100kbit to 100gbit"),
    ("0.00001kbit", "from 100kbit"), ("101gbit", "from 100kbit"), ("nan mbit", "use e.g."), ("", "use e.g.")])
def test_a_bad_rate_names_the_setting_and_the_units(text, message):
    with pytest.raises(SettingsError, match=re.escape(message)) as err:
        settings.parse("bandwidth_total", text)
    assert str(err.value).startswith(f"bad value {text!r} for bandwidth_total")


def test_config_set_bandwidth_refuses_a_bad_rate_in_one_line_and_changes_nothing(tmp_path):
    import subprocess
    from .cluster import BIN
    home = tmp_path / "h"
    hostd = [BIN / "hostd", "--home", home, "config"]
    ok = subprocess.run([*hostd, "set", "bandwidth", "40mbit"], capture_output=True, text=True)
    assert (ok.returncode, ok.stdout) == (0, "bandwidth = 40mbit\n")
    before = (home / "settings.json").read_bytes()
    bad = subprocess.run([*hostd, "set", "bandwidth", "fast"], capture_output=True, text=True)
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "bad value 'fast' for bandwidth" in bad.stderr
    assert (home / "settings.json").read_bytes() == before
    shown = subprocess.run([*hostd, "show"], capture_output=True, text=True, check=True).stdout
    assert re.search(r"^bandwidth +40mbit +each lease", shown, re.M)
    assert re.search(r"^bandwidth_total +0 +all leases", shown, re.M)


@pytest.mark.parametrize("bandwidth, total, leases, rate", [
    (0, 0, 3, 0), (40, 0, 3, 40), (0, 100, 1, 100), (0, 100, 4, 25), (40, 100, 2, 40), (40, 100, 4, 25),
    (0, 100, 0, 100), (0, 0.1, 2, 0.1), (0, 1, 20, 0.1)])
def test_each_lease_gets_its_cap_and_no_more_than_an_even_share_of_the_total(bandwidth, total, leases, rate):
    """... but never less than 100kbit, the smallest rate a setting takes (an SSH session stalls below)."""
    values = {"bandwidth": int(bandwidth * 10 ** 6), "bandwidth_total": int(total * 10 ** 6)}
    assert settings.lease_rate(values, leases) == int(rate * 10 ** 6)
