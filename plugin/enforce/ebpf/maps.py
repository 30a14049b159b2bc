"""Backend-neutral policy and endpoints -> the bytes of the datapath's map entries.

Pure encoding (no kernel calls): each function mirrors one struct of
``bpf/lib/common.h`` (the C side asserts the same sizes). The versioned maps
(``policy``, ``cidrs``, ``restricted``) are described *without* their version
byte, as ``{unversioned key: value}``; :func:`versioned` adds it, so that one
content can be written under either version (see backend.py: the swap).

* policy: an LPM trie keyed (version, src identity, dst identity, L4 code,
  port). ``any`` is the 40-bit prefix (version, src, dst), a protocol with
  all ports 48 bits, a port range the prefixes that cover it
  (:func:`port_prefixes`). The value names what the per-entry counters
  count a flow to: the entry's (proto, lo, hi) when one entry alone covers
  the prefix's ports, else the prefix's own port block, which the reader
  attributes to every range that contains it (:func:`piece_owners`), as
  nftables counts a piece of overlapping ranges to every rule (one port and
  every port are its sets of their own, looked up first and last).
* cidrs: an LPM trie keyed (version, direction, identity, family, address).
  Its longest match must answer for every CIDR containing the address, so
  each prefix carries the services of every entry whose CIDR contains it,
  with pieces for ports that several of them share, so that one counter
  stands for every rule allowing the flow (:mod:`.cidrslots`).
  Direction ``fqdn`` (2) holds, per segment, the services of its dns(...)
  rules for any address (``policy_cidrs``): they allow no new flow, they keep
  flows a learned address admitted after it expired.
"""
from __future__ import annotations

import bisect
import ipaddress
import itertools
import operator
import struct
from typing import Iterable, Mapping

from segmentation.identities import HOST
from segmentation.policymap import EGRESS, FQDN_KEY, FQDN_TAG_KEY, INGRESS, CidrEntry, PolicyMap

from plugin.kernel import addresses

from . import cidrslots

ENDPOINT = struct.Struct("<16s16s4s6sHI")
ADDR_KEY = struct.Struct("<B3x16s")
MEMBER = struct.Struct("<HHI")
STATE = struct.Struct("<IIQ")
SETTINGS = struct.Struct("<BBBB")
POLICY_KEY = struct.Struct("<I8s")
POLICY_VAL = struct.Struct("<HHB3x")
RESTRICTED_KEY = struct.Struct("<BxH")
CIDR_KEY = struct.Struct("<I24s")
CIDR_SVC = struct.Struct("<BBHH2x16s")
CIDR_SLOTS = 16
CIDR_VAL_SIZE = 4 + CIDR_SLOTS * CIDR_SVC.size
COUNT_KEY = struct.Struct("<BBBBHHHHB3x16s")
DROP_KEY = struct.Struct("<HHBBH")
COUNT = struct.Struct("<QQ")
CT_KEY = struct.Struct("<16s16sHHBBH")
CT_VAL = struct.Struct("<QIBBHIII6s6s8x")   # the last 8: fast_seen, the datapath's own (0: none)
DROP_EVENT = struct.Struct("<QQBBBBHHIHH16s16s6s6s4x")
PUB_KEY = struct.Struct("<BBH16s")
PUB_VAL = struct.Struct("<HHI")
SUBNET_KEY = struct.Struct("<IB3x16s")
U32 = struct.Struct("<I")

L4 = {"any": 0, "icmp": 1, "tcp": 6, "udp": 17}
_PORTED = frozenset(("tcp", "udp"))
L4_NAMES = {v: k for k, v in L4.items()}
FQDN = "fqdn"   # the pseudo-direction of a segment's dns(...) services (DIR_FQDN)
DIRECTIONS = {INGRESS: 0, EGRESS: 1, FQDN: 2}
DIRECTION_NAMES = {v: k for k, v in DIRECTIONS.items()}
MODES = {"enforce": 0, "audit": 1}
CK_POLICY, CK_CIDR, CK_FQDN = 1, 2, 3
POLICY_FIXED_BITS = 40       # version, src, dst
CIDR_FIXED_BITS = 40         # version, direction, identity, family
SUBNET_FIXED_BITS = 32       # family, 3 zero bytes


