"""Real packets for the kernel tier: sockets made inside namespaces, echo servers,
probes and raw frames.

Probes are plain sockets created inside a container namespace: the calling
thread enters the namespace (``plugin.kernel.netns.enter``), makes the socket and
goes back (a socket stays in the namespace it was made in), so hundreds of
probes run in parallel without a process each. Every probe gives up after
PROBE_TIMEOUT seconds: 1.5 s, so that a TCP probe gets a second SYN (the kernel
retransmits the first after 1 s, RFC 6298's initial RTO) and an allowed probe on a loaded
machine is not taken for a drop.
"""
from __future__ import annotations

import ipaddress
import os
import selectors
import socket
import struct
import subprocess
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from plugin.kernel import netns as plugin_netns
from plugin.kernel.icmp import checksum

PROBE_TIMEOUT = 1.5
TCP_PORTS = (8080, 5432, 9999)
UDP_PORT = 53
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr.strip()}")
    return res


@contextmanager
def netns(name: str):
    """Run the block (this thread only) inside network namespace ``name``."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        plugin_netns.enter(f"/run/netns/{name}")
        try:
            yield
        finally:
            plugin_netns.enter(f"/proc/self/fd/{home}")
    finally:
        os.close(home)


def ns_socket(ns: str, family: int, kind: int, proto: int = 0) -> socket.socket:
    with netns(ns):
        return socket.socket(family, kind, proto)


# --- servers in the container namespaces -------------------------------------

class Responder:
    """Echo servers (tcp TCP_PORTS, udp UDP_PORT, both families) in one thread."""

    def __init__(self):
        self.sel = selectors.DefaultSelector()
        self.sockets: list = []
        self._stop = threading.Event()
        self._thread = None

    def listen(self, c) -> None:
        for fam, wildcard in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            for port in TCP_PORTS:
                self._bind(c.ns, fam, socket.SOCK_STREAM, (wildcard, port), "listener")
            self._bind(c.ns, fam, socket.SOCK_DGRAM, (wildcard, UDP_PORT), "udp")
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, daemon=True, name="lab-responder")
            self._thread.start()

    def _bind(self, ns, family, kind, addr, role) -> None:
        s = ns_socket(ns, family, kind)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind(addr)
        if kind == socket.SOCK_STREAM:
            s.listen(64)
        s.setblocking(False)
        self.sockets.append(s)
        self.sel.register(s, selectors.EVENT_READ, role)

    def _loop(self) -> None:
        while not self._stop.is_set():
            for key, _ in self.sel.select(0.05):
                try:
                    self._serve(key.fileobj, key.data)
                except OSError:
                    pass

    def _serve(self, s, role) -> None:
        if role == "listener":
            conn, _ = s.accept()
            conn.setblocking(False)
            self.sel.register(conn, selectors.EVENT_READ, "conn")
        elif role == "udp":
            data, peer = s.recvfrom(2048)
            s.sendto(data, peer)
        else:
            self.sel.unregister(s)
            with s:
                data = s.recv(2048)
                if data:
                    s.send(data)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
        for key in list(self.sel.get_map().values()):
            key.fileobj.close()
        self.sel.close()


# --- probes --------------------------------------------------------------------

def _family(addr: str) -> int:
    return socket.AF_INET if ipaddress.ip_address(addr).version == 4 else socket.AF_INET6


def _token() -> bytes:
    return uuid.uuid4().hex.encode()


def probe_tcp(src, dst: str, port: int, timeout: float = PROBE_TIMEOUT) -> str:
    """'ok' when a new connection to ``dst``:``port`` echoes; else what went wrong."""
    with ns_socket(src.ns, _family(dst), socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        return _exchange(lambda: s.connect((dst, port)), s)


def probe_udp(src, dst: str, port: int = UDP_PORT, timeout: float = PROBE_TIMEOUT,
              bind: str | None = None) -> str:
    """'ok' when a datagram to ``dst``:``port`` is echoed within ``timeout``."""
    with ns_socket(src.ns, _family(dst), socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        if bind:
            s.bind((bind, 0))
        return _exchange(lambda: s.connect((dst, port)), s)


def _exchange(connect, s) -> str:
    token = _token()
    try:
        connect()
        s.send(token)
        reply = s.recv(2048)
    except socket.timeout:
        return "timeout"
    except ConnectionRefusedError:
        return "refused"
    except OSError as exc:
        return f"error:{exc.strerror or exc}"
    return "ok" if reply == token else f"garbled:{reply[:20]!r}"


def probe_icmp(src, dst: str, timeout: float = PROBE_TIMEOUT) -> str:
    """'ok' when an echo request to ``dst`` is answered (ICMP or ICMPv6 echo)."""
    v4 = _family(dst) == socket.AF_INET
    proto = socket.IPPROTO_ICMP if v4 else socket.IPPROTO_ICMPV6
    request = struct.pack("!BBHHH", 8 if v4 else 128, 0, 0, 0, 1) + _token()
    with ns_socket(src.ns, _family(dst), socket.SOCK_DGRAM, proto) as s:
        s.settimeout(timeout)
        try:
            s.sendto(request, (dst, 0))
            reply = s.recv(2048)
        except socket.timeout:
            return "timeout"
        except OSError as exc:
            return f"error:{exc.strerror or exc}"
    return "ok" if reply[0] == (0 if v4 else 129) and reply[8:] == request[8:] else "garbled"


def probe(src, dst, family: int, proto: str, port=None) -> str:
    return probe_addr(src, dst.ip(family), proto, port)


#: a few services of every kind, both families: (proto, port, family)
FEW = [(proto, port, fam) for proto, port in (("tcp", 8080), ("udp", 53), ("icmp", None))
       for fam in (4, 6)]


def probe_addr(src, addr: str, proto: str, port=None) -> str:
    """'ok' when ``proto`` (tcp, udp or icmp) to ``addr``:``port`` gets its echo."""
    if proto == "tcp":
        return probe_tcp(src, addr, port)
    if proto == "udp":
        return probe_udp(src, addr, port)
    return probe_icmp(src, addr)


def outcomes(pairs, services) -> dict:
    """(src, dst, proto, port, family) -> probe outcome, probed in parallel, for every
    (src, dst) of ``pairs`` and (proto, port, family) of ``services``."""
    cells = [(s, d, proto, port, fam) for s, d in pairs for proto, port, fam in services]
    found = parallel(lambda s, d, proto, port, fam: probe_addr(s, d.ip(fam), proto, port), cells)
    # the host's own packets dropped in its output hook fail the send instead of timing out
    return {cell: "timeout" if out == "error:Operation not permitted" else out
            for cell, out in zip(cells, found)}


def show(cell) -> str:
    s, d, proto, port, fam = cell
    return f"c{s.index}->c{d.index} {proto}/{port or '-'} v{fam}"


def assert_all(got: dict, want: str) -> None:
    bad = [f"{show(cell)}: {outcome}" for cell, outcome in got.items() if outcome != want]
    assert not bad, f"{len(bad)} of {len(got)} probes not '{want}':\n" + "\n".join(bad)


def judge(got: dict, expect) -> list:
    """Cells whose outcome differs from ``expect(cell)`` ('ok' or 'timeout')."""
    return [f"{show(cell)}: expected {want}, observed {outcome}"
            for cell, outcome in got.items() if outcome != (want := expect(cell))]


def open_stream(src, dst_ip: str, port: int) -> socket.socket:
    """A TCP connection from ``src`` to a lab responder (which echoes once per connection)."""
    s = ns_socket(src.ns, _family(dst_ip), socket.SOCK_STREAM)
    s.settimeout(PROBE_TIMEOUT)
    s.connect((dst_ip, port))
    return s


def echoes(s: socket.socket) -> bool:
    """Does the established stream ``s`` still carry data both ways?"""
    try:
        s.send(b"ping")
        return s.recv(64) == b"ping"
    except OSError:
        return False


def parallel(fn, items, workers: int = 96) -> list:
    """fn(*item) for every item, concurrently; results in order."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda item: fn(*item), items))


