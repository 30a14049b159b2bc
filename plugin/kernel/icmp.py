"""ICMP echo requests for probes (``secnet verify``, tests, bench): one builder.

RFC 792 echo (type 8) for IPv4, RFC 4443 echo (type 128) for IPv6; the
IPv4 checksum is the RFC 1071 Internet checksum over the ICMP message, and
for ICMPv6 on a raw socket the kernel computes it (it covers a pseudo-header).
"""
from __future__ import annotations

import struct

from segmentation.protocols import ICMP


def checksum(data: bytes) -> int:
    """The 16-bit one's complement Internet checksum (RFC 1071) of ``data``."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_request(family: int, ident: int, payload: bytes, seq: int = 1) -> bytes:
    """An echo request of IPv``family`` (4 or 6) with ``ident``, ``seq`` and ``payload``."""
    kind = ICMP.echo4 if family == 4 else ICMP.echo6
    head = struct.pack("!BBHHH", kind, 0, 0, ident & 0xFFFF, seq & 0xFFFF)
    if family == 6:
        return head + payload
    return head[:2] + struct.pack("!H", checksum(head + payload)) + head[4:] + payload