class EncodeError(ValueError):
    """The policy does not fit the datapath's maps (the message says what)."""


def addr16(addr: str) -> bytes:
    """An address as the datapath stores it: 16 bytes, IPv4 in the first 4."""
    packed = ipaddress.ip_address(addr).packed
    return packed + bytes(16 - len(packed))


def link_local(mac: str) -> bytes:
    """The EUI-64 link-local address a container derives from ``mac`` (packed)."""
    return ipaddress.IPv6Address(addresses.link_local(mac)).packed


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


# --- endpoints and members ------------------------------------------------------

def endpoint_value(port) -> bytes:
    """The ``endpoints`` value of a plugin.enforce.backend.Port."""
    v6 = ipaddress.IPv6Address(port.ipv6).packed if port.ipv6 else bytes(16)
    v4 = ipaddress.IPv4Address(port.ipv4).packed if port.ipv4 else bytes(4)
    return ENDPOINT.pack(v6, link_local(port.mac), v4, mac_bytes(port.mac), port.identity, 0)


def member_entries(port, ifindex: int) -> dict:
    """``members`` entries of one port: address key -> (identity, ifindex); its own
    link-local address is one of them (U10-F4: judged like its global address)."""
    return {ADDR_KEY.pack(ipaddress.ip_address(a).version, addr16(a)): MEMBER.pack(port.identity, 0, ifindex)
            for a in (*port.addresses, port.link_local)}


def published_entries(port) -> dict:
    """``published`` entries of an active port: (family, proto, host port, host
    address or zero for every address) -> (identity, container port)."""
    if not port.active:
        return {}
    out = {}
    for proto, host_ip, host_port, cport in port.published:
        number = {"tcp": 6, "udp": 17}.get(str(proto).lower(), proto)
        for addr in port.addresses:
            family = ipaddress.ip_address(addr).version
            if family not in addresses.host_families(host_ip):   # 0.0.0.0: IPv4 only (U18-F5)
                continue
            key = PUB_KEY.pack(family, int(number), int(host_port),
                               bytes(16) if addresses.is_wildcard(host_ip) else addr16(host_ip))
            out[key] = PUB_VAL.pack(port.identity, int(cport), 0)
    return out


def subnet_entries(subnets: Iterable[str]) -> dict:
    """``subnets`` entries: the network's own subnets (CIDR text) -> 1. Raises
    EncodeError on a CIDR that does not parse."""
    out = {}
    for cidr in subnets:
        try:
            net = ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise EncodeError(f"bad subnet {cidr!r}") from None
        key = SUBNET_KEY.pack(SUBNET_FIXED_BITS + net.prefixlen, net.version, addr16(str(net.network_address)))
        out[key] = b"\x01"
    return out


def gateway_entries(gateways: Iterable[str]) -> dict:
    """The bridge's own addresses are the host (identity HOST)."""
    return {ADDR_KEY.pack(ipaddress.ip_address(g).version, addr16(g)): MEMBER.pack(HOST, 0, 0)
            for g in gateways}


# --- settings and state -----------------------------------------------------------

def settings_value(policy: PolicyMap, mode: str, internal: bool = False, tcp_loose: bool = True) -> bytes:
    """The ``settings`` map's value (``struct settings``): mode, egress allowed, internal,
    strict_tcp (1: ``tcp_loose`` False, a first ACK opens no flow). Raises EncodeError."""
    s = policy.settings
    if mode not in MODES:
        raise EncodeError(f"unknown mode {mode!r}: enforce or audit")
    return SETTINGS.pack(MODES[mode], int(s.egress == "allow" and not (s.internal or internal)),
                         int(s.internal or internal), int(not tcp_loose))


def network_tag(network_id: str) -> int:
    """The number events carry for a network: its id's first 12 hex digits."""
    return int(network_id[:12], 16)


# --- the policy map -------------------------------------------------------------

def port_prefixes(lo: int, hi: int) -> list:
    """The fewest (value, prefix length) pairs of the 16-bit port space covering lo..hi."""
    if not 0 <= lo <= hi <= 65535:
        raise EncodeError(f"bad port range {lo}-{hi}")
    out = []
    while lo <= hi:
        size = lo & -lo if lo else 1 << 16
        while size > hi - lo + 1:
            size >>= 1
        out.append((lo, 16 - size.bit_length() + 1))
        lo += size
    return out