# --- raw frames and sniffing ---------------------------------------------------

class Sniffer:
    """Frames arriving at ``eth0`` of a container namespace (not the ones it sends)."""

    def __init__(self, c):
        self.sock = ns_socket(c.ns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.bind(("eth0", 0))
        self.sock.settimeout(0.05)

    def frames(self, seconds: float = PROBE_TIMEOUT) -> list:
        out, deadline = [], time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                data, addr = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            if addr[2] != PACKET_OUTGOING:
                out.append(data)
        return out

    def close(self) -> None:
        self.sock.close()


def send_frame(c, frame: bytes) -> None:
    with ns_socket(c.ns, socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind(("eth0", 0))
        s.send(frame)


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def arp_frame(sender_mac: str, sender_ip: str, target_ip: str, op: int = 2,
              eth_src: str | None = None) -> bytes:
    """A broadcast (gratuitous) ARP frame claiming ``sender_ip`` is at ``sender_mac``."""
    eth = b"\xff" * 6 + mac_bytes(eth_src or sender_mac) + b"\x08\x06"
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, op) + mac_bytes(sender_mac)
    arp += socket.inet_aton(sender_ip) + b"\x00" * 6 + socket.inet_aton(target_ip)
    return eth + arp


def icmp6_frame(eth_src: str, eth_dst: str, ip_src: str, ip_dst: str, body: bytes) -> bytes:
    """An Ethernet frame with an ICMPv6 message (hop limit 255, checksum filled in)."""
    src, dst = ipaddress.IPv6Address(ip_src).packed, ipaddress.IPv6Address(ip_dst).packed
    pseudo = src + dst + struct.pack("!I3xB", len(body), 58)
    body = body[:2] + struct.pack("!H", checksum(pseudo + body)) + body[4:]
    ip6 = struct.pack("!IHBB", 6 << 28, len(body), 58, 255) + src + dst
    return mac_bytes(eth_dst) + mac_bytes(eth_src) + b"\x86\xdd" + ip6 + body


def udp4_frame(src, dst_mac: str, src_ip: str, dst_ip: str, port: int, payload: bytes,
               sport: int = 4000) -> bytes:
    """An Ethernet/IPv4/UDP frame from container ``src``'s MAC with any source address
    (header checksum filled in, UDP checksum 0: none)."""
    udp = struct.pack("!HHHH", sport, port, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                     socket.inet_aton(src_ip), socket.inet_aton(dst_ip))
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return mac_bytes(dst_mac) + mac_bytes(src.mac) + b"\x08\x00" + ip + udp


def tcp_syn_frame(src, dst_mac: str, dst_ip: str, port: int, sport: int = 40000) -> bytes:
    """An Ethernet/IP/TCP SYN from container ``src`` (its MAC and its address of
    ``dst_ip``'s family) to ``dst_ip``:``port``, checksums right (conntrack checks them)."""
    v6 = ":" in dst_ip
    saddr = ipaddress.ip_address(src.ip6 if v6 else src.ip4).packed
    daddr = ipaddress.ip_address(dst_ip).packed
    tcp = struct.pack("!HHIIBBHHH", sport, port, 1, 0, 5 << 4, 0x02, 64240, 0, 0)
    pseudo = saddr + daddr + (struct.pack("!I3xB", len(tcp), 6) if v6 else struct.pack("!BBH", 0, 6, len(tcp)))
    tcp = tcp[:16] + struct.pack("!H", checksum(pseudo + tcp)) + tcp[18:]
    if v6:
        return mac_bytes(dst_mac) + mac_bytes(src.mac) + b"\x86\xdd" + \
            struct.pack("!IHBB", 6 << 28, len(tcp), 6, 64) + saddr + daddr + tcp
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0x4000, 64, 6, 0, saddr, daddr)
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return mac_bytes(dst_mac) + mac_bytes(src.mac) + b"\x08\x00" + ip + tcp


