"""eBPF counts a flow for the same rules as nftables (U7-F2): the CIDR map's slots
(cidrslots) and the policy map's pieces, judged against the nftables backend's
element attribution.

The eBPF side is modelled by its definition: the LPM trie's longest prefix
(test_ebpf_maps.lpm), the program's first matching slot (bpf/lib/policy.h
``cidr_lookup``), the count key it writes, and the reader (count_target,
counters.spread / spread_cidrs). The nftables side: the elements
plugin.enforce.nftables.elements computes, looked up in the order of the
ruleset's chains, each element counted to its attribution.
"""
from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings, strategies as st

from plugin.enforce.ebpf import cidrslots, maps
from plugin.enforce.ebpf.backend import group_index
from plugin.enforce.ebpf.counters import spread, spread_cidrs
from plugin.enforce.nftables.elements import PolicyElements
from segmentation.compiler import verdict
from segmentation.policymap import CidrEntry, PolicyEntry, PolicyMap, Settings
from test_ebpf_maps import lookup_cidr, lookup_policy

NUMBER = {"tcp": 6, "udp": 17}


def _hits(element: tuple, point: tuple) -> bool:
    return all(f == p if not isinstance(f, tuple) else f[0] <= p <= f[1] for f, p in zip(element, point))


def nft_counted(attribution: dict, lookups: list):
    """The attribution of the first element any of ``lookups`` ((set, point)) hits, or None."""
    for name, point in lookups:
        for element, keys in attribution.get(name, {}).items():
            if len(element) == len(point) and _hits(element, point):
                return set(keys)
    return None


# --- CIDR rules ---------------------------------------------------------------------------

def _addr(text: str) -> int:
    return int(ipaddress.ip_address(text))


def nft_cidr_lookups(direction: str, identity: int, addr: str, proto: str, port: int) -> list:
    fam, a = ipaddress.ip_address(addr).version, _addr(addr)
    pre = f"{'eg' if direction == 'egress' else 'in'}{fam}"
    ident = lambda *rest: (identity, a) + rest if direction == "egress" else (a, identity) + rest  # noqa: E731
    out = [(pre, ident(NUMBER[proto], port))] if proto in NUMBER else []
    if proto == "icmp":
        out.append((pre + "_icmp", ident()))
    return out + [(pre + "_any", ident())]


def ebpf_cidr_counted(entries: list, direction: str, identity: int, addr: str, proto: str, port: int,
                      content=None):
    """What the program and the reader count one new flow to (None: no slot allows it).
    ``content``: maps.cidr_content(entries), when the caller made it once for many flows
    (it is most of the cost: the map is the same for every probe of one example)."""
    content = maps.cidr_content(entries) if content is None else content
    for code, plen, lo, hi, net in lookup_cidr(content, direction, identity, addr):
        if code and (code != maps.L4[proto] or not lo <= port <= hi):
            continue
        fam = ipaddress.ip_address(addr).version
        key = maps.COUNT_KEY.pack(maps.CK_CIDR, maps.DIRECTIONS[direction], code, fam, identity, 0, lo, hi,
                                  plen, net)
        target = maps.count_target(key, entries)
        return set(spread_cidrs({target: (1, 60)}, entries))
    return None


V4 = ["10.1.0.0/16", "10.1.2.0/24", "10.1.2.0/25", "10.1.2.7/32", "10.9.0.0/16"]
V6 = ["fd00:1::/48", "fd00:1:0:2::/64", "fd00:1:0:2::7/128"]
SERVICES = st.sampled_from([("tcp", 1, 65535), ("tcp", 8080, 8080), ("tcp", 8000, 8100), ("tcp", 8080, 9000),
                            ("udp", 53, 53), ("udp", 1, 65535), ("icmp", 0, 0), ("any", 0, 0)])
