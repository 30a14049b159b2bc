"""DNS-name rules when the DNS server is a member of the same network (U11-F4).

The contract: answers "that pass through the network are seen (the container's
resolver, Docker's embedded DNS forwarding upstream, or a DNS server the
container queries directly)", and both backends give the same verdict. Here
``web`` queries a resolver container of segment ``resolver`` on the lab's
bridge (``web->resolver:udp/53``, ``tcp/53``): its answer is bridged between
two members, never routed through the host. On eBPF an allowed east-west
packet normally skips the bridge and netfilter (``bpf_redirect_peer``), so
the answer never met the marking table and the queue and taught nothing;
DNS flows (port 53) now take the bridge (docs/ebpf.md, "The fast path").
"""
from __future__ import annotations

import dns.exception
import pytest

from dns_lab import DnsRig, DnsServer, connect, resolve
from nsfixtures import lab  # noqa: F401  (lab is a fixture)

pytestmark = pytest.mark.kernel

RULES = ("web->dns(www.inside.test):tcp/443 web->resolver:udp/53 web->resolver:tcp/53")


@pytest.fixture
def inside(lab):
    """(rig, web, resolver): a DNS server in the resolver container (both families),
    CNAME www.inside.test -> api2.inside.test -> 10.238.0.40 / fd00:238::40."""
    web, res = lab.add(2)
    lab.apply(RULES, {web: "web", res: "resolver"}, egress="deny")
    rig = DnsRig(lab)
    server = DnsServer(res.ns, (res.ip4, res.ip6))
    try:
        server.add("www.inside.test", "CNAME", 300, "api2.inside.test.")
        server.add("api2.inside.test", "A", 300, "10.238.0.40")
        server.add("api2.inside.test", "AAAA", 300, "fd00:238::40")
        server.add("other.inside.test", "A", 300, "10.238.0.41")
        rig.start()
        yield rig, web, res
    finally:
        server.stop()
        rig.close()


def test_an_answer_from_a_resolver_of_the_same_network_teaches(inside):
    """Upper case and a CNAME chain, over UDP to the resolver's IPv4 address."""
    rig, web, res = inside
    assert connect(web, "10.238.0.40") == "timeout"          # nothing learned yet
    assert resolve(web, "WWW.Inside.TEST", server=res.ip4) == ["10.238.0.40"]
    assert connect(web, "10.238.0.40") == "ok"
    assert connect(web, "10.238.0.40", 80) == "timeout"      # the rule says tcp/443
    assert {(g.address, g.lo) for g in rig.learned()} == {("10.238.0.40", 443)}


def test_tcp_and_ipv6_answers_from_the_same_network_teach(inside):
    rig, web, res = inside
    assert resolve(web, "www.inside.test", "AAAA", tcp=True, server=res.ip4) == ["fd00:238::40"]
    assert connect(web, "fd00:238::40") == "ok"
    assert resolve(web, "www.inside.test", server=res.ip6) == ["10.238.0.40"]
    assert connect(web, "10.238.0.40") == "ok"
    assert resolve(web, "other.inside.test", server=res.ip6) == ["10.238.0.41"]
    assert connect(web, "10.238.0.41") == "timeout"          # no rule names it
    assert {g.address for g in rig.learned()} == {"10.238.0.40", "fd00:238::40"}


def test_in_network_answers_are_dropped_while_nobody_reads_the_queue(inside):
    """Fail closed, as for answers from outside: held, and nobody takes them."""
    rig, web, res = inside
    rig.stop()
    with pytest.raises(dns.exception.Timeout):
        resolve(web, "www.inside.test", server=res.ip4, timeout=1.0)
    assert connect(web, "10.238.0.40") == "timeout"
    assert rig.learned() == []
