"""`secnet explain`: what the user types, resolved against saved endpoints, judged by verdict."""
from __future__ import annotations

import dataclasses

import pytest

from plugin.observe.explain import explain, parse_service, resolve_end
from plugin.driver.state import EndpointRecord
from segmentation.compiler import compile_policy, verdict
from segmentation.errors import PolicyError
from segmentation.model import Member
from segmentation.options import parse_network_options

NID = "cd" * 32


def ep(n, name, segment, ip4, ip6=None, quarantine=None):
    return EndpointRecord(id=str(n) * 64, network_id=NID, veth_host=f"snv{n}", veth_peer=f"snp{n}",
                          mac="02:00:00:00:00:01", ipv4=f"{ip4}/24", ipv6=f"{ip6}/64" if ip6 else None,
                          segment=segment, quarantine=quarantine, container=name,
                          container_id=f"{n}" * 12 + "f" * 52)


ENDPOINTS = [ep(1, "web1", "web", "10.224.0.2", "fd00:224::2"), ep(2, "api1", "api", "10.224.0.3"),
             ep(3, "db1", "db", "10.224.0.4"), ep(4, "bad1", None, "10.224.0.5", quarantine="empty label"),
             ep(5, "new1", None, "10.224.0.6")]


def compiled(rules="web->api:tcp/8080 api->db:tcp/5432 *->db:icmp web->[2001:db8::/32]:tcp/443",
             egress="allow"):
    options = parse_network_options({"secnet.allow": rules, "secnet.egress": egress}, ipv6=True)
    members = [Member(e.id, e.segment, e.ipv4.split("/")[0], None, e.quarantine) for e in ENDPOINTS]
    return compile_policy(options, members)


@pytest.mark.parametrize("text, want", [
    ("tcp/8080", ("tcp", 8080)), ("UDP/53", ("udp", 53)), ("icmp", ("icmp", None)),
    ("tcp", ("tcp", None)), (" udp/1 ", ("udp", 1)), ("tcp/65535", ("tcp", 65535)), ("ANY", ("any", None)),
])
def test_parse_service(text, want):
    assert parse_service(text) == want


@pytest.mark.parametrize("text", ["", "sctp/1", "tcp/0", "tcp/65536", "tcp/80-90", "icmp/8",
                                  "tcp/http", "any/80", "tcp/-1", "tcp/", "icmp/", "tcp/\u00b2", "tcp/\u0661\u0662"])
def test_bad_services_are_one_line_errors(text):
    with pytest.raises(PolicyError) as err:
        parse_service(text)
    assert "\n" not in str(err.value)


def test_any_asks_about_every_protocol_at_once():
    """U25-F2: ``any`` as in a rule: allowed only when tcp and udp (every port) and icmp
    are; the rules that allow them are named."""
    c = compiled(rules="monitor->*  web->api:tcp/8080 web->api:udp web->api:icmp web->api:tcp")
    assert explain(c, ENDPOINTS, "monitor", "db1", "any")["allowed"]
    assert explain(c, ENDPOINTS, "monitor", "db1", "any")["rule"] == "monitor->*"
    both = explain(c, ENDPOINTS, "web1", "api1", "any")
    assert both["allowed"] and {both["rule"], *both["also"]} == {"web->api:tcp", "web->api:udp", "web->api:icmp"}
    denied = explain(c, ENDPOINTS, "api1", "db1", "any")
    assert not denied["allowed"] and denied["reason"].startswith("not every protocol: tcp: ")
    partly = explain(compiled(), ENDPOINTS, "web1", "db1", "any")   # *->db:icmp only
    assert not partly["allowed"] and partly["reason"].startswith("not every protocol: tcp")


def test_resolve_by_container_name_id_address_and_segment():
    c = compiled()
    assert resolve_end("web1", ENDPOINTS, c)[0] == ("segment", "web")
    assert resolve_end("2222222222", ENDPOINTS, c)[0] == ("segment", "api")      # container id prefix
    assert resolve_end("10.224.0.4", ENDPOINTS, c)[0] == ("segment", "db")      # a member's address
    assert resolve_end("[fd00:224::2]", ENDPOINTS, c)[0] == ("segment", "web")
    end, desc = resolve_end("db", ENDPOINTS, c)
    assert end == ("segment", "db") and desc["kind"] == "segment"
    end, desc = resolve_end("10.224.0.99", ENDPOINTS, c)                        # not a member: outside
    assert end == ("addr", "10.224.0.99") and desc["outside"]
    assert resolve_end("bad1", ENDPOINTS, c)[0] == ("quarantined", "empty label")


def test_unknown_names_are_errors():
    with pytest.raises(PolicyError, match="no container, segment or address"):
        resolve_end("nosuch", ENDPOINTS, compiled())