CIDRS = st.builds(lambda d, i, c, s, r: CidrEntry(d, i, ipaddress.ip_network(c).version, c, *s, r),
                  st.sampled_from(["egress", "ingress"]), st.sampled_from([256, 257]),
                  st.sampled_from(V4 + V6), SERVICES, st.sampled_from(["a", "b"]))
PROBES = [(a, p, port) for a in ("10.1.2.7", "10.1.2.9", "10.1.2.200", "10.1.9.9", "10.9.0.1", "10.8.0.1",
                                 "fd00:1:0:2::7", "fd00:1:0:2::8", "fd00:1:0:3::1")
          for p, port in (("tcp", 8080), ("tcp", 8050), ("tcp", 8500), ("tcp", 22), ("udp", 53), ("icmp", 0))]


@given(st.lists(CIDRS, max_size=9))
@settings(max_examples=120, deadline=None)
def test_cidr_flows_count_for_the_rules_nftables_counts(raw):
    entries = sorted({e.key: e for e in raw}.values())
    attribution = PolicyElements.of(entries).attribution()
    content = maps.cidr_content(entries)
    for direction in ("egress", "ingress"):
        for addr, proto, port in PROBES:
            want = nft_counted(attribution, nft_cidr_lookups(direction, 256, addr, proto, port))
            got = ebpf_cidr_counted(entries, direction, 256, addr, proto, port, content)
            assert got == want, (direction, addr, proto, port)


def test_a_host_inside_a_wider_rule_counts_for_both_rules():
    """The U7-F2 case: web->OUT/24:tcp/8080 and web->OUT_HOST/32:tcp, v4 and v6, both directions."""
    for direction in ("egress", "ingress"):
        for fam, net, host, other in ((4, "10.1.2.0/24", "10.1.2.7", "10.1.2.8"),
                                      (6, "fd00:1:0:2::/64", "fd00:1:0:2::7", "fd00:1:0:2::8")):
            wide = CidrEntry(direction, 256, fam, net, "tcp", 8080, 8080, "wide")
            narrow = CidrEntry(direction, 256, fam, f"{host}/{32 if fam == 4 else 128}", "tcp", 1, 65535, "narrow")
            both = [wide, narrow]
            assert ebpf_cidr_counted(both, direction, 256, host, "tcp", 8080) == {wide.key, narrow.key}
            assert ebpf_cidr_counted(both, direction, 256, host, "tcp", 22) == {narrow.key}
            assert ebpf_cidr_counted(both, direction, 256, other, "tcp", 8080) == {wide.key}
            assert ebpf_cidr_counted(both, direction, 256, other, "tcp", 22) is None


def test_slots_of_a_prefix_pieces_first_then_entries_then_any():
    net = ipaddress.ip_network("10.1.2.7/32")
    wide = CidrEntry("egress", 256, 4, "10.1.2.0/24", "tcp", 8000, 8100, "w")
    narrow = CidrEntry("egress", 256, 4, "10.1.2.7/32", "tcp", 8080, 9000, "n")
    anything = CidrEntry("egress", 256, 4, "10.1.0.0/16", "any", 0, 0, "a")
    assert cidrslots.prefix_slots(net, [anything, narrow, wide]) == [
        ("tcp", 32, 8080, 8100, "10.1.2.7"), ("tcp", 24, 8000, 8100, "10.1.2.0"),
        ("tcp", 32, 8080, 9000, "10.1.2.7"), ("any", 16, 0, 0, "10.1.0.0")]
    # an entry another one covers entirely owns no port alone: no slot of its own
    whole = CidrEntry("egress", 256, 4, "10.1.0.0/16", "tcp", 1, 65535, "all")
    assert cidrslots.prefix_slots(net, [whole, narrow]) == [
        ("tcp", 32, 8080, 9000, "10.1.2.7"), ("tcp", 16, 1, 65535, "10.1.0.0")]


