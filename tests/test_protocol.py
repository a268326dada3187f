"""The wire formats: every id from the network is checked against its exact format."""
import pytest

from shellrent.common import protocol


@pytest.mark.parametrize("check,good,bad", [
    (protocol.lease_id, ["0123abcd", "f" * 32], ["", "0123abc", "0123ABCD", "../../etc", "0123abcd\n", "g" * 8, 12345678,
                                             None, "a" * 33]),
    (protocol.name, ["pc1", "alice", "a-b_c"], ["", "Pc1", "1pc", "a" * 33, "a/b", "a b", "../x", None]),
    (protocol.image, ["shellrent-base:bookworm", "ubuntu", "nvcr.io/nvidia/pytorch:24.01-py3",
                  "localhost:5000/a/b:c", "a@sha256:" + "0" * 64],
     ["", "a b", "img;rm", "../x", "-x", "A" * 300, "a:b:c", "a/$(x)", None, "x:\u0661", "busybox:\u01c5",
      "h\u0661:5000/a"]),  # tags and ports in ASCII only: the engine refuses the rest
    (protocol.gpu_uuid, ["GPU-4b2f6a9e-1f1e-4d0c-9c6a-0a1b2c3d4e5f", "GPU-fake-00112233445566778899aabb",
                     "MIG-4b2f6a9e-1f1e-4d0c-9c6a-0a1b2c3d4e5f"],
     ["", "GPU-", "$(reboot)", "GPU-../../x", "gpu-0123456789", None]),
], ids=["lease_id", "name", "image", "gpu_uuid"])
def test_formats(check, good, bad):
    for value in good:
        assert check(value) == value
    for value in bad:
        with pytest.raises(protocol.WireError):
            check(value)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1, 5e9, True, "1", None, 10**400, -10**400])
def test_timestamps_refuse_what_is_not_a_time(value):
    with pytest.raises(protocol.WireError):
        protocol.timestamp(value)


def test_decode_refuses_nan_and_non_objects():
    for line in (b'{"a":NaN}', b'{"a":Infinity}', b'{"a":1e400}', b"[1]", b"nope", b"{" * (protocol.MAX_LINE + 1),
                 b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"):
        with pytest.raises(protocol.WireError):
            protocol.decode(line)
    assert protocol.decode(b'{"a":1}') == {"a": 1}


def test_targets_name_a_lease_and_a_loopback_host_only():
    assert protocol.parse_target(protocol.target("0123abcd", "localhost")) == ("0123abcd", "localhost")
    for dest in ("lease.0123abcd/10.0.0.1", "lease.../../x/localhost", "lease.0123abcd", "example.com",
                 "lease.0123abcd/169.254.169.254"):
        assert protocol.parse_target(dest) is None


def test_env_keeps_only_the_allow_list():
    env = {"LANG": "C", "LC_ALL": "C", "TZ": "UTC", "PATH": "/evil", "LD_PRELOAD": "x", protocol.LEASE_ENV: "x",
           "LC_A=B": "x", "LANG2": "x", "LC_CTYPE": "a\0b"}
    assert protocol.filter_env(env) == {"LANG": "C", "LC_ALL": "C", "TZ": "UTC"}


def test_printable_disarms_terminal_controls():
    text = "ok\x1b]0;owned\x07\x1b[2J\rback\x9b1m\u202eevil\ttab\nline"
    out = protocol.printable(text)
    assert not any(ch in out for ch in "\x1b\x07\r\x9b\u202e")
    assert out == "ok\\x1b]0;owned\\x07\\x1b[2J\\x0dback\\x9b1m\\u202eevil\ttab\nline"
