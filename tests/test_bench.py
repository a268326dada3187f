"""scripts/bench --quick: every case runs end to end against both paths and every JSON key is written.
A smoke test of the benchmark itself: no timing is asserted (this machine is shared and noisy)."""
import json
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parent.parent
KEYS = ("download_mbps", "download_mbps_sshj", "upload_mbps", "upload_mbps_sshj", "true_ms", "true_ms_sshj",
        "rtt_ms", "rtt_ms_sshj", "rtt_p99_ms", "rtt_p99_ms_sshj", "lease_to_prompt_s", "sessions_1000_rss_mb",
        "sessions_1000_open_ms", "hosts_1000_rss_mb", "offers_10000_query_ms", "download_aes128_gcm_mbps",
        "download_chacha20_poly1305_mbps", "download_aes128_ctr_mbps", "download_aes128_ctr_mbps_sshj")


def test_bench_quick_runs_every_case(tmp_path):
    out = subprocess.run(["bash", "scripts/bench", "--quick", "--json", str(tmp_path / "bench.json")], cwd=ROOT,
                         capture_output=True, timeout=1200)
    assert out.returncode == 0, out.stderr.decode(errors="replace")[-3000:]
    data = json.loads((tmp_path / "bench.json").read_text())
    assert {k: data.get(k) for k in KEYS if not (isinstance(data.get(k), (int, float)) and data[k] > 0)} == {}
    table = out.stdout.decode()
    for case in ("ssh ... true", "download", "upload", "sftp get", "keystroke round trip", "sessions on them",
                 "chacha20-poly1305", "aes128-ctr"):
        assert case in table, table