def link_local(mac: str) -> str:
    """The EUI-64 link-local address of ``mac``."""
    b = bytearray(mac_bytes(mac))
    b[0] ^= 2
    eui = bytes(b[:3]) + b"\xff\xfe" + bytes(b[3:])
    return str(ipaddress.IPv6Address(b"\xfe\x80" + b"\x00" * 6 + eui))


def na_frame(sender_mac: str, target_ip6: str) -> bytes:
    """An unsolicited neighbour advertisement (override) for ``target_ip6``, to ff02::1."""
    body = struct.pack("!BBHI", 136, 0, 0, 0x20000000) + ipaddress.IPv6Address(target_ip6).packed
    body += b"\x02\x01" + mac_bytes(sender_mac)
    return icmp6_frame(sender_mac, "33:33:00:00:00:01", link_local(sender_mac), "ff02::1", body)


def ns_frame(sender_mac: str, source_ip6: str, dst) -> bytes:
    """A neighbour solicitation for ``dst``'s link-local address, sent from ``source_ip6``
    with ``sender_mac`` as its source link-layer address: the receiver learns that pair."""
    target = link_local(dst.mac)
    body = struct.pack("!BBHI", 135, 0, 0, 0) + ipaddress.IPv6Address(target).packed
    body += b"\x01\x01" + mac_bytes(sender_mac)
    return icmp6_frame(sender_mac, dst.mac, source_ip6, target, body)
