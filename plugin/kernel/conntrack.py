"""The one writer of conntrack: which entries a change leaves stale, and their removal.

Kernel background. The nft rules judge the first packet of a flow; later
packets pass on the flow's conntrack entry (``ct state established``) and
are never judged again. So whenever what a flow was allowed on changes -- a
policy edit, a container removed, quarantined, moved to another segment, a
port published or unpublished -- the entries of the flows the new state
does not allow must be deleted, or they go on.

An entry holds two tuples: the *original* one (as the initiator sent it) and
the *reply* one (as the answer comes back). With NAT they differ:

* a flow to a published port (DNAT) names the host's address and port in
  its original tuple; the container and its port appear only in the reply
  tuple. So does a hairpin flow (a container to a published port);
* a masqueraded flow (egress, hairpin) names the host in its reply tuple.

So every decision here reads an entry by its real ends: the source of the
original tuple (who opened the flow) and the source of the reply tuple (who
answers it), with the reply's source port as the real destination port:
what the filter hooks saw after DNAT. Both families, any protocol.

Entries are :class:`plugin.kernel.ctentry.Entry`. Reads and deletions go over
ctnetlink, decoded by :mod:`plugin.kernel.ctindex` and encoded by
:mod:`plugin.kernel.ctdelete` (pyroute2 waits for each request's answer in turn: far
too slow for tens of thousands of entries): no process per address.
"""
from __future__ import annotations

import functools
import logging
import socket
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Optional

from plugin.kernel.addresses import covers, link_local
from plugin.kernel.ctentry import PROTO_NAMES, Entry, Tuple
from plugin.kernel.nfgroups import NETLINK_NETFILTER
from segmentation.compiler import verdict
from segmentation.errors import PolicyError
from segmentation.rulevalues import Service

log = logging.getLogger(__name__)

JUDGED = ("tcp", "udp", "icmp")     # what policy names; other protocols only by who holds the ends
NEVER = ("gone", "quarantined", "pending")  # holder states through which nothing passes
SOCKET_TIMEOUT = 10.0   # s without an answer from ctnetlink before a delete gives up (OSError)

Allowed = Callable[[tuple, tuple, str, Optional[int]], bool]
Kept = Callable[[tuple, str, str, Optional[int]], bool]


@dataclass(frozen=True)
class Holder:
    """What an address of the network stands for now.

    ``end``: ``("segment", name)``, ``("quarantined", reason)``,
    ``("pending", "")`` or ``("gone", "")`` (the endpoint was removed);
    ``published``: ``{(proto, host_port, container_port)}`` of its ``-p``.
    """

    end: tuple
    published: frozenset = frozenset()


GONE = Holder(("gone", ""))


def own_addresses(port) -> tuple:
    """A port's plain addresses: IPv4, IPv6 and its own link-local address (of its
    MAC, when it has one: flows between link-local addresses are judged too)."""
    mac = getattr(port, "mac", None)
    return tuple(a.split("/")[0] for a in (port.ipv4, port.ipv6) if a) + ((link_local(mac),) if mac else ())


def holders(ports: Iterable, gone: Iterable[str] = ()) -> dict:
    """address -> Holder of every port (anything with ipv4, ipv6, segment,
    quarantine and published attributes), and GONE for ``gone`` addresses."""
    out = {a: GONE for a in gone if a}
    for p in ports:
        if p.quarantine is not None:
            end = ("quarantined", p.quarantine)
        elif p.segment is None:
            end = ("pending", "")
        else:
            end = ("segment", p.segment)
        published = frozenset((proto, int(hp), int(cp)) for proto, _ip, hp, cp in (p.published or ()))
        for addr in own_addresses(p):
            out[addr] = Holder(end, published)
    return out


