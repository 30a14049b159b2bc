"""DNS-name rules at their edges, on both backends: answers that come over TCP, and an
answer that names a container of the network itself (contract: "FQDN: a destination
outside the network (egress)"; "Only answers that pass through the network are seen").

The DNS server and the echo servers are dns_helpers' ``Outside``, here on
10.235.240.0/24 (server) and 10.235.241.0/24 (echo addresses).
"""
from __future__ import annotations

import json
import random

import pytest

import helpers as h
from dns_helpers import PY, Outside
from vis_helpers import secnet_json

pytestmark = pytest.mark.usefixtures("backend")

RESOLVE_SRC = r'''
import json, socket, sys
import dns.message, dns.query
name, server, proto, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
q = dns.message.make_query(name, "A")
try:
    r = (dns.query.tcp if proto == "tcp" else dns.query.udp)(q, server, timeout=3)
    addrs = [rd.address for rrset in r.answer for rd in rrset if hasattr(rd, "address")]
except Exception as exc:
    print(json.dumps([None, "dns: %s" % exc])); sys.exit()
s = socket.socket(); s.settimeout(1.5)
try:
    s.connect((addrs[0], port)); out = "ok"
except OSError as exc:
    out = "timeout" if isinstance(exc, socket.timeout) else str(exc)
print(json.dumps([addrs[0], out]))
'''


@pytest.fixture(scope="module")
def outside():
    o = Outside()
    o.k, o.link, o.net = 240, "10.235.240", "10.235.241"
    o.dns = f"{o.link}.53"
    try:
        o.create()
        o.server.add("tcp.u9.test", "A", 300, f"{o.net}.5")
        o.server.add("emb.u9.test", "A", 300, f"{o.net}.6")
        yield o
    finally:
        o.destroy()


def resolve_and_connect(c: h.Container, name: str, server: str, proto: str, port: int) -> list:
    """[address, outcome] of resolving ``name`` at ``server`` over ``proto`` and connecting."""
    res = h.run(["nsenter", f"--net={c.sandbox}", PY, "-c", RESOLVE_SRC, name, server, proto,
                 str(port)], timeout=60)
    return json.loads(res.stdout)


def setup(make_network, run_container, outside, rules: str):
    opts = {"secnet.egress": "deny",
            "secnet.allow": f"{rules} *->{outside.dns}:udp/53 *->{outside.dns}:tcp/53"}
    for _ in range(20):
        try:
            net = make_network("u9-dns", subnet=f"10.235.{random.randint(0, 199)}.0/24", opts=opts)
            break
        except h.CommandFailed as exc:
            if "overlap" not in str(exc):
                raise
    extra = ("--dns", outside.dns)
    web = run_container(net, "u9-web", labels={"secnet.segment": "web"}, extra=extra)
    api = run_container(net, "u9-api", labels={"secnet.segment": "api"}, extra=extra)
    return net, web, api


@pytest.mark.parametrize("via", ["direct", "embedded"])
def test_an_answer_over_tcp_teaches(make_network, run_container, outside, via):
    """web asks over TCP (the server itself, or Docker's resolver 127.0.0.11): the answer's
    address is allowed, as a UDP answer's is."""
    name = "tcp.u9.test" if via == "direct" else "emb.u9.test"
    server = outside.dns if via == "direct" else "127.0.0.11"
    net, web, _api = setup(make_network, run_container, outside, f"web->dns({name}):tcp/443")
    got = resolve_and_connect(web, name, server, "tcp", 443)
    assert got[1] == "ok", f"{name} over TCP via {server}: {got}"
    learned = [a["address"] for r in secnet_json("show", net.name)["dns"] for a in r["addresses"]]
    assert got[0] in learned


def test_an_answer_naming_a_member_opens_no_east_west_flow(make_network, run_container, outside):
    """A DNS rule's name that resolves to a container of the network (api): web may still not
    open flows to api (a DNS name is a destination outside the network); explain agrees."""
    name = f"in{random.randint(0, 10**6)}.u9.test"     # a name of this test's only
    net, web, api = setup(make_network, run_container, outside, f"web->dns({name}):tcp/8080")
    outside.server.add(name, "A", 300, api.ip)
    got = resolve_and_connect(web, name, outside.dns, "udp", h.LISTEN_PORT)
    assert got[0] == api.ip, got
    assert got[1] != "ok", f"web reached api at {api.ip} through an answer for {name}"
    why = secnet_json("explain", net.name, web.name, api.name, f"tcp/{h.LISTEN_PORT}")
    assert not why["allowed"], why


def test_a_cname_into_a_wildcard_over_tcp_in_upper_case_teaches_and_explain_names_it(
        make_network, run_container, outside):
    """`web->dns(*.u9.test):tcp/443`; web asks over TCP for ALIAS.OTHER.TEST, a CNAME to
    deep.sub.u9.test: the chain is followed, the name below u9.test matches, the address is
    allowed; explain names the rule and the answer. An address no answer gave stays denied
    (explain: egress denied)."""
    tag = random.randint(0, 10**6)
    alias, target = f"alias{tag}.other.test", f"deep{tag}.sub.u9.test"
    outside.server.add(alias, "CNAME", 300, target + ".")
    outside.server.add(target, "A", 300, f"{outside.net}.7")
    net, web, _api = setup(make_network, run_container, outside, "web->dns(*.u9.test):tcp/443")
    got = resolve_and_connect(web, alias.upper(), outside.dns, "tcp", 443)
    assert got == [f"{outside.net}.7", "ok"], got
    why = secnet_json("explain", net.name, web.name, f"{outside.net}.7", "tcp/443")
    assert why["allowed"] and why["rule"] == "web->dns(*.u9.test):tcp/443", why
    assert why["answer"] and why["answer"]["name"].lower().rstrip(".") in (alias, target), why
    why = secnet_json("explain", net.name, web.name, f"{outside.net}.9", "tcp/443")
    assert not why["allowed"] and why["reason"] == "egress denied", why

