"""HostIP keeps Docker's meaning (U18-F5): `-p 0.0.0.0:P:C` publishes on IPv4 only,
`-p [::]:P:C` on IPv6 only, `-p P:C` on both, as Docker's bridge driver does
(measured by tester user18 on this engine: .u18/s6.sh in FINDINGS-18.md).

Real packets from the host to its own addresses: 127.0.0.1 and the test
network's gateways (the bridge's addresses are the host's; [::1] is never
published, docs/deviations.md). Subnets 10.222.0.0/16-10.223.0.0/16 and
fd00:222::/48 (ns_helpers).
"""
from __future__ import annotations

import pytest

import ns_helpers as n
import seg_helpers as s
from ns_servers import CPORT, servers, start  # noqa: F401  (servers: a fixture)

pytestmark = pytest.mark.usefixtures("backend")  # every test on every datapath


def test_a_wildcard_host_ip_publishes_on_its_own_family_only(make_network, run_container, servers):
    net = n.ns_network(make_network, "sn-ns-fam", ipv6=True)
    base = n.free_port(count=3)
    only4, only6, both = base, base + 1, base + 2
    web = start(run_container, servers, net, "web", "web",
                [f"0.0.0.0:{only4}:{CPORT}", f"[::]:{only6}:{CPORT}", f"{both}:{CPORT}"])
    s.wait_segments(net, {web.name: "web"})
    gw4, gw6 = n.gateway(net, 4), n.gateway(net, 6)
    n.reaches(n.HOST, gw4, both, server=web.name)   # set-up done

    # (address, host port, answered?) from the host
    cases = [("127.0.0.1", only4, True), (gw4, only4, True), (gw6, only4, False),
             ("127.0.0.1", only6, False), (gw4, only6, False), (gw6, only6, True),
             ("127.0.0.1", both, True), (gw4, both, True), (gw6, both, True)]
    results = n.probe_each([(n.HOST, dst, hp, "tcp") for dst, hp, _ok in cases])
    wrong = []
    for (dst, hp, want), r in zip(cases, results):
        if want and not r.ok:
            r = n.probe(n.HOST, dst, hp, timeout=3)   # once more, patiently
        if r.ok != want or (r.ok and r.server != web.name):
            wrong.append(f"host -> {dst} port {hp}: {r} (expected {'an answer' if want else 'nothing'})")
    assert not wrong, "published families:\n" + "\n".join(wrong)

    # the datapath holds the mappings of those families only
    assert {(k, hp) for k, _p, hp, _a, _c in n.pub_map(net, 4)} == {("0.0.0.0/0", only4), ("0.0.0.0/0", both)}
    assert {(k, hp) for k, _p, hp, _a, _c in n.pub_map(net, 6)} == {("::/0", only6), ("::/0", both)}
    # and the held host ports (a second -p of the port fails) are of those families only
    taken = {(hp, fam): not n.port_free(hp, "tcp", addr) for hp in (only4, only6, both)
             for fam, addr in ((4, "0.0.0.0"), (6, "::"))}
    assert taken == {(only4, 4): True, (only4, 6): False, (only6, 4): False, (only6, 6): True,
                     (both, 4): True, (both, 6): True}, taken


def test_show_names_the_host_port_secnet_chose(make_network, run_container, servers):
    """`-p C` (no host port): secnet picks the host port, Docker shows nothing for a remote
    driver (docs/deviations.md), so `secnet show` names it (U18-F1) -- and it is the port
    that answers, in both families; text and JSON alike on both backends."""
    net = n.ns_network(make_network, "sn-ns-show", ipv6=True)
    web = start(run_container, servers, net, "web", "web", [f"{CPORT}"])
    s.wait_segments(net, {web.name: "web"})
    data = s.show_json(net)
    (member,) = [m for seg in data["segments"] for m in seg["members"] if m["container"] == web.name]
    rows = member["ports"]
    assert [(r["proto"], r["host_ip"], r["container_port"]) for r in rows] == \
        [("tcp", "0.0.0.0", CPORT), ("tcp", "::", CPORT)], rows
    hp = rows[0]["host_port"]
    assert hp and rows[1]["host_port"] == hp, rows
    for dst in ("127.0.0.1", n.gateway(net, 4), n.gateway(net, 6)):
        r = n.reaches(n.HOST, dst, hp, server=web.name)
        assert r.port == CPORT, r
    text = s.secnet("show", net.name, check=True).stdout
    (line,) = [x for x in text.splitlines() if x.strip().startswith(web.name)]
    assert line.endswith(f"ports 0.0.0.0:{hp}->{CPORT}/tcp, [::]:{hp}->{CPORT}/tcp"), text


def test_a_family_the_container_lacks_is_refused_at_docker_run(make_network, run_container, servers):
    """`-p [::]:P:C` on an IPv4-only network would publish nothing (Docker's bridge proxies
    IPv6 to IPv4; secnet does not): docker run fails naming it, and nothing is held.
    `-p P:C` there still publishes (on IPv4)."""
    net = n.ns_network(make_network, "sn-ns-fam4", ipv6=False)
    port = n.free_port()
    with n.refused_publish(net, f"[::]:{port}:{CPORT}", "fam4") as res:
        assert res.returncode != 0, f"-p [::]:{port} was accepted on an IPv4-only network"
        assert f"[::]:{port}/tcp" in res.stderr and "no IPv6 address" in res.stderr, res.stderr.strip()
        assert n.pub_map(net, 4) == set() and n.pub_map(net, 6) == set()
        assert n.port_free(port, "tcp", "::"), f"port {port} is held after the refusal"
    web = start(run_container, servers, net, "web", "web", [f"{port}:{CPORT}"])
    s.wait_segments(net, {web.name: "web"})
    n.reaches(n.HOST, "127.0.0.1", port, server=web.name)
    n.reaches(n.HOST, n.gateway(net, 4), port, server=web.name)
