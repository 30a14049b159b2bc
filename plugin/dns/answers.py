"""DNS answers out of queued packets: IP/UDP/TCP headers, then dnspython.

NFQUEUE hands over the packet from its IP header on. The headers are read
here (a few fixed fields); the DNS message itself is parsed by dnspython,
never by hand. Only responses (QR set) with rcode NOERROR and one question
count; records of class IN, types A, AAAA and CNAME. DNS over TCP is a
stream of length-prefixed messages: ``tcpstream.TcpStreams`` puts the
segments of one connection back together. dnspython is imported with the
first answer parsed: a daemon whose networks have no DNS rule never loads it
(1.5 MiB of the worker's RSS).
"""
from __future__ import annotations

import ipaddress
import logging
import struct
from dataclasses import dataclass

from segmentation import fqdn

log = logging.getLogger(__name__)
TCP, UDP = 6, 17
IPV6_EXT_HEADERS = (0, 43, 60)   # hop-by-hop, routing, destination options


@dataclass(frozen=True)
class Datagram:
    """The addresses, ports and L4 payload of one queued packet."""

    family: int
    src: str
    dst: str
    proto: int
    sport: int
    dport: int
    payload: bytes
    seq: int = 0          # TCP only: the sequence number and the flags byte
    flags: int = 0


def datagram(packet: bytes) -> Datagram | None:
    """Split an IPv4/IPv6 packet carrying UDP or TCP; None for anything else."""
    if not packet:
        return None
    version = packet[0] >> 4
    if version == 4 and len(packet) >= 20:
        ihl = (packet[0] & 0x0F) * 4
        frag = struct.unpack("!H", packet[6:8])[0]
        if frag & 0x3FFF:   # a fragment: no L4 header to trust
            return None
        proto, start = packet[9], ihl
        src, dst = packet[12:16], packet[16:20]
    elif version == 6 and len(packet) >= 40:
        proto, start = packet[6], 40
        src, dst = packet[8:24], packet[24:40]
        while proto in IPV6_EXT_HEADERS and len(packet) >= start + 8:
            proto, start = packet[start], start + (packet[start + 1] + 1) * 8
    else:
        return None
    return _l4(version, src, dst, proto, packet[start:])


def _l4(family: int, src: bytes, dst: bytes, proto: int, seg: bytes) -> Datagram | None:
    if proto == UDP and len(seg) >= 8:
        sport, dport = struct.unpack("!HH", seg[:4])
        body = seg[8:]
    elif proto == TCP and len(seg) >= 20:
        sport, dport, seq = struct.unpack("!HHI", seg[:8])
        return Datagram(family, str(ipaddress.ip_address(src)), str(ipaddress.ip_address(dst)),
                        proto, sport, dport, bytes(seg[(seg[12] >> 4) * 4:]), seq, seg[13])
    else:
        return None
    return Datagram(family, str(ipaddress.ip_address(src)), str(ipaddress.ip_address(dst)),
                    proto, sport, dport, bytes(body))


def messages(dgram: Datagram) -> list:
    """The DNS wire message of a UDP datagram (TCP: see ``tcpstream``)."""
    return [dgram.payload] if dgram.proto == UDP and dgram.payload else []


def addresses(wire: bytes) -> list:
    """The :class:`segmentation.fqdn.Address` values of one DNS response.

    Empty for a query, an error response, a message that does not parse
    (logged at debug level), or an answer with no A/AAAA for the question.
    """
    import dns.exception, dns.flags, dns.message, dns.rcode, dns.rdataclass, dns.rdatatype  # noqa: E401
    try:
        msg = dns.message.from_wire(wire, ignore_trailing=True)
    except (dns.exception.DNSException, ValueError) as exc:
        log.debug("not a DNS message: %s", exc)
        return []
    if not msg.flags & dns.flags.QR or msg.rcode() != dns.rcode.NOERROR or len(msg.question) != 1:
        return []
    cnames, addrs = {}, {}
    for rrset in msg.answer:
        if rrset.rdclass != dns.rdataclass.IN:
            continue
        owner = fqdn.normalize_name(rrset.name.to_text())
        if rrset.rdtype == dns.rdatatype.CNAME and len(rrset):
            cnames[owner] = (fqdn.normalize_name(rrset[0].target.to_text()), rrset.ttl)
        elif rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            addrs.setdefault(owner, []).extend((rd.address, rrset.ttl) for rd in rrset)
    return fqdn.follow(msg.question[0].name.to_text(), cnames, addrs)
