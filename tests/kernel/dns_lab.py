"""A DNS lab for the kernel tier: a router namespace with secnet's DNS datapath.

Topology (every namespace is the test's own, deleted in the finalizer)::

    c0 (web, 10.227.0.10)  ┐                 ┌ dns  10.228.0.53 / fd00:228::53 (DnsServer)
    c1 (api, 10.227.0.11)  ┴ bridge ─ host ──┤
                             10.227.0.1      └ srv  10.229.0.0/16, fd00:229::/64 (AnyIP
                                                     echo servers on tcp/443, tcp/80)

The host namespace routes between them and holds one nft table: the
identities of c0/c1 in maps, the ``fqdn4``/``fqdn6`` sets of
``plugin.dns.nft``, the queue rules that send DNS answers to c0/c1 to the
test's NFQUEUE, and a forward chain with ``policy drop`` (egress denied
except DNS to the server and what the sets allow). The queue is read by the
real ``DnsQueue`` -> ``DnsLearner`` -> ``NftFqdnSets`` chain, with nft run
in-process (libnftables) from a context made inside the host namespace.
The queue rules (``plugin.dns.queue_rules``) sit in iptables' mangle table
of the host namespace.
"""
from __future__ import annotations

import socket
import struct
import threading
import time
import uuid

import dns.message
import dns.query
import dns.rcode
import dns.rrset

from plugin.kernel import netns as netns_mod
from plugin.dns import nft as dnsnft
from plugin.dns.learner import DnsLearner, Target
from plugin.dns.queue import DnsQueue
from plugin.dns.service import DnsService
from plugin.enforce.backend import Port
from plugin.dns.queue_rules import CTMARK, QueueRules
from plugin.dns.store import LearnedStore
from segmentation.backends.nft_runner import NftRunner, _Lib
from segmentation.policymap import compile_policy_map
from segmentation.options import NetworkOptions
from segmentation.rules import parse_rules
from tests.kernel.nsfixtures import ns_socket, sh

NET = "d" * 64
TABLE = "sdnstest"
IDS = {"web": 257, "api": 258, "default": 256}
BRIDGE = "dnsbr0"
DNS4, DNS6 = "10.228.0.53", "fd00:228::53"
CONTAINERS = {"web": ("10.227.0.10", "fd00:227::10"), "api": ("10.227.0.11", "fd00:227::11")}
PORTS = (443, 80)


