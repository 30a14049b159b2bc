"""maps.py: the eBPF datapath's key and value encoding, checked against a model of the lookups.

The kernel's LPM trie is modelled here by its definition (the longest
stored prefix of the key's bits), independently of maps.py, so that the
encoding is judged by what a lookup would answer.
"""
from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings, strategies as st

from plugin.enforce.backend import Port
from plugin.enforce.ebpf import maps
from plugin.enforce.ebpf.backend import group_index
from segmentation.identities import QUARANTINED
from segmentation.options import NetworkOptions
from segmentation.policymap import FQDN_TAG_KEY, CidrEntry, FqdnEntry, PolicyEntry, allowing, compile_policy_map
from segmentation.rules import parse_rules


def bits(data: bytes) -> str:
    return "".join(f"{b:08b}" for b in data)


def lpm(content: dict, key_data: bytes, version: int = 0):
    """The value of the longest stored prefix of ``key_data`` in ``{(plen, data): value}``
    (content without its version byte, which the prefix lengths count)."""
    best = None
    key = bits(bytes([version]) + key_data)
    for (plen, data), value in content.items():
        if bits(bytes([version]) + data)[:plen] == key[:plen] and (best is None or plen > best[0]):
            best = (plen, value)
    return best[1] if best else None


# --- port ranges ---------------------------------------------------------------

@pytest.mark.parametrize("lo,hi,want", [
    (0, 65535, [(0, 0)]),
    (80, 80, [(80, 16)]),
    (8080, 8081, [(8080, 15)]),
    (1, 3, [(1, 16), (2, 15)]),
    (1024, 65535, [(1024, 6), (2048, 5), (4096, 4), (8192, 3), (16384, 2), (32768, 1)]),
])
def test_port_prefixes_examples(lo, hi, want):
    assert maps.port_prefixes(lo, hi) == want


@given(st.integers(0, 65535), st.integers(0, 65535))
@settings(max_examples=300)
def test_port_prefixes_cover_exactly_the_range(a, b):
    lo, hi = min(a, b), max(a, b)
    covered = []
    for value, plen in maps.port_prefixes(lo, hi):
        size = 1 << (16 - plen)
        assert value % size == 0, "a prefix's host bits are zero"
        covered += range(value, value + size)
    assert covered == list(range(lo, hi + 1))
    assert len(maps.port_prefixes(lo, hi)) <= 30


def test_port_prefixes_reject_bad_ranges():
    with pytest.raises(maps.EncodeError):
        maps.port_prefixes(10, 5)


# --- the policy map ---------------------------------------------------------------

def lookup_policy(content: dict, src: int, dst: int, proto: str, port) -> bytes:
    code = maps.L4[proto]
    data = src.to_bytes(2, "big") + dst.to_bytes(2, "big") + bytes([code]) + (port or 0).to_bytes(2, "big")
    return lpm(content, data)


def test_policy_keys_have_the_c_layout():
    content = maps.policy_content({PolicyEntry(256, 257, "tcp", 8080, 8080, "r")})
    ((plen, data), value), = content.items()
    assert plen == 64 and data == bytes.fromhex("01000101") + bytes([6]) + (8080).to_bytes(2, "big")
    key = maps.policy_key(1, (plen, data))
    assert key == (64).to_bytes(4, "little") + b"\x01" + data
    assert maps.policy_unversioned(key) == (1, (plen, data))
    assert maps.POLICY_VAL.unpack(value)[:3] == (8080, 8080, 6)


ENTRIES = st.builds(
    PolicyEntry, src=st.sampled_from([256, 257, 258]), dst=st.sampled_from([256, 257]),
    proto=st.sampled_from(["tcp", "udp", "icmp", "any"]), lo=st.integers(0, 40), hi=st.integers(0, 40),
    rule=st.sampled_from(["a", "b"]))


def _normal(e: PolicyEntry) -> PolicyEntry:
    if e.proto in ("icmp", "any"):
        return PolicyEntry(e.src, e.dst, e.proto, 0, 0, e.rule)
    return PolicyEntry(e.src, e.dst, e.proto, max(1, min(e.lo, e.hi)), max(1, e.lo, e.hi), e.rule)


