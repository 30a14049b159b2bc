"""DNS-name rules end to end: Docker's embedded resolver, a real engine, real packets.

A DNS server (dnspython) and AnyIP echo servers live in a namespace of this
module's own behind a veth pair of the host (10.205.K.53 answers, the names
point into 10.206.K.0/24); containers get ``--dns 10.205.K.53``, so their
queries go to 127.0.0.11 and Docker forwards them from the container's
namespace: the answers come back through secnet's bridge. Some tests ask the
server directly instead. Nothing leaves the machine. Every test runs on
every backend (``backend`` fixture).
"""
from __future__ import annotations

import json
import subprocess

import pytest

import helpers as h
from dns_helpers import PY, Outside, check
from vis_helpers import secnet_json, tcp_try

pytestmark = pytest.mark.usefixtures("backend")


@pytest.fixture(autouse=True)
def daemon_learns(plugin_up):
    """The daemon runs DNS learning (a missing NFQUEUE binding is a failure, not a skip)."""
    assert "dns" in secnet_json("status"), "the daemon does not learn from DNS answers"


@pytest.fixture(scope="module")
def outside():
    o = Outside()
    try:
        o.create()
        zone = o.server
        zone.add("api.e2e.test", "A", 300, f"{o.net}.5")
        zone.add("other.e2e.test", "A", 300, f"{o.net}.6")
        zone.add("a.wild.e2e.test", "A", 300, f"{o.net}.8")
        zone.add("wild.e2e.test", "A", 300, f"{o.net}.9")
        zone.add("alias.e2e.test", "CNAME", 300, "edge.cdn.e2e.test.")
        zone.add("edge.cdn.e2e.test", "CNAME", 300, "e1.cdn.e2e.test.")
        zone.add("short.e2e.test", "A", 2, f"{o.net}.10")
        zone.add("direct.e2e.test", "A", 300, f"{o.net}.11")
        zone.add("e1.cdn.e2e.test", "A", 300, f"{o.net}.7")
        for i in range(100):
            zone.add(f"n{i}.many.e2e.test", "A", 300, f"{o.net}.{20 + i}")
        yield o
    finally:
        o.destroy()


def setup(make_network, run_container, outside, rules: str):
    net = make_network("sn-dns", opts={"secnet.egress": "deny", "secnet.allow": (
        f"{rules} *->{outside.dns}:udp/53 *->{outside.dns}:tcp/53")})
    extra = ("--dns", outside.dns)
    web = run_container(net, "web", labels={"secnet.segment": "web"}, extra=extra)
    api = run_container(net, "api", labels={"secnet.segment": "api"}, extra=extra)
    return net, web, api


def test_names_wildcards_cname_and_segments(make_network, run_container, outside):
    rules = ("web->dns(api.e2e.test):tcp/443 web->dns(*.wild.e2e.test):tcp/443 "
             "web->dns(alias.e2e.test):tcp/443")
    net, web, api = setup(make_network, run_container, outside, rules)
    got = check(web, ["api.e2e.test", "other.e2e.test", "a.wild.e2e.test", "wild.e2e.test",
                      "alias.e2e.test"])
    assert {n: o for n, (_a, o) in got.items()} == {
        "api.e2e.test": "ok", "other.e2e.test": "timeout", "a.wild.e2e.test": "ok",
        "wild.e2e.test": "timeout", "alias.e2e.test": "ok"}
    assert check(api, ["api.e2e.test"])["api.e2e.test"][1] == "timeout"   # not api's answer
    show = secnet_json("show", net.name)
    learned = {(a["segment"], a["address"]) for r in show["dns"] for a in r["addresses"]}
    assert learned == {("web", f"{outside.net}.5"), ("web", f"{outside.net}.8"), ("web", f"{outside.net}.7")}
    counted = {r["rule"]: r["packets"] for r in show["rules"]}
    assert [counted[r] for r in rules.split()] == [1, 1, 1], counted   # each its own flow (U11-F3)
    why = secnet_json("explain", net.name, web.name, f"{outside.net}.5", "tcp/443")
    assert why["allowed"] and why["rule"] == "web->dns(api.e2e.test):tcp/443"
    assert why["answer"]["name"] == "api.e2e.test"


