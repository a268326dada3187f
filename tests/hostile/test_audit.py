"""The algorithms as an independent auditor sees them: ssh-audit (PyPI) finds no failure on the renter
port nor on the tunnel port, and hostd, which the auditor cannot reach (it dials out), offers exactly
the same lists in its own KEXINIT. Real broker and hostd; the client tests (tests/test_e2e_clients.py)
show every renter client still connects."""
import json
import socket
import subprocess
import threading

import pytest

from shellrent.common import algorithms

from ..cluster import BIN

pytestmark = [pytest.mark.docker, pytest.mark.hostile]


def _audit(port: int) -> dict:
    r = subprocess.run([BIN / "ssh-audit", "-j", "--skip-rate-test", "-p", str(port), "127.0.0.1"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode in (0, 2), (r.returncode, r.stdout[-2000:], r.stderr[-2000:])  # 3: a failure, 1: no answer
    return json.loads(r.stdout)


def _failures(report: dict) -> list:
    return [(kind, a["algorithm"], a["notes"]["fail"]) for kind in ("kex", "key", "enc", "mac")
            for a in report.get(kind, []) if a.get("notes", {}).get("fail")]


@pytest.mark.parametrize("port", ["ssh_port", "tunnel_port"])
def test_ssh_audit_finds_no_failure_on_either_port(fresh_cluster, port):
    report = _audit(getattr(fresh_cluster, port))
    assert _failures(report) == [] and report["cves"] == []
    kex = [a["algorithm"] for a in report["kex"]]
    assert kex[0] == "mlkem768x25519-sha256"                    # a post-quantum hybrid first
    assert ("kex-strict-s-v00@openssh.com" if port == "ssh_port" else "kex-strict-c-v00@openssh.com") in kex
    assert [a["algorithm"] for a in report["key"]] == ["ssh-ed25519"]
    assert report["banner"]["raw"] == "SSH-2.0-shellrent"


def _namelists(payload: bytes) -> list[list[str]]:
    """The ten name-lists of a KEXINIT payload (after its type byte and cookie)."""
    out, at = [], 17
    for _ in range(10):
        n = int.from_bytes(payload[at:at + 4], "big")
        out.append(payload[at + 4:at + 4 + n].decode().split(",") if n else [])
        at += 4 + n
    return out


def test_hostd_offers_the_same_lists_as_the_broker(tmp_path):
    """hostd is the SSH server of its tunnel: a listener of the test's own reads its KEXINIT."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    got = {}

    def serve():
        conn, _ = listener.accept()
        conn.settimeout(20)
        conn.sendall(b"SSH-2.0-auditor\r\n")
        data = b""
        while b"\r\n" not in data:
            data += conn.recv(4096)
        got["banner"], data = data.split(b"\r\n", 1)
        while len(data) < 5 or len(data) < 4 + int.from_bytes(data[:4], "big"):
            data += conn.recv(65536)
        length, padding = int.from_bytes(data[:4], "big"), data[4]
        got["kexinit"] = data[5:4 + length - padding]
        conn.close()
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    subprocess.run([BIN / "hostd", "--home", tmp_path / "h", "join", f"127.0.0.1:{port}", "x" * 40 + ".FAKEFINGERPRINT"],
                   capture_output=True, timeout=60)
    thread.join(20)
    listener.close()
    assert got["banner"] == b"SSH-2.0-shellrent-hostd"
    assert got["kexinit"][0] == 20
    kex, keys, enc, _, mac, _, *_ = _namelists(got["kexinit"])
    assert [k for k in kex if not k.startswith(("ext-info", "kex-strict"))] == algorithms.KEX
    assert "kex-strict-s-v00@openssh.com" in kex
    assert keys == algorithms.HOST_KEYS and mac == algorithms.MACS
    assert set(enc) <= {"aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com"}