@given(st.lists(ENTRIES, max_size=8))
@settings(max_examples=150, deadline=None)
def test_the_one_port_shortcut_gives_the_general_elements(raw):
    """policy_content's shortcut for a group of one-port entries (most groups) gives
    what the general per-group path gives."""
    entries = frozenset(_normal(e) for e in raw)
    groups, general = {}, {}
    for key in {e.key for e in entries}:
        groups.setdefault(key[:3], []).append(key)
    for keys in groups.values():
        maps._group_content(keys, general)   # noqa: SLF001
    assert maps.policy_content(entries) == general


def test_a_group_of_several_one_port_entries_takes_the_shortcut_and_gives_the_general_elements():
    entries = {PolicyEntry(256, 257, "tcp", p, p, "r") for p in (80, 443, 8080)}
    entries |= {PolicyEntry(256, 257, "udp", 53, 53, "r"), PolicyEntry(256, 257, "udp", 50, 60, "s")}
    general: dict = {}
    for proto in ("tcp", "udp"):
        maps._group_content([e.key for e in entries if e.proto == proto], general)   # noqa: SLF001
    content = maps.policy_content(entries)
    assert content == general and len(content) == 3 + 1 + len(maps.port_prefixes(50, 60))
    assert content[(64, struct.pack(">HHBH", 256, 257, 6, 443))] == maps.POLICY_VAL.pack(443, 443, 6)


@given(st.lists(ENTRIES, max_size=8))
@settings(max_examples=150, deadline=None)
def test_policy_lookup_agrees_with_allowing(raw):
    """An LPM lookup finds an entry exactly when policymap.allowing does, and names one that matches."""
    from segmentation.policymap import PolicyMap
    entries = frozenset(_normal(e) for e in raw)
    pm = PolicyMap({}, entries)
    content = maps.policy_content(entries)
    for src in (256, 257, 258):
        for dst in (256, 257):
            for proto, port in [("tcp", p) for p in range(0, 42, 3)] + [("udp", 7), ("icmp", None)]:
                found = lookup_policy(content, src, dst, proto, port)
                assert (found is not None) == (allowing(pm, src, dst, proto, port) is not None)
                if found is not None:
                    lo, hi, code = maps.POLICY_VAL.unpack(found)[:3]
                    target = (src, dst, maps.L4_NAMES[code], lo, hi)
                    owners = maps.piece_owners(target, group_index(entries))
                    assert set(owners) <= {e.key for e in entries}
                    assert code == 0 or (code == maps.L4[proto] and (proto == "icmp" or lo <= port <= hi))
                    if code:    # counted to entries that allow the packet (which ones: as nftables,
                        # test_ebpf_counting_parity)
                        assert all(proto == "icmp" or k[3] <= port <= k[4] for k in owners)


def test_overlapping_ranges_count_a_shared_piece_to_both_entries():
    low, high = PolicyEntry(256, 257, "tcp", 5000, 8080, "a"), PolicyEntry(256, 257, "tcp", 8080, 9999, "b")
    content = maps.policy_content({low, high})
    index = group_index([low, high])

    def owners(port):
        lo, hi, code = maps.POLICY_VAL.unpack(lookup_policy(content, 256, 257, "tcp", port))[:3]
        return maps.piece_owners((256, 257, "tcp", lo, hi), index)

    assert owners(5432) == [low.key]
    assert owners(8080) == [low.key, high.key]
    assert owners(8081) == owners(9999) == [high.key]
    # without an overlap every prefix names its entry, as before
    alone = maps.policy_content({low})
    assert {maps.POLICY_VAL.unpack(v)[:2] for v in alone.values()} == {(5000, 8080)}


