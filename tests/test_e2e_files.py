"""scp (SFTP and legacy mode), sftp and rsync into and out of /workspace through the broker."""
import hashlib
import os

import pytest

from .cluster import run

pytestmark = pytest.mark.docker


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _remote_sha(cluster, path):
    return cluster.ssh(f"sha256sum {path}", check=True).stdout.split()[0].decode()


@pytest.mark.parametrize("mode", [[], ["-O"]], ids=["sftp-protocol", "legacy-scp"])
def test_scp_both_ways(cluster, tmp_path, mode):
    src = tmp_path / "up.bin"
    src.write_bytes(os.urandom(3_000_000))
    base = ["scp", *mode, "-P", str(cluster.ssh_port), *cluster.ssh_opts()]
    run(*base, src, "rent@127.0.0.1:/workspace/scp.bin")
    assert _remote_sha(cluster, "/workspace/scp.bin") == _sha(src)
    run(*base, "rent@127.0.0.1:/workspace/scp.bin", tmp_path / "down.bin")
    assert _sha(tmp_path / "down.bin") == _sha(src)


def test_sftp_batch(cluster, tmp_path):
    src = tmp_path / "s.txt"
    src.write_text("sftp works\n")
    batch = tmp_path / "batch"
    batch.write_text(f"put {src} /workspace/s.txt\nget /workspace/s.txt {tmp_path / 'back.txt'}\nls /workspace\n")
    r = run("sftp", "-b", batch, "-P", str(cluster.ssh_port), *cluster.ssh_opts(), "rent@127.0.0.1")
    assert b"/workspace/s.txt" in r.stdout
    assert (tmp_path / "back.txt").read_text() == "sftp works\n"


def test_sftp_runs_inside_the_container(cluster, tmp_path):
    # A symlink in the workspace pointing at / must resolve inside the container, never on the host.
    cluster.ssh("ln -sfn / /workspace/root && echo container > /etc/whereami", check=True)
    batch = tmp_path / "batch"
    batch.write_text(f"get /workspace/root/etc/whereami {tmp_path / 'where'}\n")
    run("sftp", "-b", batch, "-P", str(cluster.ssh_port), *cluster.ssh_opts(), "rent@127.0.0.1")
    assert (tmp_path / "where").read_text() == "container\n"


def test_rsync_both_ways(cluster, tmp_path):
    src = tmp_path / "tree"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("a\n")
    (src / "sub" / "b.bin").write_bytes(os.urandom(200_000))
    run("rsync", "-a", "-e", cluster.ssh_e(), f"{src}/", "rent@127.0.0.1:/workspace/tree/")
    assert cluster.ssh("cat /workspace/tree/a.txt").stdout == b"a\n"
    run("rsync", "-a", "-e", cluster.ssh_e(), "rent@127.0.0.1:/workspace/tree/", f"{tmp_path / 'back'}/")
    assert _sha(tmp_path / "back" / "sub" / "b.bin") == _sha(src / "sub" / "b.bin")
