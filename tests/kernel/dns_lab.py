"""DNS learning on the kernel tier's lab (``nsfixtures.Lab``): a DNS server, echo
servers behind test addresses, and the daemon's ``DnsService`` on the lab's backend.

``DnsRig(lab)`` adds, to the lab's outside namespace (another host on the
LAN), a DNS server (dnspython, UDP and TCP) on 10.237.0.53 / fd00:237::53
and AnyIP echo servers on tcp/443 and tcp/80 for 10.238.0.0/16 and
fd00:238::/64 (routed through that namespace). It runs a ``DnsService``
(queue, learner, store, answer marks) on a thread inside the lab's host
namespace, wired to the lab's backend as the reconciler wires it
(``network``, ``ports``). Containers query the server directly; the answer
comes back through the host namespace to the bridge, is marked, held in the
queue and learned. Cleanup: the lab deletes the namespaces (with them the
table, the iptables rules and the queue).
"""
from __future__ import annotations

import socket
import subprocess
import struct
import threading

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset

from nsfixtures import BRIDGE, NET_ID, InNamespace
from packets import ns_socket, sh
from plugin.enforce.nftables.dnsmarks import AnswerMarks
from plugin.dns.service import DnsService
from plugin.enforce.fqdn import learned_counters
from plugin.dns.store import LearnedStore
from plugin.enforce.nftables.runner import NftRunner

DNS4, DNS6 = "10.237.0.53", "fd00:237::53"
TARGETS4, TARGETS6 = "10.238.0.0/16", "fd00:238::/64"
PORTS = (443, 80)
QUEUE = 5353
#: egress the tests always allow: DNS to the server (learned addresses come on top)
DNS_RULES = " ".join(f"*->{a}:{p}/53" for a in (f"{DNS4}/32", f"[{DNS6}/128]") for p in ("udp", "tcp"))


class _Serving:
    """Sockets of a namespace, each served by a thread of its own until :meth:`stop`."""

    def _start(self, socks: list) -> None:
        self.socks, self._stop = socks, threading.Event()
        self.threads = [threading.Thread(target=self._serve, args=(s,), daemon=True) for s in self.socks]
        for t in self.threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self.threads:
            t.join(2)
        for s in self.socks:
            s.close()