def test_spread_adds_a_shared_piece_to_every_owner_and_leaves_others():
    from plugin.enforce.ebpf.counters import spread
    low, high = PolicyEntry(256, 257, "tcp", 5000, 8080, "a"), PolicyEntry(256, 257, "tcp", 8080, 9999, "b")
    other = PolicyEntry(256, 258, "udp", 53, 53, "c")
    index = group_index([low, high, other])
    got = spread({low.key: (1, 60), (256, 257, "tcp", 8080, 8080): (2, 120), high.key: (4, 240),
                  other.key: (8, 480), ("fqdn", 256, "tcp", 443, 443): (16, 960)}, index)
    assert got == {low.key: (3, 180), high.key: (6, 360), other.key: (8, 480),
                   ("fqdn", 256, "tcp", 443, 443): (16, 960)}


def test_count_target_maps_counters_back_to_policy_keys():
    key = maps.COUNT_KEY.pack(maps.CK_POLICY, 0, 6, 0, 256, 257, 8080, 8090, 0, bytes(16))
    assert maps.count_target(key) == (256, 257, "tcp", 8080, 8090)
    entry = CidrEntry("egress", 256, 4, "10.0.0.0/8", "tcp", 443, 443, "web->10.0.0.0/8:tcp/443")
    key = maps.COUNT_KEY.pack(maps.CK_CIDR, 1, 6, 4, 256, 0, 443, 443, 8, maps.addr16("10.0.0.0"))
    assert maps.count_target(key, [entry]) == entry.key
    assert maps.count_target(key) == entry.key   # the key alone: no rule needed to match it
    dns = FqdnEntry(256, "api.example.com", "tcp", 443, 443, "web->dns(api.example.com):tcp/443")
    key = maps.COUNT_KEY.pack(maps.CK_FQDN, 0, 6, 0, 256, 0, 443, 443, 0, bytes(16))
    assert maps.count_target(key) == dns.service_key   # tag 0: not known which rules
    key = maps.COUNT_KEY.pack(maps.CK_FQDN, 0, 6, 0, 256, 12, 443, 443, 0, bytes(16))
    assert maps.count_target(key) == (FQDN_TAG_KEY, 12)   # dst: the tag of the rules that taught it


# --- CIDR entries ----------------------------------------------------------------------

def lookup_cidr(content: dict, direction: str, identity: int, addr: str) -> list:
    ip = ipaddress.ip_address(addr)
    data = bytes([maps.DIRECTIONS[direction]]) + identity.to_bytes(2, "big") + bytes([ip.version])
    data += maps.addr16(addr) + bytes(3)
    value = lpm(content, data)
    if value is None:
        return []
    n = maps.U32.unpack_from(value)[0]
    return [maps.CIDR_SVC.unpack_from(value, 4 + i * maps.CIDR_SVC.size) for i in range(n)]


def test_nested_cidrs_answer_for_every_containing_entry():
    wide = CidrEntry("egress", 256, 4, "10.0.0.0/8", "tcp", 443, 443, "w")
    narrow = CidrEntry("egress", 256, 4, "10.1.0.0/16", "udp", 53, 53, "n")
    v6 = CidrEntry("egress", 256, 6, "2001:db8::/32", "any", 0, 0, "six")
    content = maps.cidr_content([wide, narrow, v6])
    inner = lookup_cidr(content, "egress", 256, "10.1.2.3")
    assert sorted((s[0], s[2], s[3]) for s in inner) == [(6, 443, 443), (17, 53, 53)]
    assert [(s[0], s[2]) for s in lookup_cidr(content, "egress", 256, "10.2.0.1")] == [(6, 443)]
    assert lookup_cidr(content, "egress", 256, "11.0.0.1") == []
    assert lookup_cidr(content, "ingress", 256, "10.1.2.3") == []
    assert lookup_cidr(content, "egress", 257, "10.1.2.3") == []
    assert [s[0] for s in lookup_cidr(content, "egress", 256, "2001:db8::1")] == [0]


def test_too_many_services_for_one_cidr_is_a_clear_error():
    many = [CidrEntry("egress", 256, 4, "10.0.0.0/8", "tcp", p, p, f"r{p}") for p in range(1, 18)]
    with pytest.raises(maps.EncodeError, match="at most 16"):
        maps.cidr_content(many)