def test_first_connection_after_the_answer_never_races(make_network, run_container, outside):
    _net, web, _api = setup(make_network, run_container, outside, "web->dns(*.many.e2e.test):tcp/443")
    got = check(web, [f"n{i}.many.e2e.test" for i in range(100)])
    assert [n for n, (_a, o) in got.items() if o != "ok"] == []


@pytest.mark.exclusive
def test_learned_addresses_survive_a_daemon_restart(make_network, run_container, outside):
    net, web, _api = setup(make_network, run_container, outside, "web->dns(api.e2e.test):tcp/443")
    assert check(web, ["api.e2e.test"])["api.e2e.test"][1] == "ok"
    h.plugin_restart()
    assert subprocess.run(["nsenter", f"--net={web.sandbox}", PY, "-c",
                           "import socket; s=socket.create_connection(('%s.5', 443), 2); s.sendall(b'x');"
                           " assert s.recv(4) == b'x'" % outside.net], timeout=30).returncode == 0
    show = secnet_json("show", net.name)
    assert [a["address"] for r in show["dns"] for a in r["addresses"]] == [f"{outside.net}.5"]


def test_a_directly_queried_server_teaches_too(make_network, run_container, outside):
    """... and `secnet show` counts the flows a DNS rule opened for that rule only."""
    used, unused = "*->dns(direct.e2e.test):tcp/443", "web->dns(other.e2e.test):tcp/8443"
    net, web, api = setup(make_network, run_container, outside, f"{used} {unused}")
    assert check(web, ["direct.e2e.test"], server=outside.dns)["direct.e2e.test"][1] == "ok"
    assert check(api, ["other.e2e.test"], server=outside.dns)["other.e2e.test"][1] == "timeout"
    rows = {r["rule"]: r for r in secnet_json("show", net.name)["rules"]}
    assert rows[used]["packets"] >= 1 and rows[used]["bytes"] > 0, rows
    assert (rows[unused]["packets"], rows[unused]["bytes"]) == (0, 0), rows


@pytest.mark.exclusive
def test_ttl_expiry_ends_new_flows_not_open_ones(make_network, run_container, outside, monkeypatch):
    """The 60 s floor, lowered for this test only (SECNET_DNS_MIN_TTL reaches the
    daemon through scripts/plugin.sh's environment)."""
    monkeypatch.setenv("SECNET_DNS_MIN_TTL", "1")
    h.plugin_restart(kill=False)
    try:
        _net, web, _api = setup(make_network, run_container, outside, "web->dns(short.e2e.test):tcp/443")
        code = ("import json, socket, sys, time\n"
                "import dns.message, dns.query\n"
                "r = dns.query.udp(dns.message.make_query('short.e2e.test', 'A'), '127.0.0.11', timeout=3)\n"
                "addr = r.answer[0][0].address\n"
                "held = socket.create_connection((addr, 443), 2)\n"
                "time.sleep(4)\n"
                "try:\n"
                "    socket.create_connection((addr, 443), 1); new = 'ok'\n"
                "except OSError:\n"
                "    new = 'denied'\n"
                "held.sendall(b'x'); print(json.dumps([new, held.recv(4).decode()]))\n")
        res = h.run(["nsenter", f"--net={web.sandbox}", PY, "-c", code], timeout=60)
        assert json.loads(res.stdout) == ["denied", "x"]
    finally:
        monkeypatch.delenv("SECNET_DNS_MIN_TTL")
        h.plugin_restart(kill=False)


