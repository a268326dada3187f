"""`broker serve --metrics` and `hostd run --metrics`: scraped while a lease runs, parsed with Prometheus'
own parser."""
import json
import re
import signal
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .cluster import wait_for

pytestmark = pytest.mark.docker


def scrape(port: int) -> dict:
    """{(sample name, frozenset(labels)): value}"""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels) -> float:
    return samples[(name, frozenset(labels.items()))]


def test_broker_and_hostd_metrics_while_a_lease_runs(fresh_cluster):
    c = fresh_cluster
    c.kill("broker", signal.SIGTERM)
    c.start_broker("--metrics", "127.0.0.1:0")
    port = json.loads((c.bhome / "serve.json").read_text())["metrics"][1]
    assert urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10).read() == b"ok\n"
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/nothing", timeout=10)
    c.add_host("pc1", {"fake_gpus": "RTX 4090:24,A100:80", "power_limit": "200"})
    c.kill("hostd-pc1", signal.SIGTERM)
    c.start_hostd("pc1", "--metrics", "127.0.0.1:0")
    hport = json.loads((c.hostd_homes["pc1"] / "status.json").read_text())["metrics"][1]
    c.broker("renter", "credit", "alice", "5")
    wait_for(lambda: json.loads(c.ssh("offers", "--json", user="ctl").stdout), what="the offers")
    assert c.ssh("rent", "gpu_name=A100", "--hours", "1", "--yes", user="ctl").returncode == 0
    assert c.ssh("head -c 1000000 /dev/zero").returncode == 0
    assert c.ssh("true", key=c.new_key("stranger")).returncode == 255
    m = scrape(port)
    assert value(m, "shellrent_broker_hosts_connected") == 1
    assert value(m, "shellrent_broker_logins_total") >= 3 and value(m, "shellrent_broker_failed_logins_total") >= 1
    assert value(m, "shellrent_broker_relayed_bytes_total", direction="to_renter") >= 1_000_000
    assert value(m, "shellrent_broker_ctl_seconds_count", command="offers") >= 1
    assert value(m, "shellrent_broker_ctl_seconds_count", command="rent") == 1
    assert value(m, "shellrent_broker_leases", state="active") == 1
    assert value(m, "shellrent_broker_credits_held") > 0
    assert value(m, "shellrent_broker_renter_sessions", kind="shell") == 0
    h = scrape(hport)
    assert value(h, "shellrent_hostd_leases", state="active") == 1
    gpus = {dict(k[1])["name"]: v for k, v in h.items() if k[0] == "shellrent_hostd_gpu_power_limit_watts"}
    assert gpus == {"RTX 4090": 300, "A100": 200}  # the rented one at the provider's limit
    assert {dict(k[1])["name"]: v for k, v in h.items() if k[0] == "shellrent_hostd_gpu_memory_total_bytes"} == \
        {"RTX 4090": 24 * 2**30, "A100": 80 * 2**30}
    assert value(h, "shellrent_hostd_watchdog_kills_total") == 0
    assert value(h, "shellrent_hostd_container_restarts") == 0
    # Every series the Grafana dashboard in docs/ draws is one of these.
    dashboard = (Path(__file__).parent.parent / "docs" / "grafana-dashboard.json").read_text()
    drawn = set(re.findall(r"shellrent_[a-z_]+", dashboard))
    assert drawn and drawn <= {name for name, _ in (*m, *h)}, drawn - {name for name, _ in (*m, *h)}
