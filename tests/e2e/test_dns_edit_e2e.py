"""Removing a DNS-name rule ends the flows it admitted (user7 finding U7-F1).

Contract (Allow rules): "When a rule change ... is in force, no flow that the new
state does not allow goes on: established connections are cut". A segment with two
dns(...) rules on the same service (`web->dns(api…):tcp/443` and
`web->dns(other…):tcp/443`, the usual case) opens a flow to other's address; after
`secnet policy NET remove 'web->dns(other…):tcp/443'` returns 0 a new flow there is
denied, but the open one went on: conntrack kept any learned flow whose segment still
had *some* dns(...) rule for the service. Now a learned flow goes on only while a rule
whose answers taught its address is there (plugin/kernel/conntrack.py dns_rule_by, the
eBPF program's conntrack: plugin/enforce/ebpf/fqdn.py end_learned_flows): cut when
only the removed rule taught it, kept when another remaining rule taught the same
address too. With no other DNS rule on that service the flow is cut (the control case).
Same DNS server and echo namespace as test_dns_e2e.py (dns_helpers.Outside).
"""
from __future__ import annotations

import json
import subprocess

import pytest

from dns_helpers import PY, Outside
import seg_helpers as sh

pytestmark = pytest.mark.usefixtures("backend")

# resolve each NAME through Docker's resolver, hold a connection to the last one's
# address, then on "go" (stdin) say whether it still carries data
HOLD_SRC = r'''
import socket, sys
import dns.message, dns.query
for name in sys.argv[1:]:
    r = dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.11", timeout=3)
    addr = [rd.address for rrset in r.answer for rd in rrset if hasattr(rd, "address")][0]
s = socket.create_connection((addr, 443), 2); s.settimeout(2)
s.sendall(b"x"); assert s.recv(4) == b"x"
print("held", flush=True)
sys.stdin.readline()
try:
    s.sendall(b"y"); print("alive" if s.recv(4) == b"y" else "garbled", flush=True)
except OSError:
    print("cut", flush=True)
'''


@pytest.fixture(scope="module")
def outside():
    o = Outside()
    try:
        o.create()
        o.server.add("api.e2e.test", "A", 300, f"{o.net}.5")
        o.server.add("other.e2e.test", "A", 300, f"{o.net}.6")
        o.server.add("alias.e2e.test", "A", 300, f"{o.net}.5")     # api's address too
        yield o
    finally:
        o.destroy()


def held_after_removal(make_network, run_container, outside, rules: str, removed: str,
                       names=("other.e2e.test",), last=6) -> str:
    """Resolve ``names`` in web, hold a connection to the last one's address (``.last``),
    remove rule ``removed``: "cut", or "alive" when the flow goes on."""
    net = make_network("sn-dnsed", opts={"secnet.egress": "deny", "secnet.allow": (
        f"{rules} *->{outside.dns}:udp/53")})
    web = run_container(net, "web", labels={"secnet.segment": "web"}, extra=("--dns", outside.dns))
    proc = subprocess.Popen(["nsenter", f"--net={web.sandbox}", PY, "-c", HOLD_SRC, *names],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        res = sh.secnet("policy", net.name, "remove", removed)
        assert res.returncode == 0, res.stderr
        new = sh.secnet("--json", "explain", net.name, web.name, f"{outside.net}.{last}", "tcp/443")
        kept = len(names) > 1   # the new state still allows the shared address (api taught it)
        assert json.loads(new.stdout)["allowed"] is kept, new.stdout
        out, _ = proc.communicate("go\n", timeout=30)
        return out.strip()
    finally:
        proc.kill()


def test_removing_the_only_dns_rule_of_a_service_cuts_its_flows(make_network, run_container, outside):
    rule = "web->dns(other.e2e.test):tcp/443"
    assert held_after_removal(make_network, run_container, outside, rule, rule) == "cut"


def test_removing_one_of_two_dns_rules_on_a_service_cuts_the_flows_it_admitted(
        make_network, run_container, outside):
    removed = "web->dns(other.e2e.test):tcp/443"
    rules = f"web->dns(api.e2e.test):tcp/443 {removed}"
    assert held_after_removal(make_network, run_container, outside, rules, removed) == "cut"


def test_removing_one_of_two_dns_rules_keeps_a_flow_the_other_rule_taught_too(
        make_network, run_container, outside):
    removed = "web->dns(alias.e2e.test):tcp/443"
    rules = f"web->dns(api.e2e.test):tcp/443 {removed}"
    names = ("api.e2e.test", "alias.e2e.test")   # one address, taught by both rules
    assert held_after_removal(make_network, run_container, outside, rules, removed, names, last=5) == "alive"
