"""Throwaway network namespaces for the kernel tier, and real-packet probes.

``lab`` builds a "host" namespace ``sn-k-<uuid6>`` holding a Linux bridge
with br_netfilter on, and ``lab.add(n)`` plugs n "container" namespaces into
it with a veth each (host side on the bridge, container side ``eth0`` with
10.236.0.x/24, fd00:236::x/64 and a known MAC). Every namespace, socket and
table goes away in the finalizer, also when the test fails: the tables live
inside the host namespace, so deleting it deletes them.

Probes are plain sockets created inside a container namespace: a thread
enters the namespace with setns(2), makes the socket and goes back (a socket
stays in the namespace it was made in), so hundreds of probes run in parallel
without a process each. Every probe gives up after PROBE_TIMEOUT seconds.

Kept in a module of its own (not conftest.py) so that it cannot collide with
the netlink tests' conftest; the test modules import the fixtures.
"""
from __future__ import annotations

import ctypes
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
from dataclasses import dataclass

import pytest

from plugin.conntrack import Kernel
from segmentation.backends import nftables as nft
from segmentation.compiler import compile_policy
from segmentation.model import Member
from segmentation.options import NetworkOptions
from segmentation.rules import parse_rules

PROBE_TIMEOUT = 1.0
BRIDGE = "snbr0"
BRIDGE_MAC = "02:42:0a:ec:00:01"
NET_ID = "5ec0de" + "0" * 58
TCP_PORTS = (8080, 5432, 9999)
UDP_PORT = 53
CLONE_NEWNET = 0x40000000
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
_libc = ctypes.CDLL(None, use_errno=True)


# --- shell and namespaces ----------------------------------------------------

