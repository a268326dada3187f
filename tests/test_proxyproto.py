"""PROXY v2 headers as a load balancer sends them, and the ones a stranger might forge or cut."""
import ipaddress

import pytest

from shellrent.broker import proxyproto
from shellrent.broker.proxyproto import SIGNATURE, ProxyError, parse


def header(src="203.0.113.7", sport=50000, dst="198.51.100.1", dport=22, cmd=0x21, tlvs=b"") -> bytes:
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    family = 0x11 if s.version == 4 else 0x21
    body = s.packed + d.packed + sport.to_bytes(2, "big") + dport.to_bytes(2, "big") + tlvs
    return SIGNATURE + bytes([cmd, family]) + len(body).to_bytes(2, "big") + body


def test_a_header_names_the_client_and_what_it_connected_to():
    h = header()
    assert parse(h + b"SSH-2.0-OpenSSH_9.2\r\n") == (len(h), ("203.0.113.7", 50000), ("198.51.100.1", 22))
    h6 = header("2001:db8::5", 1234, "2001:db8::1", 2222, tlvs=b"\x03\x00\x04abcd")  # a CRC TLV, skipped
    assert parse(h6) == (len(h6), ("2001:db8::5", 1234), ("2001:db8::1", 2222))
    local = SIGNATURE + bytes([0x20, 0x00, 0, 0])  # the proxy's own health check
    assert parse(local) == (16, None, None)


def test_an_incomplete_header_waits_for_more_bytes():
    h = header()
    for cut in (0, 1, 11, 12, 15, 16, len(h) - 1):
        assert parse(h[:cut]) is None


@pytest.mark.parametrize("bad, why", [
    (b"SSH-2.0-OpenSSH_9.2\r\n", "not a PROXY v2 header"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "not a PROXY v2 header"),  # v1 (text) is not taken
    (SIGNATURE + bytes([0x11, 0x11, 0, 12]) + bytes(12), "version/command"),
    (SIGNATURE + bytes([0x22, 0x11, 0, 12]) + bytes(12), "version/command"),
    (SIGNATURE + bytes([0x21, 0x31, 0, 12]) + bytes(12), "address family"),  # unix sockets
    (SIGNATURE + bytes([0x21, 0x11, 0, 8]) + bytes(8), "cut short"),
    (SIGNATURE + bytes([0x21, 0x11, 0xFF, 0xFF]), "header of"),  # 64 KiB announced: never buffered
])
def test_a_header_we_do_not_take_is_refused_with_why(bad, why):
    with pytest.raises(ProxyError, match=why):
        parse(bad)


def test_only_the_operators_proxies_are_trusted():
    nets = proxyproto.networks(" 127.0.0.1, 10.0.0.0/8 ,,2001:db8::/32")
    assert proxyproto.trusted(("127.0.0.1", 5), nets) and proxyproto.trusted(("10.9.8.7", 5), nets)
    assert proxyproto.trusted(("::ffff:10.1.1.1", 5, 0, 0), nets) and proxyproto.trusted(("2001:db8::9", 1), nets)
    assert not proxyproto.trusted(("127.0.0.2", 5), nets) and not proxyproto.trusted(None, nets)
    assert proxyproto.networks("") == []
    with pytest.raises(ValueError, match="BROKER_PROXY_FROM: 'haproxy' is not an address"):
        proxyproto.networks("127.0.0.1,haproxy")
