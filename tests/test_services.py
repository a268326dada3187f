"""`broker service install` and `hostd service install`: systemd units that systemd accepts."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shellrent.common import systemd

BIN = Path(sys.executable).parent


def _run(*argv):
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=60)


def _verify(unit: Path) -> None:
    """systemd's own check, where the tool exists (it does on Debian, and in CI)."""
    if shutil.which("systemd-analyze"):
        r = _run("systemd-analyze", "verify", unit)
        assert (r.returncode, r.stderr) == (0, ""), r.stderr


def test_broker_unit(tmp_path):
    home, units = tmp_path / "broker", tmp_path / "units"
    r = _run(BIN / "broker", "--home", home, "service", "install", "--unit-dir", units)
    assert r.returncode == 1 and "has no broker: run `broker --home" in r.stderr and not units.exists()
    _run(BIN / "broker", "--home", home, "init")
    printed = _run(BIN / "broker", "--home", home, "service", "install", "--print", "--ssh", "0.0.0.0:22",
                   "--fee-percent", "7", "--unit-dir", units)
    assert printed.returncode == 0 and not units.exists()
    r = _run(BIN / "broker", "--home", home, "service", "install", "--ssh", "0.0.0.0:22", "--fee-percent", "7",
             "--unit-dir", units)
    unit = units / "shellrent-broker.service"
    text = unit.read_text()
    assert r.returncode == 0 and r.stdout.startswith(f"wrote {unit}:") and text in r.stdout and text == printed.stdout
    assert "systemctl daemon-reload && systemctl enable --now shellrent-broker" in r.stdout
    assert f"ExecStart={BIN / 'broker'} --home {home} serve --ssh 0.0.0.0:22 --tunnel 0.0.0.0:2223 " \
        "--fee-percent 7\n" in text
    for line in ("Restart=on-failure", "AmbientCapabilities=CAP_NET_BIND_SERVICE", "NoNewPrivileges=yes",
                 "WantedBy=multi-user.target", "User=root", "EnvironmentFile=-/etc/default/shellrent-broker"):
        assert line + "\n" in text
    assert "PrivateTmp" not in text  # the home is under /tmp here: PrivateTmp would hide it
    assert oct(unit.stat().st_mode & 0o777) == "0o644"
    _verify(unit)
    bad = _run(BIN / "broker", "--home", home, "service", "install", "--ssh", "nowhere", "--unit-dir", units)
    assert bad.returncode != 0 and unit.read_text() == text


def test_hostd_unit(tmp_path):
    home, units = tmp_path / "hostd", tmp_path / "units"
    r = _run(BIN / "hostd", "--home", home, "service", "install", "--unit-dir", units)
    assert r.returncode == 1 and "has not joined a broker" in r.stderr and not units.exists()
    home.mkdir()
    (home / "broker.json").write_text(json.dumps({"addr": ["127.0.0.1", 2223], "fingerprint": "SHA256:x",
                                                  "host": "pc1"}))
    r = _run(BIN / "hostd", "--home", home, "service", "install", "--unit-dir", units)
    unit = units / "shellrent-hostd.service"
    text = unit.read_text()
    assert r.returncode == 0 and text in r.stdout
    assert f"ExecStart={BIN / 'hostd'} --home {home} run\n" in text
    for line in ("After=network-online.target docker.service", "Wants=network-online.target docker.service",
                 "Restart=on-failure", "User=root", "KillMode=process", "LimitNOFILE=65536",
                 "EnvironmentFile=-/etc/default/shellrent-hostd"):
        assert line + "\n" in text
    _verify(unit)
    assert _run(BIN / "hostd", "--home", home, "service", "install", "--print").stdout == text


def test_unit_paths_are_quoted_and_escaped_for_systemd(tmp_path):
    text = systemd.unit("x", ["/opt/a b/broker", "--home", "/srv/100%/$HOME"], [], {}, "x")
    assert "ExecStart='/opt/a b/broker' --home '/srv/100%%/$$HOME'\n" in text
    with pytest.raises(systemd.UnitError, match="control characters"):
        systemd.unit("x", ["/srv/a\nExecStartPre=/bin/evil"], [], {}, "x")
    assert not systemd.private_tmp_ok(Path("/var/tmp/broker")) and systemd.private_tmp_ok(Path("/var/lib/broker"))
    unit = tmp_path / "x.service"
    unit.write_text(text.replace("/opt/a b/broker", "/bin/true"))
    _verify(unit)