def _held_by_name(by_address: Mapping, entries: Iterable[Entry]) -> dict:
    """address -> Holder (:func:`holders`) of each address of ``entries`` that a port of
    ``by_address`` (plain address -> port, the last port of an address as ``holders``
    keeps it) holds: all that ``judge`` looks up, in a pass over the entries, not over
    every port (a policy edit with 1,000 members and few flows)."""
    named = {a for e in entries for a in e.addresses if a in by_address}
    return {a: holders((by_address[a],))[a] for a in named}


def allowed_by(compiled, learned=None) -> Allowed:
    """``allowed(src, dst, proto, port)`` from a compiled policy (``compiler.verdict``),
    with the DNS answers in force (``learned``, as ``verdict`` takes it); a question
    the policy cannot answer (an unknown segment) is a no: fail closed."""
    def allowed(src: tuple, dst: tuple, proto: str, port: Optional[int]) -> bool:
        try:
            return verdict(compiled, src, dst, proto, port, learned).allowed
        except PolicyError:
            return False
    return allowed


def dns_rule_by(compiled, admitted: Optional[Mapping] = None) -> Kept:
    """``kept(src, address, proto, port)``: may a flow a learned address admitted, from
    segment ``src`` to ``address``, go on after the address expired? Yes while a
    dns(...) rule of the segment that learned ``address`` for this service is still
    there. ``admitted``: ``(identity, address) -> {(rule, proto, lo, hi)}``, what
    taught each address (``LearnedStore.admitted``), so a removed rule's flows end
    though another rule names the same service; with no record of ``address`` for
    the service (None, a restarted daemon), any dns(...) rule of the segment naming
    the service keeps it."""
    def kept(src: tuple, address: str, proto: str, port: Optional[int]) -> bool:
        identity = compiled.identities.get(src[1]) if src[0] == "segment" else None
        if identity is None:
            return False
        rules = {f.rule for f in compiled.fqdns if f.identity == identity and f.service.matches(proto, port)}
        taught = {r for r, *service in (admitted or {}).get((identity, address), ())
                  if Service(*service).matches(proto, port)}
        return bool(rules & taught) if taught else bool(rules)
    return kept


def is_host_address(address: str) -> bool:
    """Is ``address`` one of this host's own? (binding to it only works then)"""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.bind((address, 0))
        return True
    except OSError:
        return False


def _outside(address: str, dnat: bool, is_host: Callable) -> tuple:
    # A DNAT'd flow from outside reached a published port: the kernel lets it
    # in exactly where it lets the host in (no CIDR-source rule names the
    # segment, else the CIDR rules decide by its source address).
    return ("host" if dnat or is_host(address) else "addr", address)


def judge(entry: Entry, held: Mapping[str, Holder], allowed: Allowed,
          is_host: Callable[[str], bool] = is_host_address, kept: Optional[Kept] = None) -> Optional[str]:
    """Why ``entry`` must go now (a short reason), or None: keep it.

    ``kept``: for a flow a learned address admitted (``Entry.learned``) from a
    member to the outside, whether a dns(...) rule of its segment that learned its
    address is still there (``dns_rule_by``); None: such flows are judged like any other.

    ``held``: address -> Holder of the network's endpoints (and GONE for
    removed ones); entries that touch none of them are not this network's.
    """
    if any(held.get(a) is GONE for a in entry.addresses):
        return "gone"
    src_h, dst_h = held.get(entry.source), held.get(entry.target)
    if src_h is None and dst_h is None:
        return None
    for h in (src_h, dst_h):
        if h is not None and h.end[0] in NEVER:
            return h.end[0]
    if entry.dnat and dst_h is not None and is_host(entry.orig.dst) and \
            (entry.orig.proto, entry.orig.dport, entry.reply.sport) not in dst_h.published:
        return "unpublished"
    if entry.orig.proto not in JUDGED:
        return None
    dst = dst_h.end if dst_h else ("host" if is_host(entry.target) else "addr", entry.target)
    src = src_h.end if src_h else _outside(entry.source, entry.dnat, is_host)
    if allowed(src, dst, entry.orig.proto, entry.port):
        return None
    if kept is not None and entry.learned and src_h is not None and dst_h is None and \
            kept(src, entry.target, entry.orig.proto, entry.port):
        return None  # opened while its address was learned: goes on after the answer expired
    return "denied"