class DnsServer(_Serving):
    """Authoritative answers for test names over UDP and TCP (dnspython), in a namespace.

    ``zone``: name -> list of (type, ttl, value); CNAMEs are added as records.
    """

    def __init__(self, ns: str, addresses=()):
        self.zone: dict = {}
        socks = []
        for addr in addresses:
            fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
            udp = ns_socket(ns, fam, socket.SOCK_DGRAM)
            udp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # the lab's responder: *:53
            udp.bind((addr, 53))
            tcp = ns_socket(ns, fam, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.bind((addr, 53))
            tcp.listen(16)
            socks += [udp, tcp]
        self._start(socks)

    def add(self, name: str, rtype: str, ttl: int, *values: str) -> None:
        self.zone.setdefault(name.lower().rstrip("."), []).append((rtype, ttl, values))

    def answer(self, wire: bytes) -> bytes:
        query = dns.message.from_wire(wire)
        resp = dns.message.make_response(query)
        name = query.question[0].name.to_text().rstrip(".").lower()
        qtype = dns.rdatatype.to_text(query.question[0].rdtype)
        for _ in range(8):
            records = self.zone.get(name, [])
            cname = [r for r in records if r[0] == "CNAME"]
            for rtype, ttl, values in (cname or [r for r in records if r[0] == qtype]):
                resp.answer.append(dns.rrset.from_text(name + ".", ttl, "IN", rtype, *values))
            if not cname:
                break
            name = cname[0][2][0].rstrip(".").lower()
        if not resp.answer:
            resp.set_rcode(dns.rcode.NXDOMAIN)
        return resp.to_wire()

    def _serve(self, sock) -> None:
        sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                if sock.type == socket.SOCK_DGRAM:
                    data, peer = sock.recvfrom(4096)
                    sock.sendto(self.answer(data), peer)
                else:
                    conn, _ = sock.accept()
                    with conn:
                        conn.settimeout(2)
                        size = struct.unpack("!H", conn.recv(2))[0]
                        out = self.answer(conn.recv(size))
                        conn.sendall(struct.pack("!H", len(out)) + out)
            except (socket.timeout, OSError, ValueError, struct.error):
                continue

class Echo(_Serving):
    """TCP echo servers on PORTS for every address of the srv namespace (AnyIP)."""

    def __init__(self, ns: str):
        socks = []
        for fam, wildcard in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            for port in PORTS:
                s = ns_socket(ns, fam, socket.SOCK_STREAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.setsockopt(socket.IPPROTO_IP, 19, 1)  # IP_FREEBIND
                if fam == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                s.bind((wildcard, port))
                s.listen(256)
                s.settimeout(0.2)
                socks.append(s)
        self._start(socks)

    def _serve(self, sock) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = sock.accept()
            except (socket.timeout, OSError):
                continue
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn) -> None:
        with conn:
            conn.settimeout(10)
            try:
                while True:
                    data = conn.recv(2048)
                    if not data:
                        return
                    conn.sendall(data)
            except OSError:
                return

class DnsRig:
    """The DNS server, echo servers and a DnsService on ``lab`` (see the module doc)."""

    def __init__(self, lab, min_ttl: int = 60, max_per_network: int = 1024):
        self.lab, self.min_ttl, self.max_per_network = lab, min_ttl, max_per_network
        out, host = lab.outside.ns, lab.host
        sh("ip", "-n", out, "addr", "add", f"{DNS4}/24", "dev", "eth0")
        sh("ip", "-n", out, "addr", "add", f"{DNS6}/64", "dev", "eth0", "nodad")
        sh("ip", "-n", out, "route", "add", "local", TARGETS4, "dev", "lo")
        sh("ip", "-n", out, "-6", "route", "add", "local", TARGETS6, "dev", "lo")
        sh("ip", "-n", host, "route", "add", TARGETS4, "via", lab.outside.ip4)
        sh("ip", "-n", host, "-6", "route", "add", TARGETS6, "via", lab.outside.ip6)
        self.server = DnsServer(out, (DNS4, DNS6))
        self.echo = Echo(out)
        self.service = self.store = None

    def start(self) -> InNamespace:
        """A DnsService (a daemon's) in the host namespace, told the lab's network."""
        self.serve()
        self.tell()
        return self.service

    def serve(self) -> InNamespace:
        """A DnsService in the host namespace, told nothing (a reconciler tells it)."""
        store = self.store = LearnedStore(min_ttl=self.min_ttl, max_per_network=self.max_per_network)
        prefix = ("ip", "netns", "exec", self.lab.host)
        self.service = InNamespace(self.lab.host, lambda: DnsService(
            AnswerMarks(NftRunner(), QUEUE, prefix=prefix), store=store))
        self.service.start()
        return self.service

    def tell(self) -> None:
        """What the reconciler does after an apply: the policy in force and every port."""
        self.service.network(NET_ID, BRIDGE, self.lab.policy, self.lab.ports(), self.lab.backend)

    def stop(self) -> None:
        """The daemon stops (the kernel keeps what it holds)."""
        if self.service is not None:
            self.service.close()
            self.service.shutdown_plain()
            self.service = None

    def close(self) -> None:
        self.stop()
        self.server.stop()
        self.echo.stop()

    def learned(self) -> list:
        return self.lab.backend.learned(NET_ID)

    def counters(self):
        """The lab's counters as the reconciler gives them: a DNS rule's under its own key."""
        return learned_counters(self.lab.counters(), self.lab.policy, self.store.tags(NET_ID))

    def queue_rules(self) -> int:
        out = sh("ip", "netns", "exec", self.lab.host, "iptables", "-t", "mangle", "-S").stdout
        return out.count("NFQUEUE")

    def dns_table(self) -> bool:
        """Whether the host namespace has the hold's table (``inet secnet-dns``)."""
        res = subprocess.run(["ip", "netns", "exec", self.lab.host, "nft", "list", "table", "inet", "secnet-dns"],
                             capture_output=True, text=True, check=False)
        return res.returncode == 0


def resolve(c, name: str, qtype: str = "A", tcp: bool = False, server: str = DNS4,
            timeout: float = 2.0) -> list:
    """Ask ``server`` from container ``c``; the addresses answered ([] on NXDOMAIN)."""
    query = dns.message.make_query(name, qtype)
    fam = socket.AF_INET6 if ":" in server else socket.AF_INET
    kind = socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM
    with ns_socket(c.ns, fam, kind) as s:
        if tcp:
            s.settimeout(timeout)
            s.connect((server, 53))
        s.setblocking(False)   # dnspython wants a non-blocking socket of ours
        if tcp:
            resp = dns.query.tcp(query, server, timeout=timeout, sock=s)
        else:
            resp = dns.query.udp(query, server, timeout=timeout, sock=s)
    return [rd.address for rrset in resp.answer for rd in rrset if hasattr(rd, "address")]


def connect(c, address: str, port: int = 443, timeout: float = 1.0) -> str:
    """'ok' when a new TCP connection from container ``c`` to ``address`` echoes."""
    fam = socket.AF_INET6 if ":" in address else socket.AF_INET
    with ns_socket(c.ns, fam, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect((address, port))
            s.sendall(b"ping")
            return "ok" if s.recv(16) == b"ping" else "garbled"
        except socket.timeout:
            return "timeout"
        except OSError as exc:
            return f"error:{exc.strerror or exc}"


def open_connection(c, address: str, port: int = 443) -> socket.socket:
    """A connected TCP socket from container ``c`` (the caller closes it)."""
    fam = socket.AF_INET6 if ":" in address else socket.AF_INET
    s = ns_socket(c.ns, fam, socket.SOCK_STREAM)
    s.settimeout(2)
    s.connect((address, port))
    return s