def _entry_prefixes(src: int, dst: int, proto: str, lo: int, hi: int) -> list:
    """(prefix length, 7 data bytes after the version, (block lo, block hi)) of one
    entry: the prefixes and the ports each one covers."""
    ids = struct.pack(">HH", src, dst)
    if proto == "any":
        return [(POLICY_FIXED_BITS, ids + bytes(3), (lo, hi))]
    code = L4[proto]
    if proto == "icmp" or (lo, hi) == (0, 65535):
        return [(POLICY_FIXED_BITS + 8, ids + bytes([code, 0, 0]), (lo, hi))]
    return [(POLICY_FIXED_BITS + 8 + plen, ids + bytes([code]) + struct.pack(">H", value),
             (value, value + (1 << (16 - plen)) - 1))
            for value, plen in port_prefixes(lo, hi)]


def overlapping(ranges: Iterable) -> bool:
    """Do any two of ``ranges`` ((lo, hi) pairs, inclusive) share a port?"""
    last = -1
    for lo, hi in sorted(ranges):
        if lo <= last:
            return True
        last = max(last, hi)
    return False


class _Cover:
    """Which port blocks of one (src, dst, proto) group more than one entry covers.

    ``ranges``: the group's (lo, hi) pairs. :meth:`shared` answers in
    O(log n) from the two highest ``hi`` among the entries starting at or
    before a port."""

    def __init__(self, ranges: Iterable):
        ranges = sorted(set(ranges))
        self.los = [lo for lo, _hi in ranges]
        self.second = []          # second highest hi among ranges[:i + 1]
        first = second = -1
        for _lo, hi in ranges:
            first, second = (hi, first) if hi >= first else (first, max(second, hi))
            self.second.append(second)

    def shared(self, lo: int, hi: int) -> bool:
        i = bisect.bisect_right(self.los, lo)
        return i > 0 and self.second[i - 1] >= hi


_KEY = operator.itemgetter(0, 1, 2, 3, 4)   # PolicyEntry.key, without a Python call per entry
_ONE_PORT = struct.Struct(">HHBH")   # the data7 of a one-port key: src, dst, protocol, port
_ONE_PORT_BITS = POLICY_FIXED_BITS + 8 + 16
_PORT = operator.itemgetter(3)       # a policy key's lo


def _ranged(lo: int, hi: int) -> bool:
    """A port range proper: neither one port nor every port (nftables' pol_range)."""
    return lo != hi and (lo, hi) != (0, 65535)


def policy_content(entries: Iterable) -> dict:
    """``{(prefixlen, data7): value}`` of the policy map for ``entries`` (PolicyEntry)."""
    groups: dict = {}
    for key in set(map(_KEY, entries)):
        groups.setdefault(key[:3], []).append(key)
    chosen: dict = {}
    for group, keys in groups.items():
        src, dst, proto = group
        if len(keys) == 1 and keys[0][3] == keys[0][4] and proto in _PORTED:   # most groups: one port
            port, code = keys[0][3], L4[proto]
            chosen[(_ONE_PORT_BITS, _ONE_PORT.pack(src, dst, code, port))] = POLICY_VAL.pack(port, port, code)
        elif proto in _PORTED and all(k[3] == k[4] for k in keys):   # one-port entries:
            code = L4[proto]                       # each its own one-port prefix, counted to itself
            for port in map(_PORT, keys):
                data = _ONE_PORT.pack(src, dst, code, port)
                chosen[(_ONE_PORT_BITS, data)] = POLICY_VAL.pack(port, port, code)
        else:
            _group_content(keys, chosen)
    return chosen


def _group_content(keys: list, chosen: dict) -> None:
    """The policy map's elements for the keys of one (src, dst, proto) group, into ``chosen``."""
    ranges = [k[3:] for k in keys if _ranged(*k[3:])]
    cover = _Cover(ranges) if len(ranges) > 1 and overlapping(ranges) else None
    code = L4[keys[0][2]]
    for key in sorted(keys, key=lambda k: (k[4] - k[3], k)):
        for plen, data, (blo, bhi) in _entry_prefixes(*key):
            if (plen, data) not in chosen:
                shared = cover and _ranged(*key[3:]) and cover.shared(blo, bhi)
                lo, hi = (blo, bhi) if shared else key[3:]
                chosen[(plen, data)] = POLICY_VAL.pack(lo, hi, code)