def test_show_counts_the_flows_a_dns_rule_opened(make_network, run_container, outside):
    """`secnet show` gives every rule its packet and byte counters, DNS-name rules too
    (user5 finding F1: they stayed 0 while CIDR rules counted)."""
    rule = "web->dns(api.e2e.test):tcp/443"
    net, web, _api = setup(make_network, run_container, outside, rule)
    for _ in range(3):
        assert check(web, ["api.e2e.test"])["api.e2e.test"][1] == "ok"
    counters = {r["rule"]: r["packets"] for r in secnet_json("show", net.name)["rules"]}
    assert counters[rule] > 0, f"{rule} opened 3 flows, show counts {counters}"


#: a DNS server for a container's namespace: CNAME www.e2e.test -> api2.e2e.test -> argv[1],
#: the first owner name in the question's case (as real servers answer)
RESOLVER_SRC = r'''
import socket, sys
import dns.message, dns.rrset
zone = {"www.e2e.test.": ("CNAME", "api2.e2e.test."), "api2.e2e.test.": ("A", sys.argv[1])}
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 53))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(4096)
    q = dns.message.from_wire(data)
    r = dns.message.make_response(q)
    owner = q.question[0].name.to_text()
    while owner.lower() in zone:
        kind, value = zone[owner.lower()]
        r.answer.append(dns.rrset.from_text(owner, 300, "IN", kind, value))
        owner = value if kind == "CNAME" else ""
    s.sendto(r.to_wire(), peer)
'''


def test_a_resolver_container_of_the_same_network_teaches_too(make_network, run_container, outside):
    """U11-F4: ``web`` asks a DNS server in a container of its own network (segment
    ``resolver``) for an upper-case name behind a CNAME; the answer crosses the bridge
    between two members (eBPF: DNS flows are never redirected veth to veth) and teaches."""
    net = make_network("sn-dns", opts={"secnet.egress": "deny", "secnet.allow":
                                       "web->dns(www.e2e.test):tcp/443 web->resolver:udp/53"})
    web = run_container(net, "web", labels={"secnet.segment": "web"})
    res = run_container(net, "res", labels={"secnet.segment": "resolver"})
    target = f"{outside.net}.12"
    server = subprocess.Popen(["nsenter", f"--net={res.sandbox}", PY, "-c", RESOLVER_SRC, target],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready"
        assert check(web, ["WWW.E2E.TEST"], server=res.ip)["WWW.E2E.TEST"] == (target, "ok")
        show = secnet_json("show", net.name)
        assert {(r["rule"], a["address"]) for r in show["dns"] for a in r["addresses"]} == {
            ("web->dns(www.e2e.test):tcp/443", target)}
    finally:
        server.kill()
        server.wait(10)


def test_a_freed_identity_given_to_a_new_segment_carries_no_answer(make_network, run_container, outside):
    """Issue 12: with a ``*`` DNS rule, segment ``old`` learns api.e2e.test and its only
    container goes; ``fresh``, the next new segment, gets old's identity (the lowest
    free) and reaches the address only after an answer of its own."""
    net = make_network("sn-dns", opts={"secnet.egress": "deny", "secnet.allow": (
        f"*->dns(api.e2e.test):tcp/443 *->{outside.dns}:udp/53 *->{outside.dns}:tcp/53")})
    extra = ("--dns", outside.dns)
    old = run_container(net, "old", labels={"secnet.segment": "old"}, extra=extra)
    assert check(old, ["api.e2e.test"])["api.e2e.test"][1] == "ok"
    h.docker("rm", "-f", old.name)
    fresh = run_container(net, "fresh", labels={"secnet.segment": "fresh"}, extra=extra)
    assert check(fresh, ["other.e2e.test"])["other.e2e.test"][1] == "timeout"   # enforced: DNS passes
    assert not tcp_try(fresh, f"{outside.net}.5", 443, timeout=1.0)            # old's answer: not fresh's
    assert check(fresh, ["api.e2e.test"])["api.e2e.test"][1] == "ok"