# --- endpoints, settings, diff -----------------------------------------------------------

def test_endpoint_value_layout():
    port = Port("ep", "snv0", "02:42:0a:ec:00:0a", "10.236.0.10", "fd00:236::a", identity=300)
    v6, ll6, v4, mac, identity, _ = maps.ENDPOINT.unpack(maps.endpoint_value(port))
    assert v4 == bytes([10, 236, 0, 10]) and identity == 300 and mac == bytes.fromhex("02420aec000a")
    assert ipaddress.IPv6Address(ll6) == ipaddress.IPv6Address("fe80::42:aff:feec:a")
    assert ipaddress.IPv6Address(v6) == ipaddress.IPv6Address("fd00:236::a")
    q = Port("ep", "snv0", "02:42:0a:ec:00:0a", "10.236.0.10", identity=QUARANTINED)
    assert maps.ENDPOINT.unpack(maps.endpoint_value(q))[0] == bytes(16)
    # its IPv4 and its own link-local address (U10-F4), both its identity and veth
    ll_key = maps.ADDR_KEY.pack(6, ipaddress.IPv6Address("fe80::42:aff:feec:a").packed)
    entries = maps.member_entries(q, 7)
    assert set(entries) == {maps.ADDR_KEY.pack(4, maps.addr16("10.236.0.10")), ll_key}
    assert set(entries.values()) == {maps.MEMBER.pack(QUARANTINED, 0, 7)}


def test_settings_follow_policy_mode_and_internal():
    pm = compile_policy_map(NetworkOptions(rules=parse_rules("a->b:tcp/1"), egress="deny"), {"a": 256, "b": 257})
    assert maps.SETTINGS.unpack(maps.settings_value(pm, "audit")) == (1, 0, 0, 0)
    internal = compile_policy_map(NetworkOptions(internal=True), {"a": 256})
    assert maps.SETTINGS.unpack(maps.settings_value(internal, "enforce")) == (0, 0, 1, 0)
    assert maps.SETTINGS.unpack(maps.settings_value(pm, "enforce", tcp_loose=False)) == (0, 0, 0, 1)
    with pytest.raises(maps.EncodeError):
        maps.settings_value(pm, "loud")


def test_tcp_loose_reads_the_sysctl_and_defaults_to_the_kernels(tmp_path):
    from plugin.enforce.ebpf.host import tcp_loose   # noqa: PLC0415
    f = tmp_path / "nf_conntrack_tcp_loose"
    f.write_text("0\n")
    assert tcp_loose(str(f)) is False
    f.write_text("1\n")
    assert tcp_loose(str(f)) is True
    assert tcp_loose(str(tmp_path / "missing")) is True   # conntrack not loaded: its default


def test_content_diff_and_restricted():
    removed, written = maps.content_diff({1: b"a", 2: b"b"}, {2: b"c", 3: b"d"})
    assert removed == [1] and sorted(written) == [(2, b"c"), (3, b"d")]
    pm = compile_policy_map(NetworkOptions(rules=parse_rules("10.0.0.0/8->b:tcp/1")), {"a": 256, "b": 257})
    assert maps.restricted_content(pm) == {257: b"\x01"}
    assert maps.restricted_unversioned(maps.restricted_key(1, 257)) == (1, 257)
    assert maps.network_tag("5ec0de" + "0" * 58) == 0x5EC0DE000000


@pytest.mark.parametrize("version", [0, 1])
def test_versioned_keys_are_the_keys_of_each_function_one_after_another(version):
    """The key array of a batch holds, byte for byte, what policy_key, cidr_key and
    restricted_key give one by one (the version byte where each puts it)."""
    pm = compile_policy_map(NetworkOptions(rules=parse_rules(
        "a->b:tcp/80-90, b->a:udp/53, a->b:icmp, 10.0.0.0/8->b:tcp/1, b->[fd00::/8]:any")), {"a": 256, "b": 257})
    for name, content, keyfn in (("policy", maps.policy_content(pm.entries), maps.policy_key),
                                 ("cidrs", maps.cidr_content(pm.cidrs), maps.cidr_key),
                                 ("restricted", {257: b"\x01", 300: b"\x01"}, maps.restricted_key)):
        rests = list(content)
        assert len(rests) >= 2, name
        assert maps.versioned_keys(name, rests, version) == b"".join(keyfn(version, r) for r in rests), name
    assert maps.versioned_keys("policy", [], version) == b""