def piece_owners(target: tuple, index: Mapping) -> list:
    """The policy keys an ``allowed`` counter of policy key ``target`` (src, dst,
    proto, lo, hi) belongs to, as nftables counts (its pol_port, pol_range,
    pol_proto sets, looked up in that order, the longest prefix here): an
    entry for one port or every port alone, a piece of port ranges every
    range of ``index`` ((src, dst, proto) -> PolicyEntry set) that contains
    lo..hi; ``[target]`` when none does (a counter of an entry since removed)."""
    group = index.get(target[:3], ())
    lo, hi = target[3], target[4]
    if not _ranged(lo, hi) and any(e.lo == lo and e.hi == hi for e in group):
        return [target]
    owners = sorted({e.key for e in group if _ranged(e.lo, e.hi) and e.lo <= lo and hi <= e.hi})
    return owners or [target]


def policy_key(version: int, prefix: tuple) -> bytes:
    plen, data7 = prefix
    return POLICY_KEY.pack(plen, bytes([version]) + data7)


def policy_unversioned(key: bytes) -> tuple:
    """(version, (prefixlen, data7)) of a policy map key."""
    plen, data = POLICY_KEY.unpack(key)
    return data[0], (plen, data[1:])


# --- CIDR entries -------------------------------------------------------------------

def _net(entry: CidrEntry):
    return ipaddress.ip_network(entry.cidr, strict=False)


def cidr_content(cidrs: Iterable[CidrEntry]) -> dict:
    """``{(prefixlen, data23): value}`` of the CIDR map (see the module docstring;
    the slots of a prefix: cidrslots.prefix_slots).

    Raises EncodeError when one prefix would need more than CIDR_SLOTS slots.
    """
    groups: dict = {}
    for e in cidrs:
        groups.setdefault((e.direction, e.identity, e.family), set()).add(e)
    out = {}
    for (direction, identity, family), entries in sorted(groups.items(), key=lambda kv: kv[0]):
        for net in sorted({_net(e) for e in entries}):
            covering = [e for e in entries if net.subnet_of(_net(e))]
            if direction == FQDN:   # only "is it named", never counted: one slot per service
                svcs = sorted({_svc(e) for e in covering})
            else:
                svcs = [CIDR_SVC.pack(L4[p], plen, lo, hi, addr16(a))
                        for p, plen, lo, hi, a in cidrslots.prefix_slots(net, covering)]
            if len(svcs) > CIDR_SLOTS:
                raise EncodeError(f"{len(svcs)} services (with the port pieces overlapping rules share) for"
                                  f" {direction} {net} of identity {identity}:"
                                  f" the eBPF datapath holds at most {CIDR_SLOTS} per CIDR")
            data = bytes([DIRECTIONS[direction]]) + struct.pack(">H", identity) + bytes([family])
            data += addr16(str(net.network_address)) + bytes(3)
            value = U32.pack(len(svcs)) + b"".join(svcs) + bytes(CIDR_SVC.size * (CIDR_SLOTS - len(svcs)))
            out[(CIDR_FIXED_BITS + net.prefixlen, data)] = value
    return out


def policy_cidrs(policy) -> list:
    """The CIDR map's entries of ``policy``: its CIDR entries and, per dns(...)
    rule, one ``fqdn`` entry for every address of each family, so that the
    program keeps a flow a learned address admitted after the address expired
    while the rule names its service (bpf/lib/policy.h ``fqdn_rule_kept``; it
    never allows a new flow; the flows of a removed rule that another rule with
    the same service keeps here the daemon ends: ``fqdn.end_learned_flows``)."""
    marks = [CidrEntry(FQDN, f.identity, fam, cidr, f.proto, f.lo, f.hi, f.rule)
             for f in policy.fqdns for fam, cidr in ((4, "0.0.0.0/0"), (6, "::/0"))]
    return list(policy.cidrs) + marks


def _svc(e: CidrEntry) -> bytes:
    net = _net(e)
    return CIDR_SVC.pack(L4[e.proto], net.prefixlen, e.lo, e.hi, addr16(str(net.network_address)))


def cidr_key(version: int, prefix: tuple) -> bytes:
    plen, data = prefix
    return CIDR_KEY.pack(plen, bytes([version]) + data)


