"""SSH clients renters use besides OpenSSH, against a real lease: PuTTY's plink, libssh2 (through curl),
paramiko, dropbear's dbclient, Go's x/crypto/ssh (through rclone's sftp backend), sshfs; and the renter port's
ciphers (AES-GCM for clients that have it, chacha20 and AES-CTR for the rest)."""
import os
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


def test_dropbear_runs_commands_with_their_exit_status(cluster, tmp_path):
    """dbclient sends a guessed key exchange packet; the broker ignores it when the RFC says the guess
    was wrong (asyncssh alone took it and then cut the client off)."""
    key = tmp_path / "alice.dropbear"
    run("dropbearconvert", "openssh", "dropbear", cluster.key, key)
    env = {**os.environ, "HOME": str(tmp_path)}  # -y: its known_hosts, accepting the key, go here

    def dbclient(command, *opts):
        return run("dbclient", "-y", "-i", key, "-p", cluster.ssh_port, *opts, "rent@127.0.0.1", command,
                   check=False, env=env, stdin=subprocess.DEVNULL)
    for cipher in ("aes128-ctr", "chacha20-poly1305@openssh.com", None):
        r = dbclient("echo hi; exit 7", *(["-c", cipher] if cipher else []))
        assert (r.returncode, r.stdout) == (7, b"hi\n"), r.stderr
    assert [dbclient("false").returncode for _ in range(5)] == [1] * 5


def test_go_ssh_through_rclone_moves_files_by_sftp(cluster, host_key, tmp_path):
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{cluster.ssh_port} {host_key.export_public_key().decode()}")
    remote = (f":sftp,host=127.0.0.1,port={cluster.ssh_port},user=rent,key_file={cluster.key},"
              f"known_hosts_file={known}:/workspace")
    src = tmp_path / "go.bin"
    src.write_bytes(os.urandom(3 << 20))
    env = {**os.environ, "RCLONE_CONFIG": str(tmp_path / "rclone.conf")}
    run("rclone", "copyto", src, f"{remote}/go.bin", env=env)
    assert run("rclone", "cat", f"{remote}/go.bin", env=env).stdout == src.read_bytes()
    assert "go.bin" in run("rclone", "lsf", remote, env=env).stdout.decode().split()
    assert cluster.ssh("stat -c %s /workspace/go.bin").stdout == f"{3 << 20}\n".encode()


def test_sshfs_mounts_the_workspace(cluster, tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    opts = ",".join([f"port={cluster.ssh_port}", f"IdentityFile={cluster.key}", "IdentitiesOnly=yes", "BatchMode=yes",
                     f"UserKnownHostsFile={cluster.root / 'known_hosts'}", "StrictHostKeyChecking=yes"])
    run("sshfs", "-o", opts, "rent@127.0.0.1:/workspace", mnt, timeout=60)
    try:
        (mnt / "sshfs.txt").write_text("written through sshfs\n")
        cluster.ssh("echo from-the-lease > /workspace/lease.txt", check=True)
        assert (mnt / "lease.txt").read_text() == "from-the-lease\n"
        (mnt / "sshfs.txt").rename(mnt / "moved.txt")
        assert cluster.ssh("cat /workspace/moved.txt").stdout == b"written through sshfs\n"
    finally:
        run("fusermount", "-u", mnt, check=False)
    assert not os.path.ismount(mnt)


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
