"""`ssh rent@broker CMD`: streams, exit status, stdin EOF, binary safety; through the real stack."""
import hashlib
import os

import pytest

pytestmark = pytest.mark.docker


def test_stdout_and_stderr_stay_apart(cluster):
    r = cluster.ssh("echo out; echo err >&2")
    assert (r.stdout, r.stderr, r.returncode) == (b"out\n", b"err\n", 0)


@pytest.mark.parametrize("code", [0, 1, 3, 42, 255])
def test_exit_status_is_passed_back(cluster, code):
    assert cluster.ssh(f"exit {code}").returncode == code


def test_death_by_signal_is_reported_like_openssh(cluster):
    r = cluster.ssh("kill -TERM $$")
    # OpenSSH's client exits 255 when the remote command died of a signal.
    assert r.returncode == 255


def test_runs_in_the_lease_container(cluster):
    r = cluster.ssh("hostname; pwd; echo $SHELLRENT_LEASE_ID")
    assert r.stdout.decode().split() == [f"rent-{cluster.lease}", "/workspace", cluster.lease]


def test_stdin_eof_reaches_the_command(cluster):
    r = cluster.ssh("wc -c; echo after-eof", input=b"hello\n")
    assert r.stdout.split() == [b"6", b"after-eof"]


def test_50mb_binary_round_trip(cluster):
    data = os.urandom(50 * 1024 * 1024)
    r = cluster.ssh("cat", input=data, timeout=300)
    assert r.returncode == 0
    assert hashlib.sha256(r.stdout).hexdigest() == hashlib.sha256(data).hexdigest()


def test_binary_output_with_stderr_interleaved(cluster):
    r = cluster.ssh("head -c 3000000 /dev/zero | tr '\\0' '\\377'; echo e >&2; printf '\\000\\001'")
    assert r.stdout == b"\xff" * 3000000 + b"\x00\x01"
    assert r.stderr == b"e\n"


def test_output_sent_right_after_start_is_not_lost(cluster):
    # docker-py's socket mode can drop the first bytes after the upgrade; our stream must not.
    for _ in range(5):
        assert cluster.ssh("echo first").stdout == b"first\n"


def test_environment_is_filtered(cluster):
    r = cluster.ssh("echo ${LC_PROBE:-none} ${EVIL_PROBE:-none}", opts=["-o", "SendEnv=LC_PROBE EVIL_PROBE"],
                    env={**os.environ, "LC_PROBE": "kept", "EVIL_PROBE": "dropped"})
    assert r.stdout.split() == [b"kept", b"none"]