def cidr_unversioned(key: bytes) -> tuple:
    plen, data = CIDR_KEY.unpack(key)
    return data[0], (plen, data[1:])


def restricted_content(policy: PolicyMap) -> dict:
    """``{identity: b"\\x01"}`` of the segments only CIDR-source rules admit from outside."""
    return {ident: b"\x01" for ident in sorted(policy.ingress_restricted)}


def restricted_key(version: int, identity: int) -> bytes:
    return RESTRICTED_KEY.pack(version, identity)


def restricted_unversioned(key: bytes) -> tuple:
    return RESTRICTED_KEY.unpack(key)


# --- counters -----------------------------------------------------------------------

def count_target(key: bytes, cidrs: Iterable[CidrEntry] = ()):
    """The policy-map key an ``allowed`` counter belongs to: ``PolicyEntry.key``,
    ``(FQDN_TAG_KEY, tag)`` of a learned DNS address's grant (``FqdnEntry.service_key``
    when its tag is 0: not known),
    the ``CidrEntry.key`` of the matching entry of ``cidrs`` (of an entry with
    rule ``""`` when none matches), or None."""
    kind, direction, proto, family, src, dst, lo, hi, plen, addr = COUNT_KEY.unpack(key)
    name = L4_NAMES.get(proto)
    if kind == CK_POLICY and name:
        return (src, dst, name, lo, hi)
    if kind == CK_FQDN and name:   # dst: the tag of the rules that taught the address
        return (FQDN_TAG_KEY, dst) if dst else (FQDN_KEY, src, name, lo, hi)
    if kind != CK_CIDR or name is None or direction not in DIRECTION_NAMES:
        return None
    raw = addr[:4] if family == 4 else addr
    cidr = f"{ipaddress.ip_address(raw)}/{plen}"
    probe = (DIRECTION_NAMES[direction], src, family, name, lo, hi)
    for e in cidrs:
        if (e.direction, e.identity, e.family, e.proto, e.lo, e.hi) == probe and _net(e) == ipaddress.ip_network(cidr):
            return e.key
    return CidrEntry(probe[0], src, family, cidr, name, lo, hi, "").key


def sum_percpu(raw: bytes, cpus: int) -> tuple:
    """(packets, bytes) summed over the CPUs of a per-CPU ``count`` value."""
    packets = octets = 0
    for i in range(cpus):
        p, b = COUNT.unpack_from(raw, i * COUNT.size)
        packets, octets = packets + p, octets + b
    return packets, octets


#: a versioned map's unversioned keys, packed many at once: (struct format of one key with a
#: pad byte where the version goes, that byte's offset, whether an unversioned key is a tuple)
_UNVERSIONED = {"policy": ("Ix7s", 4, True), "cidrs": ("Ix23s", 4, True), "restricted": ("xxH", 0, False)}


def versioned_keys(name: str, rests: list, version: int) -> bytes:
    """The keys of map ``name`` (``policy``, ``cidrs``, ``restricted``) for the unversioned
    keys ``rests`` under ``version``, one after another: the key array of a batch operation
    (the bytes of policy_key, cidr_key, restricted_key each, without a Python call per key)."""
    if not rests:
        return b""
    fmt, offset, nested = _UNVERSIONED[name]
    packed = bytearray(struct.Struct("<" + fmt * len(rests)).pack(
        *(itertools.chain.from_iterable(rests) if nested else rests)))
    if version:
        packed[offset::len(packed) // len(rests)] = bytes([version]) * len(rests)
    return bytes(packed)


def content_diff(old: Mapping, new: Mapping) -> tuple:
    """(keys to delete, items to write) turning content ``old`` into ``new``."""
    removed = [k for k in old if k not in new]
    written = [(k, v) for k, v in new.items() if old.get(k) != v]
    return removed, written


def full_changes(policy) -> dict:
    """``{map name: (None, content)}`` for a full write of ``policy`` (a PolicyMap)
    into the policy, cidrs and restricted maps (None: the content before is read
    back from the kernel)."""
    return {
        "policy": (None, policy_content(policy.entries)),
        "cidrs": (None, cidr_content(policy_cidrs(policy))),
        "restricted": (None, restricted_content(policy)),
    }
