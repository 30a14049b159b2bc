"""North-south through a Backend: the host, an outside namespace routed through the host,
and a published port (DNAT in an nft table of the test, as secnet keeps NAT in nftables).

Layout: the bridge carries the gateway 10.236.0.1 / fd00:236::1 (the host);
namespace ``-out`` is "another host" at 10.237.0.2, routed through the lab's
host namespace; 10.236.0.1:18080 is published to the first container's :8080.
"""
from __future__ import annotations

import socket
import struct
import subprocess

import pytest

from backend_lab import backend_lab  # noqa: F401  (fixture)
from nsfixtures import (  # noqa: F401  (lab is a fixture)
    BRIDGE, BRIDGE_MAC, Container, Sniffer, lab, mac_bytes, parallel, probe, probe_tcp, send_frame, sh,
)

pytestmark = pytest.mark.kernel

GW4, GW6 = "10.236.0.1", "fd00:236::1"
PUBLISHED = 18080
NAT = f"""
table ip sntest_nat {{
  chain pre {{ type nat hook prerouting priority dstnat; ip daddr {GW4} tcp dport {PUBLISHED} dnat to 10.236.0.10:8080; }}
  chain post {{ type nat hook postrouting priority srcnat; oifname "{BRIDGE}" ct status dnat ip saddr 10.236.0.0/24 masquerade; }}
}}
"""


def setup_outside(blab, web, api, nat: str = "") -> tuple:
    """The lab's gateway addresses on the bridge (the host) and its outside namespace routed
    through the host (nsfixtures.Lab makes both), with ``nat`` applied; returns (host,
    outside) as probe sources."""
    lab = blab.lab
    blab.gateways = (GW4, GW6)
    if nat:
        res = subprocess.run(["ip", "netns", "exec", lab.host, "nft", "-f", "-"], input=nat,
                             text=True, capture_output=True, check=False)
        assert res.returncode == 0, res.stderr
    host = Container(ns=lab.host, index=98, veth=BRIDGE, mac="", ip4=GW4, ip6=GW6)
    outside = Container(ns=lab.outside.ns, index=99, veth=lab.outside.veth, mac="",
                        ip4=lab.outside.ip4, ip6="")
    lab.responder.listen(host)
    return host, outside


@pytest.fixture
def ns_lab(backend_lab):
    """(backend_lab, web, api, host, outside): two containers, the host and an outside peer."""
    web, api = backend_lab.lab.add(2)
    host, outside = setup_outside(backend_lab, web, api, NAT)
    return backend_lab, web, api, host, outside


def gateway(fam: int):
    return Container(ns="", index=97, veth="", mac="", ip4=GW4, ip6=GW6)


def test_the_host_reaches_segments_no_cidr_rule_names(ns_lab):
    blab, web, api, host, _out = ns_lab
    blab.apply("10.99.0.0/16->api:tcp/8080", {web: "web", api: "api"}, "deny")
    cells = [(host, web, fam, "tcp", 8080) for fam in (4, 6)] + [(host, api, fam, "tcp", 8080) for fam in (4, 6)]
    assert parallel(probe, cells) == ["ok", "ok", "timeout", "timeout"]


def test_egress_default_and_cidr_egress_rules(ns_lab):
    blab, web, api, host, _out = ns_lab
    gw = gateway(4)
    blab.apply("", {web: "web", api: "api"}, "deny")
    cells = [(web, gw, fam, "tcp", 9999) for fam in (4, 6)] + [(api, gw, 4, "udp", 53)]
    assert parallel(probe, cells) == ["ok", "ok", "ok"]
    blab.edit(f"web->{GW4}/32:tcp/9999", egress="deny")
    cells = [(web, gw, 4, "tcp", 9999), (web, gw, 4, "tcp", 8080), (web, gw, 6, "tcp", 9999),
             (api, gw, 4, "tcp", 9999)]
    assert parallel(probe, cells) == ["ok", "timeout", "timeout", "timeout"]
    blab.edit(f"web->[{GW6}/128]:tcp/9999, api->10.236.0.0/24:udp/53", egress="deny")
    cells = [(web, gw, 6, "tcp", 9999), (web, gw, 4, "tcp", 9999), (api, gw, 4, "udp", 53),
             (api, gw, 6, "udp", 53)]
    assert parallel(probe, cells) == ["ok", "timeout", "ok", "timeout"]
    assert blab.dropped("egress") > 0