def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr.strip()}")
    return res


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextmanager
def netns(name: str):
    """Run the block (this thread only) inside network namespace ``name``."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)


class NsKernel(Kernel):
    """The conntrack table of namespace ``ns`` (ctnetlink sockets opened inside it)."""

    def __init__(self, ns: str):
        self.ns = ns

    def entries(self):
        with netns(self.ns):
            return super().entries()

    def delete(self, entries):
        with netns(self.ns):
            return super().delete(entries)


def ns_socket(ns: str, family: int, kind: int, proto: int = 0) -> socket.socket:
    with netns(ns):
        return socket.socket(family, kind, proto)


# --- the lab -----------------------------------------------------------------

@dataclass(frozen=True)
class Container:
    ns: str
    index: int
    veth: str      # host side, the bridge port
    mac: str
    ip4: str
    ip6: str

    def ip(self, family: int) -> str:
        return self.ip4 if family == 4 else self.ip6

    def port(self, segment=None, quarantine=None) -> nft.Port:
        return nft.Port(endpoint_id=f"ep{self.index:02d}", name=self.veth, mac=self.mac,
                        ipv4=self.ip4, ipv6=self.ip6, segment=segment, quarantine=quarantine)

    def ip_cmd(self, *args: str, check: bool = True):
        return sh("ip", "-n", self.ns, *args, check=check)


class Lab:
    """A host namespace with a bridge, container namespaces and an nft runner."""

    def __init__(self, tmp_path):
        self.host = f"sn-k-{uuid.uuid4().hex[:6]}"
        self.containers: list = []
        self.namespaces: list = []
        self.responder = Responder()
        self.runner = nft.NftRunner(binary=self._wrapper(tmp_path))
        self.table = nft.table_name(NET_ID)

    def _wrapper(self, tmp_path) -> str:
        path = tmp_path / "nft-in-netns"
        path.write_text(f'#!/bin/sh\nexec ip netns exec {self.host} nft "$@"\n')
        path.chmod(0o755)
        return str(path)

    def setup_host(self) -> None:
        self._add_ns(self.host)
        sh("ip", "-n", self.host, "link", "add", BRIDGE, "address", BRIDGE_MAC, "type", "bridge")
        sh("ip", "-n", self.host, "link", "set", BRIDGE, "up")
        self.exec("sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1",
                  "net.bridge.bridge-nf-call-ip6tables=1")
        out = self.exec("sysctl", "-n", "net.bridge.bridge-nf-call-iptables",
                        "net.bridge.bridge-nf-call-ip6tables").stdout.split()
        assert out == ["1", "1"], f"br_netfilter is not on in {self.host}: {out}"

    def _add_ns(self, name: str) -> None:
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")

    def exec(self, *argv: str, check: bool = True):
        """Run a command inside the host namespace."""
        return sh("ip", "netns", "exec", self.host, *argv, check=check)

    def add(self, n: int) -> list:
        """Plug ``n`` more containers into the bridge; they answer probes at once."""
        new = [self._add_container(len(self.containers) + i) for i in range(n)]
        self.containers += new
        for c in new:
            self.responder.listen(c)
        return new

    def _add_container(self, i: int) -> Container:
        host = 10 + i
        c = Container(ns=f"{self.host}-c{i}", index=i, veth=f"snv{i}",
                      mac=f"02:42:0a:ec:00:{host:02x}", ip4=f"10.236.0.{host}",
                      ip6=f"fd00:236::{host:x}")
        self._add_ns(c.ns)
        sh("ip", "-n", self.host, "link", "add", c.veth, "type", "veth", "peer", "name", "eth0",
           "netns", c.ns)
        sh("ip", "-n", self.host, "link", "set", c.veth, "master", BRIDGE, "up")
        c.ip_cmd("link", "set", "eth0", "address", c.mac)
        c.ip_cmd("addr", "add", f"{c.ip4}/24", "dev", "eth0")
        c.ip_cmd("addr", "add", f"{c.ip6}/64", "dev", "eth0", "nodad")
        c.ip_cmd("link", "set", "eth0", "up")
        sh("ip", "netns", "exec", c.ns, "sysctl", "-qw", "net.ipv4.ping_group_range=0 0")
        return c

    def link_mac(self, name: str) -> str:
        """MAC of a link of the host namespace (a veth's host side, the bridge)."""
        out = sh("ip", "-n", self.host, "-br", "link", "show", "dev", name).stdout.split()
        return out[2]

    def close(self) -> None:
        self.responder.stop()
        errors = []
        for name in reversed(self.namespaces):
            res = sh("ip", "netns", "del", name, check=False)
            if res.returncode != 0:
                errors.append(f"{name}: {res.stderr.strip()}")
        assert not errors, "namespace cleanup failed: " + "; ".join(errors)

    # --- nftables inside the host namespace ---------------------------------
    def apply_policy(self, rules: str, members: dict, intra: str = "allow", extra_ports=()):
        """Compile ``rules`` over ``members`` (container -> segment) and apply the tables."""
        ports = [c.port(seg) for c, seg in members.items()] + list(extra_ports)
        compiled = compile_rules(rules, intra, ports)
        self.runner.apply(nft.render_network(NET_ID, BRIDGE, compiled, ports))
        return compiled

    def counter(self, family: str, comment: str) -> int:
        """Packets counted by the rules of our ``family`` table commented ``comment``."""
        total = 0
        for obj in self.runner.list_json("table", family, self.table).get("nftables", []):
            rule = obj.get("rule")
            if rule and rule.get("comment") == comment:
                total += sum(e["counter"]["packets"] for e in rule["expr"] if "counter" in e)
        return total


def compile_rules(rules: str, intra: str, ports):
    options = NetworkOptions(rules=parse_rules(rules), intra=intra)
    members = [Member(p.endpoint_id, p.segment, p.ipv4, p.ipv6, p.quarantine) for p in ports]
    return compile_policy(options, members)


@pytest.fixture
def lab(tmp_path):
    """A fresh host namespace with a br_netfilter bridge; ``lab.add(n)`` adds containers."""
    the_lab = Lab(tmp_path)
    try:
        the_lab.setup_host()
        yield the_lab
    finally:
        the_lab.close()


# --- servers in the container namespaces -------------------------------------

class Responder:
    """Echo servers (tcp TCP_PORTS, udp UDP_PORT, both families) in one thread."""

    def __init__(self):
        self.sel = selectors.DefaultSelector()
        self.sockets: list = []
        self._stop = threading.Event()
        self._thread = None

    def listen(self, c: Container) -> None:
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


def probe_tcp(src: Container, dst: str, port: int, timeout: float = PROBE_TIMEOUT) -> str:
    """'ok' when a new connection to ``dst``:``port`` echoes; else what went wrong."""
    with ns_socket(src.ns, _family(dst), socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        return _exchange(lambda: s.connect((dst, port)), s)


def probe_udp(src: Container, dst: str, port: int = UDP_PORT, timeout: float = PROBE_TIMEOUT,
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


def probe_icmp(src: Container, dst: str, timeout: float = PROBE_TIMEOUT) -> str:
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


def probe(src: Container, dst: Container, family: int, proto: str, port=None) -> str:
    addr = dst.ip(family)
    if proto == "tcp":
        return probe_tcp(src, addr, port)
    if proto == "udp":
        return probe_udp(src, addr, port)
    return probe_icmp(src, addr)


def parallel(fn, items, workers: int = 96) -> list:
    """fn(*item) for every item, concurrently; results in order."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda item: fn(*item), items))


# --- raw frames and sniffing ---------------------------------------------------

class Sniffer:
    """Frames arriving at ``eth0`` of a container namespace (not the ones it sends)."""

    def __init__(self, c: Container):
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


def send_frame(c: Container, frame: bytes) -> None:
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


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def icmp6_frame(eth_src: str, eth_dst: str, ip_src: str, ip_dst: str, body: bytes) -> bytes:
    """An Ethernet frame with an ICMPv6 message (hop limit 255, checksum filled in)."""
    src, dst = ipaddress.IPv6Address(ip_src).packed, ipaddress.IPv6Address(ip_dst).packed
    pseudo = src + dst + struct.pack("!I3xB", len(body), 58)
    body = body[:2] + struct.pack("!H", _checksum(pseudo + body)) + body[4:]
    ip6 = struct.pack("!IHBB", 6 << 28, len(body), 58, 255) + src + dst
    return mac_bytes(eth_dst) + mac_bytes(eth_src) + b"\x86\xdd" + ip6 + body


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