def test_pieces_cut_where_the_owners_change():
    assert cidrslots.pieces({"a": (1, 10), "b": (5, 20), "c": (30, 30)}.items()) == [
        (1, 4, {"a"}), (5, 10, {"a", "b"}), (11, 20, {"b"}), (30, 30, {"c"})]


def test_spread_cidrs_gives_a_piece_to_every_owner_and_leaves_others():
    wide = CidrEntry("egress", 256, 4, "10.1.2.0/24", "tcp", 8080, 8080, "w")
    narrow = CidrEntry("egress", 256, 4, "10.1.2.7/32", "tcp", 1, 65535, "n")
    piece = ("egress", 256, 4, "10.1.2.7/32", "tcp", 8080, 8080)
    gone = ("ingress", 256, 4, "10.5.0.0/16", "udp", 53, 53)
    policy = (256, 257, "tcp", 80, 80)
    got = spread_cidrs({piece: (2, 120), narrow.key: (1, 60), wide.key: (4, 240), gone: (8, 1), policy: (16, 2)},
                       [wide, narrow])
    assert got == {wide.key: (6, 360), narrow.key: (3, 180), gone: (8, 1), policy: (16, 2)}
    once = spread_cidrs({piece: (2, 120), narrow.key: (1, 60), wide.key: (4, 240), gone: (8, 1)},
                        [wide, narrow], first=True)   # for pair totals: the piece to one owner
    assert once == {wide.key: (6, 360), narrow.key: (1, 60), gone: (8, 1)}   # wide.key sorts first
    assert sum(p for p, _b in once.values()) == 2 + 1 + 4 + 8


def test_too_many_pieces_for_one_prefix_is_a_clear_error():
    """Nine services (one slot each before) in a chain of overlaps: 8 shared pieces + 9 own ports."""
    many = [CidrEntry("egress", 256, 4, "10.0.0.0/8", "tcp", p, p + 15, f"r{p}") for p in range(10, 100, 10)]
    with pytest.raises(maps.EncodeError, match="port pieces"):
        maps.cidr_content(many)


# --- east-west rules ----------------------------------------------------------------------

def nft_policy_lookups(src: int, dst: int, proto: str, port: int) -> list:
    if proto == "icmp":
        return [("pol_icmp", (src, dst)), ("pol_any", (src, dst))]
    n = NUMBER[proto]
    return [("pol_port", (src, dst, n, port)), ("pol_range", (src, dst, n, port)), ("pol_proto", (src, dst, n)),
            ("pol_any", (src, dst))]


def ebpf_policy_counted(entries: list, src: int, dst: int, proto: str, port: int):
    found = lookup_policy(maps.policy_content(entries), src, dst, proto, port)
    if found is None:
        return None
    lo, hi, code = maps.POLICY_VAL.unpack(found)[:3]
    key = maps.COUNT_KEY.pack(maps.CK_POLICY, 0, code, 0, src, dst, lo, hi, 0, bytes(16))
    return set(spread({maps.count_target(key): (1, 60)}, group_index(entries)))


POLICY = st.builds(lambda d, s, r: PolicyEntry(256, d, *s, r), st.sampled_from([256, 257]),
                   st.sampled_from([("tcp", 0, 65535), ("tcp", 8080, 8080), ("tcp", 8000, 8100),
                                    ("tcp", 8080, 9000), ("tcp", 8100, 8100), ("udp", 53, 53),
                                    ("icmp", 0, 0), ("any", 0, 0)]), st.sampled_from(["a", "b"]))


@given(st.lists(POLICY, max_size=7))
@settings(max_examples=120, deadline=None)
def test_east_west_flows_count_for_the_rules_nftables_counts(raw):
    entries = sorted(set(raw))
    attribution = PolicyElements.of(entries).attribution()
    for dst in (256, 257):
        for proto, port in (("tcp", 8080), ("tcp", 8050), ("tcp", 8100), ("tcp", 8500), ("tcp", 22),
                            ("udp", 53), ("icmp", 0)):
            want = nft_counted(attribution, nft_policy_lookups(256, dst, proto, port))
            assert ebpf_policy_counted(entries, 256, dst, proto, port) == want, (dst, proto, port)


