"""One log text per protocol on both backends (U14-F4): the same dropped packet, reported
by nftables (an NFLOG packet) and by eBPF (a ring-buffer record), becomes the same
DropEvent and the same ``secnet log`` protocol column."""
from __future__ import annotations

import ipaddress
import socket
import struct

import pytest

from plugin.cli.format import _what
from plugin.enforce.backend import REASONS
from plugin.enforce.ebpf import events
from plugin.enforce.ebpf.maps import DROP_EVENT
from plugin.enforce.nftables import drops, nflog
from plugin.observe.droplog import proto_name

NID = "0123456789ab"
SRC = {4: "10.224.0.2", 6: "fd00:224::2"}
DST = {4: "10.224.0.3", 6: "fd00:224::3"}


def nft_event(family: int, proto: int, l4: bytes):
    """The DropEvent the nftables backend delivers for this packet (reason invalid)."""
    src, dst = ipaddress.ip_address(SRC[family]).packed, ipaddress.ip_address(DST[family]).packed
    if family == 4:
        data = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0, 64, proto, 0, src, dst) + l4
    else:
        data = struct.pack("!IHBB", 6 << 28, len(l4), proto, 64) + src + dst + l4
    got = []
    packet = nflog.Packet(family=socket.AF_INET if family == 4 else socket.AF_INET6,
                          prefix=drops.log_prefix(NID, "invalid"),
                          hw_protocol=0x0800 if family == 4 else 0x86DD, payload=data)
    drops.deliver(packet, 1.0, got.append)
    return got[0]


def ebpf_event(family: int, proto: int, port: int):
    """The DropEvent the eBPF backend decodes from its datapath's record of the packet
    (lib/drop.h report: the port of TCP and UDP only)."""
    addr = lambda a: ipaddress.ip_address(a).packed.ljust(16, b"\0")   # noqa: E731
    raw = DROP_EVENT.pack(int(NID, 16), 10**9, REASONS.index("invalid"), family, proto, 0,
                          port if proto in (6, 17) else 0, 0x0800 if family == 4 else 0x86DD, 0,
                          5, 1, addr(SRC[family]), addr(DST[family]), b"\0" * 6, b"\0" * 6)
    return events.decode(raw, 0.0)


def text(event) -> str:
    return _what({"proto": proto_name(event.family, event.proto), "dport": event.port})


PORTS = struct.pack("!HH", 40000, 8080) + b"\0" * 16
CASES = [  # (family, IP protocol, L4 bytes, the log's text)
    (4, 6, PORTS, "tcp/8080"), (6, 17, PORTS, "udp/8080"), (4, 132, PORTS, "sctp"),
    (6, 132, PORTS, "sctp"), (4, 136, PORTS, "proto-136"), (4, 47, b"\0\0\x08\0", "proto-47"),
    (6, 253, b"EXPERIMENT", "proto-253"), (4, 1, b"\0\0\0\0\0\x4d\0\0", "icmp"),
    (6, 58, b"\x81\0\0\0\0\x4d\0\0", "icmpv6"), (4, 58, b"\x81\0\0\0", "proto-58"),
]


@pytest.mark.parametrize("family, proto, l4, want", CASES)
def test_both_backends_give_one_text_per_protocol(family, proto, l4, want):
    nft, bpf = nft_event(family, proto, l4), ebpf_event(family, proto, 8080)
    assert (text(nft), text(bpf)) == (want, want)
    assert (nft.proto, nft.port) == (bpf.proto, bpf.port)


def test_names_of_frames_that_are_not_ip_stay_as_they_are():
    assert proto_name(0, "ethertype-0x88b5") == "ethertype-0x88b5"
    assert proto_name(4, "arp") == "arp"


@pytest.mark.parametrize("devices, named", [
    ({"indev": 1, "physindev": 1}, True),    # bridged: the bridge port (here: lo, index 1)
    ({"indev": 1}, True),                     # routed in from an uplink: that device
    ({"outdev": 1}, False),                   # the host's own packet: none
])
def test_nftables_names_the_device_a_drop_came_in_on_as_ebpf_does(devices, named):
    # U28-F4: a drop from the outside named its uplink on eBPF (ingress ifindex), none on nftables
    packet = nflog.Packet(family=socket.AF_INET, prefix=drops.log_prefix(NID, "no-rule"),
                          hw_protocol=0x0800, devices=devices,
                          payload=struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20, 1, 0, 64, 6, 0,
                                              ipaddress.ip_address(SRC[4]).packed,
                                              ipaddress.ip_address(DST[4]).packed))
    got = []
    drops.deliver(packet, 1.0, got.append)
    assert got[0].ifname == (socket.if_indextoname(1) if named else None)