def test_host_problem_names_what_is_missing(tmp_path):
    from plugin.enforce.ebpf.host import host_problem
    btf = tmp_path / "vmlinux"
    btf.write_bytes(b"")
    assert host_problem("6.1.0-18-amd64", str(btf)) is None
    assert "older than 5.18" in host_problem("5.10.0-28-amd64", str(btf))
    assert "no BTF" in host_problem("6.18.1", str(tmp_path / "none"))
    assert "kernel release" in host_problem("garbage", str(btf))


def test_subnet_entries_are_lpm_keys_of_family_and_prefix():
    got = maps.subnet_entries(["10.200.1.0/24", "fd00:200::/64"])
    want = {
        maps.SUBNET_KEY.pack(32 + 24, 4, bytes([10, 200, 1, 0]) + bytes(12)): b"\x01",
        maps.SUBNET_KEY.pack(32 + 64, 6, ipaddress.IPv6Address("fd00:200::").packed): b"\x01",
    }
    assert got == want and maps.SUBNET_KEY.size == 24
    with pytest.raises(maps.EncodeError, match="bad subnet 'nope'"):
        maps.subnet_entries(["nope"])


def test_an_arp_drop_event_carries_its_protocol_addresses():
    from plugin.enforce.ebpf.events import decode   # noqa: PLC0415
    raw = maps.DROP_EVENT.pack(0xABCDEF012345, 2_000_000_000, 5, 4, 0, 0, 0, 0x0806, 0, 0, 0,
                               bytes([10, 1, 0, 2]) + bytes(12), bytes([10, 1, 0, 3]) + bytes(12),
                               bytes(6), b"\xff" * 6)
    e = decode(raw, 0.0)
    assert (e.network, e.reason, e.family, e.proto) == ("abcdef012345", "quarantined", 4, "arp")
    assert (e.src, e.dst, e.port) == ("10.1.0.2", "10.1.0.3", None)


def test_a_drop_event_of_another_ethertype_reads_as_nftables_reports_it():
    from plugin.enforce.ebpf.events import decode   # noqa: PLC0415
    raw = maps.DROP_EVENT.pack(0xABCDEF012345, 2_000_000_000, 8, 0, 0, 0, 0, 0x88B5, 0, 0, 0,
                               bytes(16), bytes(16), b"\x02\x42\x0a\x01\x00\x02", b"\xff" * 6)
    e = decode(raw, 0.0)
    assert (e.reason, e.family, e.proto, e.src, e.dst, e.port) == (
        "ethertype", 0, "ethertype-0x88b5", "", "", None)


def test_dns_rules_become_fqdn_entries_for_every_address_that_allow_nothing_new():
    pm = compile_policy_map(NetworkOptions(rules=parse_rules(
        "a->dns(api.example.test):tcp/443 a->10.0.0.0/8:udp/53"), egress="deny"), {"a": 256})
    content = maps.cidr_content(maps.policy_cidrs(pm))
    assert [(s[0], s[2], s[3]) for s in lookup_cidr(content, "fqdn", 256, "192.0.2.7")] == [(6, 443, 443)]
    assert [(s[0], s[2]) for s in lookup_cidr(content, "fqdn", 256, "2001:db8::7")] == [(6, 443)]
    assert lookup_cidr(content, "egress", 256, "192.0.2.7") == []     # never an egress grant
    assert [s[0] for s in lookup_cidr(content, "egress", 256, "10.1.2.3")] == [17]
    assert lookup_cidr(content, "fqdn", 257, "192.0.2.7") == []