def test_one_port_and_every_port_count_alone_as_in_nftables():
    """U7-O1's rules: web->api:tcp/8080 and web->*:tcp; a flow to 8080 counts for the first."""
    exact, whole = PolicyEntry(256, 257, "tcp", 8080, 8080, "e"), PolicyEntry(256, 257, "tcp", 0, 65535, "w")
    ranged = PolicyEntry(256, 257, "tcp", 8000, 8100, "r")
    assert ebpf_policy_counted([exact, whole], 256, 257, "tcp", 8080) == {exact.key}
    assert ebpf_policy_counted([exact, whole, ranged], 256, 257, "tcp", 8050) == {ranged.key}
    assert ebpf_policy_counted([exact, whole, ranged], 256, 257, "tcp", 22) == {whole.key}


# --- explain names a rule the counters count (U7-O1) ------------------------------------------

def _named(entries: list) -> list:
    """The entries with a rule text of their own (``rule`` is the entry's key)."""
    return sorted({e._replace(rule=str(e.key)) if isinstance(e, PolicyEntry) else
                   CidrEntry(*e.key, rule=str(e.key)) for e in entries})


@given(st.lists(POLICY, max_size=7))
@settings(max_examples=80, deadline=None)
def test_explain_names_first_an_east_west_rule_the_counters_count(raw):
    entries = _named(raw)
    pm = PolicyMap({"web": 256, "api": 257}, frozenset(entries))
    for dst, seg in ((256, "web"), (257, "api")):
        for proto, port in (("tcp", 8080), ("tcp", 8050), ("tcp", 22), ("udp", 53), ("icmp", None)):
            counted = ebpf_policy_counted(entries, 256, dst, proto, port or 0)
            found = verdict(pm, ("segment", "web"), ("segment", seg), proto, port)
            assert found.allowed == (counted is not None)
            if counted:
                assert found.origin in {str(k) for k in counted}
                assert {found.origin, *found.also} == {e.rule for e in entries if e.src == 256 and e.dst == dst
                                                       and e.service.matches(proto, port)}


@given(st.lists(CIDRS, max_size=7))
@settings(max_examples=80, deadline=None)
def test_explain_names_first_a_cidr_rule_the_counters_count(raw):
    entries = _named(raw)
    pm = PolicyMap({"web": 256, "api": 257}, frozenset(), frozenset(entries),
                   Settings(egress="deny"))
    content = maps.cidr_content(entries)
    for addr, proto, port in PROBES:
        counted = ebpf_cidr_counted(entries, "egress", 256, addr, proto, port, content)
        found = verdict(pm, ("segment", "web"), ("addr", addr), proto, port if proto != "icmp" else None)
        assert found.allowed == (counted is not None)
        if counted:
            assert found.origin in {str(k) for k in counted}


def test_explain_of_u7_o1_names_the_port_rule_and_the_others():
    exact = PolicyEntry(256, 257, "tcp", 8080, 8080, "web->api:tcp/8080")
    ranged = PolicyEntry(256, 257, "tcp", 8000, 8100, "web->api:tcp/8000-8100")
    whole = PolicyEntry(256, 257, "tcp", 0, 65535, "web->*:tcp")
    pm = PolicyMap({"web": 256, "api": 257}, frozenset({exact, ranged, whole}))
    found = verdict(pm, ("segment", "web"), ("segment", "api"), "tcp", 8080)
    assert (found.origin, found.also) == ("web->api:tcp/8080", ("web->api:tcp/8000-8100", "web->*:tcp"))
    assert verdict(pm, ("segment", "web"), ("segment", "api"), "tcp", 8050).origin == "web->api:tcp/8000-8100"
    assert verdict(pm, ("segment", "web"), ("segment", "api"), "tcp", 22).origin == "web->*:tcp"