def test_internal_network_lets_nothing_in_or_out(ns_lab):
    blab, web, api, host, _out = ns_lab
    blab.apply("web->api:tcp/8080", {web: "web", api: "api"}, "deny", internal=True)
    cells = [(web, gateway(4), 4, "tcp", 9999), (host, web, 4, "tcp", 8080), (web, api, 4, "tcp", 8080)]
    assert parallel(probe, cells) == ["timeout", "timeout", "ok"]
    assert blab.dropped("internal") > 0


def test_published_port_passes_direct_outside_access_does_not(ns_lab):
    blab, web, api, _host, outside = ns_lab
    blab.apply("", {web: "web", api: "api"}, "deny")
    published = Container(ns="", index=96, veth="", mac="", ip4=GW4, ip6="")
    cells = [(outside, published, 4, "tcp", PUBLISHED), (outside, web, 4, "tcp", 8080),
             (outside, api, 4, "tcp", 8080)]
    assert parallel(probe, cells) == ["ok", "timeout", "timeout"]


def test_cidr_ingress_rules_restrict_a_segment(ns_lab):
    blab, web, api, _host, outside = ns_lab
    blab.apply("10.237.0.0/24->api:tcp/8080", {web: "web", api: "api"}, "deny")
    published = Container(ns="", index=96, veth="", mac="", ip4=GW4, ip6="")
    cells = [(outside, api, 4, "tcp", 8080), (outside, api, 4, "tcp", 5432),
             (outside, published, 4, "tcp", PUBLISHED)]
    assert parallel(probe, cells) == ["ok", "timeout", "ok"]
    blab.edit("10.238.0.0/24->api:tcp/8080, 10.238.0.0/24->web:tcp/8080")
    assert parallel(probe, cells) == ["timeout", "timeout", "timeout"]


def test_hairpin_to_a_published_port_is_judged_like_a_published_flow(ns_lab):
    """A member reaching a published port of its own network: allowed unless the target
    segment is ingress-restricted (then only an east-west rule lets it), egress=deny or not."""
    blab, web, api, _host, _out = ns_lab
    blab.published = {web.index: (("tcp", "", PUBLISHED, 8080),)}
    blab.apply("", {web: "web", api: "api"}, "deny", egress="deny")
    gw = gateway(4)
    assert parallel(probe, [(api, gw, 4, "tcp", PUBLISHED), (api, gw, 4, "tcp", 9999)]) == ["ok", "timeout"]
    blab.edit("10.99.0.0/16->web:tcp/8080", egress="deny")
    assert probe_tcp(api, GW4, PUBLISHED) == "timeout"
    blab.edit("10.99.0.0/16->web:tcp/8080, api->web:tcp/8080", egress="deny")
    assert probe_tcp(api, GW4, PUBLISHED) == "ok"


def udp4_frame(src, dst_mac: str, dst_ip: str, port: int, payload: bytes) -> bytes:
    """An Ethernet/IPv4/UDP frame from container ``src`` (UDP checksum 0: none)."""
    udp = struct.pack("!HHHH", 40000, port, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                     socket.inet_aton(src.ip4), socket.inet_aton(dst_ip))
    words = sum(struct.unpack("!10H", ip))
    while words >> 16:
        words = (words & 0xFFFF) + (words >> 16)
    ip = ip[:10] + struct.pack("!H", ~words & 0xFFFF) + ip[12:]
    return mac_bytes(dst_mac) + mac_bytes(src.mac) + b"\x08\x00" + ip + udp


def test_the_hosts_loopback_stays_the_hosts(ns_lab):
    """route_localnet on the bridge (for published loopback ports) must not let a
    container reach 127.0.0.1 of the host: dropped as invalid."""
    blab, web, api, _host, _out = ns_lab
    blab.lab.exec("sysctl", "-qw", f"net.ipv4.conf.{BRIDGE}.route_localnet=1")
    blab.apply("", {web: "web", api: "api"})
    sniffer = Sniffer(web)
    try:
        send_frame(web, udp4_frame(web, BRIDGE_MAC, GW4, 53, b"to-the-gateway"))
        send_frame(web, udp4_frame(web, BRIDGE_MAC, "127.0.0.1", 53, b"to-loopback"))
        frames = sniffer.frames(0.5)
    finally:
        sniffer.close()
    assert any(b"to-the-gateway" in f for f in frames)        # the control: the host echoes
    assert not any(b"to-loopback" in f for f in frames)
    assert blab.dropped("invalid") >= 1
