"""Installed, the code is one package: shellrent.broker, shellrent.hostd, shellrent.keys (key material
only) and shellrent.common (the wire protocol and what else both sides share); no generic top-level
names (broker, hostd, keys) to collide with other packages."""
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_holds_one_package_and_its_commands(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp_path, ROOT], check=True,
                   capture_output=True)
    [wheel] = tmp_path.glob("shellrent-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"shellrent", next(t for t in tops if t.endswith(".dist-info"))}
    packages = {n.rsplit("/", 1)[0] for n in names if n.startswith("shellrent/")}
    assert packages == {"shellrent/broker", "shellrent/broker/store", "shellrent/hostd", "shellrent/keys", "shellrent/common"}
    assert sorted(n for n in names if n.startswith("shellrent/keys/")) == [
        "shellrent/keys/__init__.py", "shellrent/keys/material.py", "shellrent/keys/tokens.py"]
    assert "shellrent/common/protocol.py" in names
    assert "shellrent/hostd/inside.py" in names and "shellrent/hostd/gpu_check.py" in names  # run in containers
    entry = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "broker = shellrent.broker.cli:main" in entry and "hostd = shellrent.hostd.cli:main" in entry


def test_nothing_is_imported_under_a_generic_name(tmp_path):
    code = ("import sys, shellrent.broker.cli, shellrent.broker.server, shellrent.hostd.cli, shellrent.hostd.agent\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('broker', 'hostd', 'keys', 'common')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, capture_output=True, text=True)
    assert out.stdout == "[]\n"