def test_allowed_names_the_rule_denied_the_reason():
    c = compiled()
    yes = explain(c, ENDPOINTS, "web1", "api1", "tcp/8080")
    assert yes["allowed"] and yes["rule"] == "web->api:tcp/8080"
    no = explain(c, ENDPOINTS, "web1", "db1", "tcp/5432")
    assert not no["allowed"] and no["reason"] == "no rule allows it" and no["rule"] is None
    assert explain(c, ENDPOINTS, "web", "db", "icmp")["rule"] == "*->db:icmp"
    assert explain(c, ENDPOINTS, "web1", "web", "udp/9")["rule"] == "intra"


def test_quarantined_and_pending_containers_are_denied_either_way():
    c = compiled("*->*")
    for src, dst in (("bad1", "db1"), ("db1", "bad1")):
        r = explain(c, ENDPOINTS, src, dst, "tcp/80")
        assert not r["allowed"] and r["reason"] == "quarantined: empty label"
    for src, dst in (("new1", "db1"), ("db1", "new1")):
        r = explain(c, ENDPOINTS, src, dst, "tcp/80")
        assert not r["allowed"] and r["reason"].startswith("pending")


def test_outside_addresses_follow_egress_and_cidr_rules():
    c = compiled(egress="deny")
    assert explain(c, ENDPOINTS, "web1", "2001:db8::1", "tcp/443")["allowed"]
    assert explain(c, ENDPOINTS, "web1", "2001:db8::1", "tcp/80")["reason"] == "egress denied"
    assert explain(compiled(), ENDPOINTS, "api1", "192.0.2.1", "udp/53")["allowed"]   # egress=allow
    with pytest.raises(PolicyError):
        explain(c, ENDPOINTS, "192.0.2.1", "192.0.2.2", "tcp/1")


@pytest.mark.parametrize("src", ["web", "api", "db"])
@pytest.mark.parametrize("dst", ["web", "api", "db"])
@pytest.mark.parametrize("service", ["tcp/8080", "tcp/5432", "udp/53", "icmp", "tcp"])
def test_explain_is_verdict(src, dst, service):
    c = compiled()
    proto, port = parse_service(service)
    want = verdict(c, ("segment", src), ("segment", dst), proto, port)
    got = explain(c, ENDPOINTS, src, dst, service)
    assert (got["allowed"], got["reason"]) == (want.allowed, want.reason)


def test_a_renamed_container_answers_to_its_new_name_only():
    renamed = [e.evolve(container="api2") if e.container == "api1" else e for e in ENDPOINTS]
    renamed.append(ep(6, "api1", "db", "10.224.0.7"))    # a new container took the old name
    c = compiled()
    assert resolve_end("api2", renamed, c)[0] == ("segment", "api")
    assert resolve_end("api1", renamed, c)[0] == ("segment", "db")
    assert explain(c, renamed, "web1", "api1", "tcp/8080")["allowed"] is False
    assert explain(c, renamed, "web1", "api2", "tcp/8080")["allowed"] is True


def test_two_endpoints_with_one_name_are_an_error_not_a_guess():
    stale = ENDPOINTS + [ep(7, "api1", "db", "10.224.0.8")]
    with pytest.raises(PolicyError) as err:
        resolve_end("api1", stale, compiled())
    text = str(err.value)
    assert "'api1' names 2 endpoints" in text and "10.224.0.3" in text and "10.224.0.8" in text
    assert "\n" not in text


def test_explain_names_the_rule_the_counters_count_and_the_others(capsys):
    """U7-O1: web->api:tcp/8080 and web->*:tcp both allow web->api tcp/8080; both
    backends count it for the port rule (test_ebpf_counting_parity), explain names it."""
    from plugin.cli.format import print_explain
    c = compiled("web->*:tcp web->api:tcp/8000-8100 web->api:tcp/8080")
    got = explain(c, ENDPOINTS, "web1", "api1", "tcp/8080")
    assert (got["rule"], got["also"]) == ("web->api:tcp/8080", ["web->api:tcp/8000-8100", "web->*:tcp"])
    print_explain(got)
    out = capsys.readouterr().out
    assert "  rule: web->api:tcp/8080\n  also allowed by: web->api:tcp/8000-8100, web->*:tcp\n" in out
    assert explain(c, ENDPOINTS, "web1", "api1", "tcp/9000")["also"] == []


def test_a_members_own_link_local_address_resolves_to_it():
    """U10-F4: the EUI-64 link-local address of its MAC is one of a member's addresses."""
    web = dataclasses.replace(ep(6, "web2", "web", "10.224.0.7"), mac="02:42:0a:e0:00:07")
    c = compiled()
    for text in ("fe80::42:aff:fee0:7", "fe80::42:aff:fee0:7%eth0", "[fe80::42:aff:fee0:7]"):
        end, desc = resolve_end(text, ENDPOINTS[1:] + [web], c)
        assert end == ("segment", "web") and desc["container"] == "web2", text
    end, desc = resolve_end("fe80::1", [web], c)                      # another scheme: nobody's
    assert end == ("addr", "fe80::1") and desc["outside"]
    assert explain(c, ENDPOINTS[1:] + [web], "fe80::42:aff:fee0:7", "api1", "tcp/8080")["allowed"]