def stale(entries: Iterable[Entry], held: Mapping[str, Holder], allowed: Allowed,
          only: Optional[set] = None, is_host: Callable[[str], bool] = is_host_address,
          kept: Optional[Kept] = None) -> list:
    """[(entry, reason)] of the entries to delete; with ``only`` (addresses),
    just the entries that name one of them."""
    out = []
    for entry in entries:
        if only is not None and not (entry.addresses & only):
            continue
        reason = judge(entry, held, allowed, is_host, kept)
        if reason is not None:
            out.append((entry, reason))
    return out


def claimed(entries: Iterable[Entry], proto: str, host_ip: str, host_port: int, target: str,
            is_host: Callable[[str], bool] = is_host_address) -> list:
    """Entries of flows to host port ``host_port``/``proto`` (on ``host_ip``; any
    host address of both families when empty, of one for 0.0.0.0 or ::) that do
    not go to ``target``: opened
    before the port was published to it (they went to the host itself, or to
    the container that published it before), they would keep it from ever
    reaching ``target``."""
    out = []
    for e in entries:
        if e.orig.proto != proto or e.orig.dport != host_port or e.target == target:
            continue
        if covers(host_ip, e.orig.dst, is_host):
            out.append(e)
    return out


# --- the kernel ----------------------------------------------------------------------
def _tuple(t) -> Tuple:
    name = PROTO_NAMES.get(t.proto, f"proto-{t.proto}")
    return Tuple(name, str(t.saddr), str(t.daddr), t.sport, t.dport)


class Kernel:
    """ctnetlink: every entry of both families; deletion by original tuple."""

    def entries(self, addresses: Optional[Iterable[str]] = None) -> list:
        """The entries naming one of ``addresses`` in either tuple (every entry when None),
        from one ctnetlink dump decoded by :func:`plugin.kernel.ctindex.parse` (a few
        fields each; the others are let go as they are read). pyroute2's dump built a full
        message object per entry: a policy edit while one container had opened 80,000
        flows took 30 s and 1.3 GB (U21-F6). Raises OSError when ctnetlink refuses."""
        from plugin.kernel.ctindex import dump
        wanted = None if addresses is None else {a.split("/")[0] for a in addresses}
        keep = None if wanted is None else (lambda e: not wanted.isdisjoint(e.addresses))
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            sock.bind((0, 0))
            return dump(sock, keep)
        finally:
            sock.close()

    def delete(self, entries: Iterable[Entry]) -> int:
        """Delete ``entries`` by their original tuples; how many the kernel deleted (one
        that ended meanwhile is not counted). Raises OSError when ctnetlink refuses the
        socket or ``SOCKET_TIMEOUT`` s pass without an answer."""
        from plugin.kernel.ctdelete import delete
        from plugin.kernel.ctindex import raw_key
        keys = [e.key if isinstance(e.key, tuple) else raw_key(e.key) for e in entries if e.key is not None]
        if not keys:
            return 0
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            sock.settimeout(SOCKET_TIMEOUT)
            sock.bind((0, 0))
            return delete(sock, keys)
        finally:
            sock.close()


