"""SSH clients renters use besides OpenSSH, against a real lease: PuTTY's plink, libssh2 (through curl),
paramiko; and the renter port's ciphers (AES-GCM for clients that have it, chacha20 and AES-CTR for the rest)."""
import subprocess

import asyncssh
import paramiko
import pytest

from .cluster import run

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def host_key(cluster):
    return asyncssh.read_private_key(str(cluster.bhome / "ssh_host_ed25519_key"))


@pytest.fixture(scope="module")
def ppk(cluster):
    path = cluster.root / "alice.ppk"
    run("puttygen", cluster.key, "-O", "private", "-o", path)
    return path


def _plink(cluster, host_key, ppk, command):
    return run("plink", "-batch", "-ssh", "-hostkey", host_key.get_fingerprint("sha256"), "-P", cluster.ssh_port,
               "-i", ppk, "rent@127.0.0.1", command, check=False, stdin=subprocess.DEVNULL)


def test_plink_runs_commands_and_always_gets_the_exit_status(cluster, host_key, ppk):
    r = _plink(cluster, host_key, ppk, "echo hi; echo err >&2; exit 3")
    assert (r.returncode, r.stdout, r.stderr) == (3, b"hi\n", b"err\n")
    assert [_plink(cluster, host_key, ppk, "false").returncode for _ in range(10)] == [1] * 10


def test_libssh2_through_curl_moves_files_by_sftp_and_scp(cluster, tmp_path):
    src = tmp_path / "up.bin"
    src.write_bytes(bytes(range(256)) * 4096)
    auth = ["-sS", "--insecure", "--key", cluster.key, "--pubkey", f"{cluster.key}.pub"]
    url = f"sftp://rent@127.0.0.1:{cluster.ssh_port}/workspace/curl-up.bin"
    run("curl", *auth, "-T", src, url)
    assert run("curl", *auth, url).stdout == src.read_bytes()
    scp = run("curl", *auth, f"scp://rent@127.0.0.1:{cluster.ssh_port}/workspace/curl-up.bin").stdout
    assert scp == src.read_bytes()
    assert cluster.ssh("sha256sum < /workspace/curl-up.bin").stdout.split()[0].decode() == \
        subprocess.run(["sha256sum"], input=src.read_bytes(), capture_output=True).stdout.split()[0].decode()


def test_paramiko_exec_and_sftp(cluster, host_key):
    client = paramiko.SSHClient()
    client.get_host_keys().add(f"[127.0.0.1]:{cluster.ssh_port}", "ssh-ed25519",
                               paramiko.Ed25519Key(data=host_key.public_data))
    client.connect("127.0.0.1", cluster.ssh_port, username="rent", key_filename=str(cluster.key),
                   look_for_keys=False, allow_agent=False)
    try:
        _, out, err = client.exec_command("echo from-paramiko; exit 5")
        assert out.read() == b"from-paramiko\n" and out.channel.recv_exit_status() == 5
        with client.open_sftp() as sftp:
            with sftp.open("/workspace/paramiko.txt", "w") as f:
                f.write("written by paramiko\n")
            assert sftp.open("/workspace/paramiko.txt").read() == b"written by paramiko\n"
    finally:
        client.close()


@pytest.mark.parametrize("cipher,works", [
    (None, "aes128-gcm@openssh.com"),  # OpenSSH's default list: it has AES-GCM, so it gets it
    ("chacha20-poly1305@openssh.com", "chacha20-poly1305@openssh.com"), ("aes128-ctr", "aes128-ctr"),
    ("aes256-ctr", "aes256-ctr"), ("aes256-gcm@openssh.com", "aes256-gcm@openssh.com"), ("3des-cbc", None)])
def test_the_renter_port_negotiates_what_each_client_has_and_aes_gcm_when_it_can(cluster, cipher, works):
    r = cluster.ssh("true", opts=["-v", *(["-c", cipher] if cipher else [])])
    chosen = [line.split("cipher: ")[1].split()[0] for line in r.stderr.decode().splitlines()
              if "server->client cipher:" in line]
    if works:
        assert r.returncode == 0 and chosen == [works]
    else:
        assert r.returncode == 255 and b"no matching cipher found" in r.stderr
