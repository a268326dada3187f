"""The egress rules, pure: what is refused, what the provider lets through, and in which order."""
import ipaddress

import pytest

from shellrent.hostd import firewall


def test_every_range_the_policy_names_is_refused():
    fwd = firewall.rules([])[firewall.FWD]
    refused = [ipaddress.ip_network(r[1]) for r in fwd if r[0] == "-d" and "REJECT" in r]
    for addr in ("10.1.2.3", "172.20.0.1", "192.168.1.50", "100.64.0.1", "169.254.169.254", "224.0.0.1",
                 "127.0.0.1", "0.0.0.0"):
        assert any(ipaddress.ip_address(addr) in net for net in refused), addr
    for addr in ("192.0.2.10", "198.51.100.2", "203.0.113.9", "198.18.0.1", "255.255.255.255"):  # IANA's too
        assert any(ipaddress.ip_address(addr) in net for net in refused), addr
    for addr in ("1.1.1.1", "8.8.8.8", "45.0.0.1"):
        assert not any(ipaddress.ip_address(addr) in net for net in refused), addr
    fwd6 = firewall.rules([], v6=True)[firewall.FWD]
    refused6 = [ipaddress.ip_network(r[1]) for r in fwd6 if r[0] == "-d"]
    for addr in ("fd00::1", "fe80::1", "ff02::1", "::1", "2001:db8::1", "::ffff:10.0.0.1", "2002::1", "3fff::1"):
        assert any(ipaddress.ip_address(addr) in net for net in refused6), addr
    assert firewall.rules([])[firewall.IN][-1][:2] == ["-j", "REJECT"]  # the host itself: nothing


def test_allowed_destinations_come_before_the_refusals():
    allow = firewall.parse_allow("192.168.1.50:8000, 10.9.0.0/16")
    assert allow == [("192.168.1.50/32", 8000), ("10.9.0.0/16", None)]
    fwd = firewall.rules(allow)[firewall.FWD]
    first_reject = next(i for i, r in enumerate(fwd) if "REJECT" in r)
    assert fwd[1:3] == [["-d", "192.168.1.50/32", "-p", "tcp", "--dport", "8000", "-j", "RETURN"],
                        ["-d", "10.9.0.0/16", "-j", "RETURN"]] and first_reject == 3
    accept = ["-d", "192.168.1.50/32", "-p", "tcp", "--dport", "8000", "-j", "ACCEPT"]
    assert accept in firewall.rules(allow)[firewall.IN]
    assert firewall.rules(allow, v6=True)[firewall.FWD][1][0] == "-d"  # nothing allowed over IPv6


@pytest.mark.parametrize("text", ["example.com", "10.0.0.1:0", "10.0.0.1:70000", "10.0.0.1:x", "::1", "300.1.1.1"])
def test_bad_allow_entries_are_named(text):
    with pytest.raises(ValueError, match="use IP|port out of range"):
        firewall.parse_allow(text)


def test_bridge_names_fit_the_kernel():
    assert firewall.bridge_name("0123abcd") == "srl-0123abcd"
    assert len(firewall.bridge_name("f" * 32)) == 15


def test_dns_to_the_machines_resolvers_passes(tmp_path):
    conf = tmp_path / "resolv.conf"
    conf.write_text("# home router\nnameserver 192.168.1.1\nnameserver 127.0.0.53\nnameserver ::1\nsearch lan\n")
    assert firewall.resolvers([str(conf), str(tmp_path / "missing")]) == ["192.168.1.1"]
    fwd = firewall.rules([], dns=["192.168.1.1"])[firewall.FWD]
    dns = [["-d", "192.168.1.1/32", "-p", proto, "--dport", "53", "-j", "RETURN"] for proto in ("udp", "tcp")]
    assert fwd[1:3] == dns  # before the refusal of 192.168/16; nothing else to that address passes
    assert ["-d", "192.168.1.1/32", "-j", "RETURN"] not in fwd


def test_the_hosts_own_subnets_are_refused_whatever_the_family():
    own = ["45.0.0.0/24", "2a01:4f8::/64", "10.0.0.0/8"]
    fwd = firewall.rules([], host_nets=own)[firewall.FWD]
    fwd6 = firewall.rules([], v6=True, host_nets=own)[firewall.FWD]
    assert ["-d", "45.0.0.0/24", *firewall._REJECT] in fwd and not any("2a01:4f8::/64" in r for r in fwd)
    assert ["-d", "2a01:4f8::/64", *firewall._REJECT6] in fwd6 and not any("45.0.0.0/24" in r for r in fwd6)
    allow = firewall.parse_allow("45.0.0.7:8000")
    fwd = firewall.rules(allow, host_nets=own)[firewall.FWD]
    assert fwd.index(["-d", "45.0.0.7/32", "-p", "tcp", "--dport", "8000", "-j", "RETURN"]) < \
        fwd.index(["-d", "45.0.0.0/24", *firewall._REJECT])  # egress_allow still lets one through


def test_host_networks_are_read_from_the_machine():
    nets = firewall.host_networks()
    assert "127.0.0.0/8" in nets and not any(n.startswith(firewall.BRIDGE_PREFIX) for n in nets)