class DnsServer:
    """Authoritative answers for test names over UDP and TCP (dnspython), in a namespace.

    ``zone``: name -> list of (type, ttl, value); CNAMEs are added as records.
    """

    def __init__(self, ns: str, addresses=(DNS4, DNS6)):
        self.zone: dict = {}
        self.socks, self._stop = [], threading.Event()
        for addr in addresses:
            fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
            udp = ns_socket(ns, fam, socket.SOCK_DGRAM)
            udp.bind((addr, 53))
            tcp = ns_socket(ns, fam, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.bind((addr, 53))
            tcp.listen(16)
            self.socks += [udp, tcp]
        self.threads = [threading.Thread(target=self._serve, args=(s,), daemon=True) for s in self.socks]
        for t in self.threads:
            t.start()

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

    def stop(self) -> None:
        self._stop.set()
        for t in self.threads:
            t.join(2)
        for s in self.socks:
            s.close()


class Echo:
    """TCP echo servers on PORTS for every address of the srv namespace (AnyIP)."""

    def __init__(self, ns: str):
        self.socks, self._stop = [], threading.Event()
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
                self.socks.append(s)
        self.threads = [threading.Thread(target=self._serve, args=(s,), daemon=True) for s in self.socks]
        for t in self.threads:
            t.start()

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

    def stop(self) -> None:
        self._stop.set()
        for t in self.threads:
            t.join(2)
        for s in self.socks:
            s.close()


class FixedTargets:
    """``plugin.dns.learner.Targets`` for the lab: container address -> Target."""

    def __init__(self):
        self.by_address: dict = {}

    def set_policy(self, rules: str) -> frozenset:
        pm = compile_policy_map(NetworkOptions(rules=parse_rules(rules), egress="deny"), IDS)
        for seg, addrs in CONTAINERS.items():
            entries = tuple(sorted(e for e in pm.fqdns if e.identity == IDS[seg]))
            for a in addrs:
                self.by_address[a] = Target(NET, IDS[seg], entries)
        return pm.fqdns

    def target(self, outdev: int, address: str):
        return self.by_address.get(address)


def ruleset(size: int = 1024) -> str:
    """The lab's nft table: identities, fqdn sets, egress deny."""
    ids4 = ", ".join(f"{CONTAINERS[s][0]} : {IDS[s]}" for s in CONTAINERS)
    ids6 = ", ".join(f"{CONTAINERS[s][1]} : {IDS[s]}" for s in CONTAINERS)
    return (f"table inet {TABLE} {{\n"
            f"  map ident4 {{ type ipv4_addr : mark; elements = {{ {ids4} }}; }}\n"
            f"  map ident6 {{ type ipv6_addr : mark; elements = {{ {ids6} }}; }}\n"
            + dnsnft.render_sets(size) +
            "  set dns_ids { type mark; }\n"
            "  chain forward {\n    type filter hook forward priority 0; policy drop;\n"
            f"    iifname {BRIDGE} meta nfproto ipv4 meta mark set ip saddr map @ident4\n"
            f"    iifname {BRIDGE} meta nfproto ipv6 meta mark set ip6 saddr map @ident6\n"
            + dnsnft.query_mark_rule("meta mark @dns_ids", CTMARK) +
            "    ct state established,related accept\n"
            f"    iifname {BRIDGE} ip daddr {DNS4} meta l4proto {{ tcp, udp }} th dport 53 accept\n"
            f"    iifname {BRIDGE} ip6 daddr {DNS6} meta l4proto {{ tcp, udp }} th dport 53 accept\n"
            + dnsnft.lookup_rules("meta mark") +
            "  }\n"
            "  chain input {\n    type filter hook input priority 0; policy accept;\n"
            f"    iifname {BRIDGE} meta nfproto ipv4 meta mark set ip saddr map @ident4\n"
            f"    iifname {BRIDGE} meta nfproto ipv6 meta mark set ip6 saddr map @ident6\n"
            + dnsnft.query_mark_rule("meta mark @dns_ids", CTMARK) +
            "  }\n}\n")


class DnsLab:
    """The namespaces, the nft table and the learning chain (see the module doc)."""

    def __init__(self, tmp_path, min_ttl: int = 60, max_per_network: int = 1024, queue: int = 5353):
        tag = uuid.uuid4().hex[:6]
        self.host, self.dns_ns, self.srv_ns = f"sn-d-{tag}", f"sn-d-{tag}-dns", f"sn-d-{tag}-srv"
        self.c = {seg: f"sn-d-{tag}-{seg}" for seg in CONTAINERS}
        self.namespaces = []
        self.queue_num, self.min_ttl, self.max_per_network = queue, min_ttl, max_per_network
        wrapper = tmp_path / "nft-in-netns"
        wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {self.host} nft "$@"\n')
        wrapper.chmod(0o755)
        self.runner = NftRunner(binary=str(wrapper))
        self.server = self.echo = self.queue = self.learner = None
        self.targets = FixedTargets()

    # --- set-up ---------------------------------------------------------------
    def setup(self) -> None:
        for ns in (self.host, self.dns_ns, self.srv_ns, *self.c.values()):
            sh("ip", "netns", "add", ns)
            self.namespaces.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            # no duplicate address detection: a tentative link-local address
            # would hold back neighbour discovery for the first second
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0",
               "net.ipv6.conf.default.accept_dad=0")
        self._ip(self.host, "link", "add", BRIDGE, "type", "bridge")
        self._ip(self.host, "addr", "add", "10.227.0.1/24", "dev", BRIDGE)
        self._ip(self.host, "addr", "add", "fd00:227::1/64", "dev", BRIDGE, "nodad")
        self._ip(self.host, "link", "set", BRIDGE, "up")
        for i, (seg, (a4, a6)) in enumerate(CONTAINERS.items()):
            self._veth(self.c[seg], f"dv{i}", None, f"{a4}/24", f"{a6}/64", master=BRIDGE)
            self._ip(self.c[seg], "route", "add", "default", "via", "10.227.0.1")
            self._ip(self.c[seg], "-6", "route", "add", "default", "via", "fd00:227::1")
        self._veth(self.dns_ns, "dd0", ("10.228.0.1/24", "fd00:228::1/64"), f"{DNS4}/24", f"{DNS6}/64")
        self._veth(self.srv_ns, "ds0", ("10.229.255.1/30", "fd00:229:1::1/64"),
                   "10.229.255.2/30", "fd00:229:1::2/64")
        for ns, gw4, gw6 in ((self.dns_ns, "10.228.0.1", "fd00:228::1"),
                             (self.srv_ns, "10.229.255.1", "fd00:229:1::1")):
            self._ip(ns, "route", "add", "default", "via", gw4)
            self._ip(ns, "-6", "route", "add", "default", "via", gw6)
        self._ip(self.srv_ns, "route", "add", "local", "10.229.0.0/16", "dev", "lo")
        self._ip(self.srv_ns, "-6", "route", "add", "local", "fd00:229::/64", "dev", "lo")
        self._ip(self.host, "route", "add", "10.229.0.0/16", "via", "10.229.255.2")
        self._ip(self.host, "-6", "route", "add", "fd00:229::/64", "via", "fd00:229:1::2")
        sh("ip", "netns", "exec", self.host, "sysctl", "-qw", "net.ipv4.ip_forward=1",
           "net.ipv6.conf.all.forwarding=1")
        self.runner.apply(ruleset(self.max_per_network))
        self.queue_rules = QueueRules(self.queue_num, prefix=("ip", "netns", "exec", self.host))
        self.server, self.echo = DnsServer(self.dns_ns), Echo(self.srv_ns)

    def _ip(self, ns: str, *args: str) -> None:
        sh("ip", "-n", ns, *args)

    def _veth(self, ns, host_end, host_addrs, addr4, addr6, master=None) -> None:
        self._ip(self.host, "link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", ns)
        if master:
            self._ip(self.host, "link", "set", host_end, "master", master)
        for a in host_addrs or ():
            self._ip(self.host, "addr", "add", a, "dev", host_end, "nodad")
        self._ip(self.host, "link", "set", host_end, "up")
        self._ip(ns, "addr", "add", addr4, "dev", "eth0")
        self._ip(ns, "addr", "add", addr6, "dev", "eth0", "nodad")
        self._ip(ns, "link", "set", "eth0", "up")

    def mark_dns_identities(self, fqdns) -> None:
        """The identities whose DNS queries are marked (their answers queued)."""
        ids = ", ".join(str(i) for i in sorted({e.identity for e in fqdns}))
        self.runner.apply(f"flush set inet {TABLE} dns_ids\n"
                          + (f"add element inet {TABLE} dns_ids {{ {ids} }}\n" if ids else ""))

    def start_learning(self, rules: str, store: LearnedStore | None = None) -> None:
        """Compile ``rules`` and start reading the queue with a fresh learner."""
        self.fqdns = self.targets.set_policy(rules)
        self.mark_dns_identities(self.fqdns)
        self.queue_rules.ensure(BRIDGE, NET)
        self._in_process_nft()
        self.store = store or LearnedStore(min_ttl=self.min_ttl, max_per_network=self.max_per_network)
        self.learner = DnsLearner(self.targets, self.sets, self.store)
        self.queue = DnsQueue(self.queue_num, self.learner.on_packet, netns=f"/run/netns/{self.host}")
        self.queue.start()

    def _in_process_nft(self) -> None:
        # libnftables in-process: a context made inside the host namespace keeps
        # its netlink socket there (the module-wide one belongs to the test's own)
        self.runner._lib = netns_mod.run_in(f"/run/netns/{self.host}", _Lib)
        self.sets = dnsnft.NftFqdnSets(self.runner, lambda _net: TABLE)

    def start_service(self, rules: str) -> DnsService:
        """The daemon's way: a DnsService told the network's policy map and ports."""
        self._in_process_nft()
        self.service = DnsService(self.sets, self.queue_rules, self.queue_num,
                                  LearnedStore(min_ttl=self.min_ttl), netns=f"/run/netns/{self.host}")
        self.service.start()
        self.queue = self.service.queue
        self.store = self.service.store
        self.set_service_policy(rules)
        return self.service

    def set_service_policy(self, rules: str) -> None:
        pm = compile_policy_map(NetworkOptions(rules=parse_rules(rules), egress="deny"), IDS)
        ports = [Port(f"ep-{seg}", f"dv{i}", "02:00:00:00:00:01", a4, a6, identity=IDS[seg])
                 for i, (seg, (a4, a6)) in enumerate(CONTAINERS.items())]
        self.mark_dns_identities(pm.fqdns)
        self.service.network(NET, BRIDGE, pm, ports)

    def queue_rule_count(self) -> int:
        out = sh("ip", "netns", "exec", self.host, "iptables", "-t", "mangle", "-S").stdout
        return out.count("NFQUEUE")

    def stop_learning(self) -> None:
        if self.queue is not None:
            self.queue.stop()
            self.queue = None

    def close(self) -> None:
        self.stop_learning()
        for thing in (self.server, self.echo):
            if thing is not None:
                thing.stop()
        errors = [ns for ns in reversed(self.namespaces)
                  if sh("ip", "netns", "del", ns, check=False).returncode != 0]
        assert not errors, f"namespace cleanup failed: {errors}"

    # --- what a container does ---------------------------------------------------
    def resolve(self, seg: str, name: str, qtype: str = "A", tcp: bool = False,
                server: str = DNS4, timeout: float = 2.0, sport: int = 0) -> list:
        """Ask ``server`` from container ``seg`` (from source port ``sport``, 0: any);
        the addresses answered ([] on NXDOMAIN)."""
        query = dns.message.make_query(name, qtype)
        fam = socket.AF_INET6 if ":" in server else socket.AF_INET
        kind = socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM
        with ns_socket(self.c[seg], fam, kind) as s:
            if sport:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("", sport))
            if tcp:
                s.settimeout(timeout)
                s.connect((server, 53))
            s.setblocking(False)   # dnspython wants a non-blocking socket of ours
            if tcp:
                resp = dns.query.tcp(query, server, timeout=timeout, sock=s)
            else:
                resp = dns.query.udp(query, server, timeout=timeout, sock=s)
        return [rd.address for rrset in resp.answer for rd in rrset if hasattr(rd, "address")]

    def connect(self, seg: str, address: str, port: int = 443, timeout: float = 1.0) -> str:
        """'ok' when a new TCP connection from ``seg`` to ``address`` echoes."""
        fam = socket.AF_INET6 if ":" in address else socket.AF_INET
        with ns_socket(self.c[seg], fam, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            try:
                s.connect((address, port))
                s.sendall(b"ping")
                return "ok" if s.recv(16) == b"ping" else "garbled"
            except socket.timeout:
                return "timeout"
            except OSError as exc:
                return f"error:{exc.strerror or exc}"

    def open_connection(self, seg: str, address: str, port: int = 443):
        """A connected TCP socket from ``seg`` (the caller closes it)."""
        fam = socket.AF_INET6 if ":" in address else socket.AF_INET
        s = ns_socket(self.c[seg], fam, socket.SOCK_STREAM)
        s.settimeout(2)
        s.connect((address, port))
        return s

    def elements(self) -> list:
        return self.sets.learned(NET)
