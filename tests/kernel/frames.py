"""Hand-made IPv4/IPv6 frames for the evasion tests (no scapy): extension-header
chains, ICMP errors quoting any flow, IGMP, ND/MLD types to any destination.

After the tester user17's lab helpers (FINDINGS-17), trimmed to what the kernel tests of
crafted frames use (test_{icmp_error_forgery,ext_headers,link_scope,crafted_frames}_kernel.py).
Every checksum is right (conntrack and the receivers check them).
"""
from __future__ import annotations

import ipaddress
import socket
import struct
import time

from packets import Sniffer, mac_bytes as mac, send_frame
from plugin.kernel.icmp import checksum


def addr(x: str) -> bytes:
    return ipaddress.ip_address(x).packed


def eth(dst: str, src: str, etype: int, body: bytes) -> bytes:
    return mac(dst) + mac(src) + struct.pack("!H", etype) + body


def ip4(src: str, dst: str, proto: int, payload: bytes, tot: int | None = None, ttl: int = 64) -> bytes:
    """An IPv4 header (no options, DF) before ``payload``; ``tot``: a total length to claim."""
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, tot or 20 + len(payload), 7, 0x4000, ttl, proto, 0,
                      addr(src), addr(dst))
    return hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:] + payload


def ip6(src: str, dst: str, nh: int, payload: bytes, hlim: int = 64) -> bytes:
    return struct.pack("!IHBB", 6 << 28, len(payload), nh, hlim) + addr(src) + addr(dst) + payload


def _pseudo(src: str, dst: str, proto: int, length: int) -> bytes:
    if ":" in src:
        return addr(src) + addr(dst) + struct.pack("!I3xB", length, proto)
    return addr(src) + addr(dst) + struct.pack("!BBH", 0, proto, length)


def tcp(src: str, dst: str, sport: int, dport: int, flags: int = 0x02, payload: bytes = b"") -> bytes:
    t = struct.pack("!HHIIBBHHH", sport, dport, 1000, 0, 5 << 4, flags, 64240, 0, 0) + payload
    return t[:16] + struct.pack("!H", checksum(_pseudo(src, dst, 6, len(t)) + t)) + t[18:]


def udp(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    u = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    c = checksum(_pseudo(src, dst, 17, len(u)) + u) or 0xffff
    return u[:6] + struct.pack("!H", c) + payload


def icmp4(type_: int, code: int, rest: bytes, body: bytes) -> bytes:
    m = struct.pack("!BBH", type_, code, 0) + rest + body
    return m[:2] + struct.pack("!H", checksum(m)) + m[4:]


def icmp6(src: str, dst: str, type_: int, code: int, rest: bytes, body: bytes) -> bytes:
    m = struct.pack("!BBH", type_, code, 0) + rest + body
    return m[:2] + struct.pack("!H", checksum(_pseudo(src, dst, 58, len(m)) + m)) + m[4:]


def igmp(group: str, token: bytes) -> bytes:
    """An IGMPv2 membership report (type 0x16) for ``group`` with ``token`` after it."""
    body = struct.pack("!BBH4s", 0x16, 0, 0, socket.inet_aton(group)) + token
    return body[:2] + struct.pack("!H", checksum(body)) + body[4:]


def dst_opts(nh: int) -> bytes:
    """A destination-options (or hop-by-hop) header of 8 bytes: PadN of 4."""
    return struct.pack("!BB", nh, 0) + b"\x01\x04\x00\x00\x00\x00"


def chain6(src: str, dst: str, headers: int, proto: int, l4: bytes, hlim: int = 64) -> bytes:
    """An IPv6 packet with ``headers`` destination-options headers before ``l4`` (``proto``)."""
    if not headers:
        return ip6(src, dst, proto, l4, hlim)
    body = b"".join(dst_opts(60) for _ in range(headers - 1)) + dst_opts(proto) + l4
    return ip6(src, dst, 60, body, hlim)


def arrived(victim, sends, tokens, wait: float = 0.8) -> dict:
    """token -> did a frame carrying it reach ``victim``'s eth0 (AF_PACKET capture)?
    ``sends``: (sender container, frame) pairs, sent after the capture opened."""
    sn = Sniffer(victim)
    try:
        for src, frame in sends:
            send_frame(src, frame)
        got = sn.frames(wait)
    finally:
        sn.close()
    return {t: any(t in f for f in got) for t in tokens}


def payloads(sock, wait: float = 0.8) -> list:
    """What ``sock`` (a socket with a short timeout) receives within ``wait`` seconds."""
    got, end = [], time.monotonic() + wait
    while time.monotonic() < end:
        try:
            got.append(sock.recv(65535))
        except (socket.timeout, BlockingIOError):
            pass
    return got


def received(sock, tokens, wait: float = 0.8) -> dict:
    """token -> did ``sock`` (a socket with a short timeout) receive data carrying it?"""
    got = payloads(sock, wait)
    return {t: any(t in g for g in got) for t in tokens}