def test_a_member_reaching_a_published_port_is_explained_as_east_west(monkeypatch):
    """(U12-F3) explain SRC HOST-ADDRESS tcp/HOSTPORT tells what the datapath does with a
    hairpin: the verdict of SRC -> the container behind the port, on its container port."""
    import plugin.observe.explain as ex
    monkeypatch.setattr(ex, "is_host_address", {"192.0.2.10", "192.0.2.11", "127.0.0.1"}.__contains__)
    eps = [dataclasses.replace(e, ports=(("tcp", "", 18601, 8080), ("udp", "192.0.2.10", 5353, 53)))
           if e.container == "api1" else e for e in ENDPOINTS]
    c = compiled()
    got = explain(c, eps, "web1", "192.0.2.11", "tcp/18601")
    assert (got["allowed"], got["rule"], got["port"], got["dst"]["container"]) == (True, "web->api:tcp/8080", 8080,
                                                                                  "api1")
    assert got["dst"]["hairpin"] == {"address": "192.0.2.11", "port": 18601}
    denied = explain(c, eps, "db1", "192.0.2.10", "tcp/18601")
    assert (denied["allowed"], denied["dst"]["container"], denied["port"]) == (False, "api1", 8080)
    assert explain(c, eps, "db1", "192.0.2.10", "udp/5353")["dst"]["container"] == "api1"   # its own address
    for dst, service in (("192.0.2.11", "udp/5353"), ("127.0.0.1", "tcp/18601"), ("192.0.2.10", "tcp/18602")):
        assert "hairpin" not in explain(c, eps, "db1", dst, service)["dst"], (dst, service)


# U13-F2: a container named like a segment (here container "web" in segment api)
NAMESAKE = ENDPOINTS + [ep(8, "web", "api", "10.224.0.9")]


def test_a_name_that_is_a_container_and_a_segment_is_an_error_listing_both():
    with pytest.raises(PolicyError) as err:
        explain(compiled(), NAMESAKE, "api", "web", "tcp/8080")
    text = str(err.value)
    assert "'web' names both container web (segment api, 10.224.0.9) and segment web" in text, text
    assert "container:web or segment:web" in text and "\n" not in text
    with pytest.raises(PolicyError, match="names both"):    # as a source too
        resolve_end("web", NAMESAKE, compiled())


def test_segment_and_container_prefixes_choose_the_meaning():
    c = compiled()
    assert resolve_end("segment:web", NAMESAKE, c)[0] == ("segment", "web")
    assert resolve_end("container:web", NAMESAKE, c)[0] == ("segment", "api")
    assert resolve_end("container:web", NAMESAKE, c)[1]["container"] == "web"
    assert explain(c, NAMESAKE, "segment:api", "segment:web", "tcp/8080")["allowed"] is False
    assert explain(c, NAMESAKE, "segment:web", "segment:api", "tcp/8080")["allowed"] is True
    assert explain(c, NAMESAKE, "api1", "container:web", "tcp/8080")["allowed"] is True   # intra api
    assert resolve_end("Segment:db", ENDPOINTS, c)[0] == ("segment", "db")   # the kind in any case
    assert resolve_end("container:api1", ENDPOINTS, c)[0] == ("segment", "api")


def test_a_prefix_that_names_nothing_is_an_error():
    c = compiled()
    with pytest.raises(PolicyError, match="no segment 'web1' in this network"):
        resolve_end("segment:web1", ENDPOINTS, c)
    with pytest.raises(PolicyError, match="no container 'web' in this network"):
        resolve_end("container:web", ENDPOINTS, c)
    with pytest.raises(PolicyError, match="no container '' in this network"):
        resolve_end("container:", ENDPOINTS, c)


def test_an_ipv6_address_is_no_prefix():
    assert resolve_end("fd00:224::2", ENDPOINTS, compiled())[0] == ("segment", "web")


def test_a_free_address_of_the_networks_subnet_is_not_a_member_whatever_a_cidr_covers():
    """U26-F4: `web->10.224.0.0/24` names the host's addresses there, not free ones: the
    datapath drops those as not-member, and explain said allowed."""
    c = compiled(rules="web->10.224.0.0/24:tcp 10.224.0.0/24->db:tcp")
    subnets = {"subnets": ["10.224.0.0/24", "fd00:224::/64"], "gateways": ["10.224.0.1/24", "fd00:224::1/64"]}
    free = explain(c, ENDPOINTS, "web1", "10.224.0.200", "tcp/5432", **subnets)
    assert not free["allowed"] and free["reason"] == "not a member of the network" and free["rule"] is None
    assert explain(c, ENDPOINTS, "10.224.0.200", "db1", "tcp/5432", **subnets)["reason"] == \
        "not a member of the network"
    assert not explain(c, ENDPOINTS, "web1", "fd00:224::99", "any", **subnets)["allowed"]
    # the gateway is the host's: the rule names it; outside the subnets nothing changes
    assert explain(c, ENDPOINTS, "web1", "10.224.0.1", "tcp/5432", **subnets)["allowed"]
    assert explain(c, ENDPOINTS, "web1", "10.224.0.200", "tcp/5432")["allowed"]   # (no subnets given)