class Flows:
    """What the reconciler calls when state changes; ``kernel`` is swappable in tests.

    ``index``: a started :class:`plugin.kernel.ctindex.FlowIndex` of the same
    namespace: reads come from it while it is complete, else from a dump of the
    whole table (``kernel.entries``). None: every read dumps the table.
    """

    def __init__(self, kernel=None, index=None):
        self.kernel = kernel or Kernel()
        self.index = index
        self.dumps = 0   # reads that dumped the table

    def _entries(self, addresses: Optional[Iterable[str]] = None) -> list:
        """The entries (those naming one of ``addresses``, or more) as of now."""
        if self.index is not None:
            found = self.index.entries(addresses)
            if found is not None:
                return found
        self.dumps += 1
        try:
            return self.kernel.entries(addresses)
        except Exception as exc:  # no conntrack in this kernel/namespace: nothing tracked
            log.warning("cannot list conntrack entries: %s", exc)
            return []

    def watch(self, subnets: Iterable[str]) -> None:
        """The subnets of every network whose flows are judged here (the index keeps
        only entries naming an address in one of them)."""
        if self.index is not None:
            self.index.watch(subnets)

    def _delete(self, entries: list) -> int:
        deleted = self.kernel.delete(entries)
        if self.index is not None and deleted == len(entries):
            # every one is gone (the end of one made before the index listened is never
            # announced); when some failed, which is unknown: their DESTROY messages tell
            self.index.discard(entries)
        return deleted

    def enforce(self, allowed: Allowed, held: Mapping[str, Holder], only: Optional[set] = None,
                kept: Optional[Kept] = None) -> int:
        """Delete the entries that the new state (``allowed`` over ``held``, ``kept``
        for flows learned addresses admitted) does not allow; the one call for
        policy edits, segment and mode changes."""
        return self._prune(self._entries(set(held) if only is None else only), allowed, held, only, kept)

    def _prune(self, entries: list, allowed: Allowed, held: Mapping[str, Holder], only: Optional[set],
               kept: Optional[Kept]) -> int:
        is_host = functools.lru_cache(maxsize=1024)(is_host_address)  # per call: addresses come and go
        doomed = stale(entries, held, allowed, only, is_host, kept)
        deleted = self._delete([e for e, _ in doomed]) if doomed else 0
        if deleted:
            reasons = sorted({r for _e, r in doomed})
            log.info("deleted %d conntrack entries (%s)", deleted, ", ".join(reasons))
        return deleted

    def enforce_policy(self, compiled, ports: Iterable, only: Optional[set] = None, learned=None,
                       admitted: Optional[Mapping] = None) -> int:
        """``enforce`` for a compiled policy and its members' ports (policy edits,
        mode switches, repairs): the call later policy sources reuse. ``learned``:
        the DNS answers in force (flows to their addresses go on); flows a learned
        address admitted go on after it expired while a dns(...) rule of their
        segment that learned it is still there (``admitted``: see ``dns_rule_by``)."""
        by_address = {a: p for p in ports for a in own_addresses(p)}
        entries = self._entries(by_address.keys() if only is None else only)
        if not entries:
            return 0
        return self._prune(entries, allowed_by(compiled, learned), _held_by_name(by_address, entries), only,
                           dns_rule_by(compiled, admitted))

    def forget(self, addresses: Iterable[str]) -> int:
        """Delete every entry naming a removed endpoint's ``addresses`` (either tuple)."""
        gone = {a.split("/")[0] for a in addresses if a}
        return self.enforce(lambda *_: False, {a: GONE for a in gone}, only=gone) if gone else 0

    def claim(self, bindings: Iterable[tuple], target4: Optional[str], target6: Optional[str]) -> int:
        """Delete entries of flows to newly published host ports that would not
        reach the container: ``bindings`` are (proto, host_ip, host_port, container_port)."""
        entries, doomed = None, []
        is_host = functools.lru_cache(maxsize=1024)(is_host_address)
        for proto, host_ip, host_port, _cport in bindings:
            entries = self._entries() if entries is None else entries
            for target in (target4, target6):
                if target:
                    fam = 6 if ":" in target else 4
                    doomed += [e for e in claimed(entries, proto, host_ip, int(host_port), target, is_host)
                               if e.family == fam]
        deleted = self._delete(doomed) if doomed else 0
        if deleted:
            log.info("deleted %d conntrack entries of flows to newly published ports", deleted)
        return deleted
