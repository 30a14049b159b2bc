"""DNS-name rules end to end: a DNS server and echo servers in a namespace of the
test's own, and a container's resolve-and-connect (shared by test_dns_e2e.py and
test_managed_plugin.py).

``Outside``: a namespace behind a veth pair of the host, 10.205.K.53 answering
(dnspython, the kernel tier's ``DnsServer``) and AnyIP echo servers on tcp/443
for 10.206.K.0/24. Containers get ``--dns 10.205.K.53``: their queries go to
127.0.0.11 and Docker forwards them from the container's namespace. Nothing
leaves the machine.
"""
from __future__ import annotations

import json
import random
import sys
import uuid

import helpers as h
import workers

sys.path.insert(0, str(h.ROOT / "tests" / "kernel"))
from dns_lab import DnsServer, Echo  # noqa: E402  (the kernel tier's servers)

PY = sys.executable
CHECK_SRC = r'''
import json, socket, sys, time
import dns.message, dns.query
out = []
server = sys.argv[2] if len(sys.argv) > 2 else "127.0.0.11"
for name, port in json.loads(sys.argv[1]):
    q = dns.message.make_query(name, "A")
    try:
        r = dns.query.udp(q, server, timeout=3)
        addrs = [rd.address for rrset in r.answer for rd in rrset if hasattr(rd, "address")]
    except Exception as exc:
        out.append([name, None, "dns: %s" % exc]); continue
    if not addrs:
        out.append([name, None, "no address"]); continue
    s = socket.socket(); s.settimeout(1.0)
    try:
        s.connect((addrs[0], port)); s.sendall(b"x"); ok = s.recv(4) == b"x"
        out.append([name, addrs[0], "ok" if ok else "garbled"])
    except OSError as exc:
        out.append([name, addrs[0], "timeout" if isinstance(exc, socket.timeout) else str(exc)])
    finally:
        s.close()
print(json.dumps(out))
'''


class Outside:
    """The DNS server's namespace: 10.205.K.53 (DNS), 10.206.K.0/24 (AnyIP echo on 443)."""

    def __init__(self, dns_net: str = "10.205", far_net: str = "10.206"):
        """``dns_net``, ``far_net``: the /16s of the server's link and of the echo addresses."""
        self.dns_net, self.far_net = dns_net, far_net
        self.pick(random.randint(0, 255))
        tag = uuid.uuid4().hex[:6]
        self.ns, self.veth = f"sndns-{tag}", f"sndh{tag}"
        self.server = self.echo = None

    def pick(self, k: int) -> None:
        self.k, self.link, self.net = k, f"{self.dns_net}.{k}", f"{self.far_net}.{k}"
        self.dns = f"{self.link}.53"

    def create(self) -> "Outside":
        """The namespace, its link and servers; a K of ours that another Outside routes
        already (the other xdist worker's module) is picked again among the free ones."""
        with workers.mutex("dns-outside"):   # xdist: two modules' Outsides never share a K
            routes = h.run(["ip", "-4", "route", "show"]).stdout.split()
            used = lambda k: {f"{self.dns_net}.{k}.0/24", f"{self.far_net}.{k}.0/24"} & set(routes)
            if self.link == f"{self.dns_net}.{self.k}" and used(self.k):   # not set by the test
                free = [k for k in range(256) if not used(k)]
                assert free, f"no free {self.dns_net}.K/24 for a DNS server namespace"
                self.pick(random.choice(free))
            return self._create()

    def _create(self) -> "Outside":
        ip = lambda *a: h.run(["ip", *a])
        ip("netns", "add", self.ns)
        ip("link", "add", self.veth, "type", "veth", "peer", "name", "eth0", "netns", self.ns)
        ip("addr", "add", f"{self.link}.1/24", "dev", self.veth)
        ip("link", "set", self.veth, "up")
        for args in (("link", "set", "lo", "up"), ("addr", "add", f"{self.dns}/24", "dev", "eth0"),
                     ("link", "set", "eth0", "up"), ("route", "add", "default", "via", f"{self.link}.1"),
                     ("route", "add", "local", f"{self.net}.0/24", "dev", "lo")):
            ip("-n", self.ns, *args)
        ip("route", "add", f"{self.net}.0/24", "via", self.dns)
        self.server, self.echo = DnsServer(self.ns, addresses=(self.dns,)), Echo(self.ns)
        return self

    def destroy(self) -> None:
        for thing in (self.server, self.echo):
            if thing is not None:
                thing.stop()
        h.run(["ip", "route", "del", f"{self.net}.0/24"], check=False)
        h.run(["ip", "link", "del", self.veth], check=False)
        h.run(["ip", "netns", "del", self.ns], check=False)


def check(c: h.Container, names, port: int = 443, server: str = "127.0.0.11") -> dict:
    """name -> (address, outcome) of resolving through ``server`` (Docker's embedded
    resolver by default) and connecting at once."""
    res = h.run(["nsenter", f"--net={c.sandbox}", PY, "-c", CHECK_SRC,
                 json.dumps([[n, port] for n in names]), server], timeout=300)
    return {name: (addr, outcome) for name, addr, outcome in json.loads(res.stdout)}
