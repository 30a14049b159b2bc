"""The eBPF side of DNS-name rules: the ``fqdn`` LPM trie of each network.

Kernel background. A learned address (``plugin.enforce.fqdn.Grant``) is
one or more prefixes of the network's ``fqdn`` map (bpf/lib/common.h)::

    key   (prefixlen, identity:2, family:1, address:16, L4 code:1, port:2, 0:2)
    value (expires: boot-time ns, lo, hi, L4 code, tag, the DNS name answered)

``any`` is the 152-bit prefix, a protocol with all ports (and icmp) 160
bits, a port range the prefixes that cover it (``maps.port_prefixes``). The
program (bpf/lib/policy.h ``fqdn_lookup``) compares ``expires`` with
``bpf_ktime_get_boot_ns()``: an entry stops allowing new flows on its own
when its time is up, whatever the daemon does; flows it admitted go on (the
program's conntrack). The daemon deletes expired entries lazily, from one
timer set at the next expiry (no polling). The map is pinned: it outlives
the daemon and a reload of the programs.

Several grants may give the same prefix (two rules, overlapping ranges):
the entry carries the longest expiry of them, and goes when the last one
does (``holders``).
"""
from __future__ import annotations

import errno
import heapq
import ipaddress
import os
import struct
import threading
import time
from typing import Callable, Optional, Sequence

from plugin.enforce.fqdn import Grant
from plugin.enforce.backend import BackendError

from . import libbpf, pins
from .maps import CT_KEY, CT_VAL, L4, L4_NAMES, port_prefixes

CT_REPLY, CT_FQDN, KIND_EGRESS = 1, 4, 2        # bpf/lib/common.h
CT_PROTOS = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmp"}
KEY = struct.Struct("<I24s")
_DATA = struct.Struct(">HB16sBH2x")
VAL = struct.Struct("<QHHBxH128s")   # the tag: Grant.tag, counted under (CK_FQDN, dst = tag)
ANY_BITS, L4_BITS = 152, 160


def _boot_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


def prefixes(grant: Grant) -> list:
    """The map keys (bytes) of one grant."""
    head = (grant.identity, grant.family, ipaddress.ip_address(grant.address).packed.ljust(16, b"\0"))
    if grant.proto == "any":
        return [struct.pack("<I", ANY_BITS) + _DATA.pack(*head, 0, 0)]
    code = L4[grant.proto]
    if grant.proto == "icmp" or (grant.lo, grant.hi) == (0, 65535):
        return [struct.pack("<I", L4_BITS) + _DATA.pack(*head, code, 0)]
    return [struct.pack("<I", L4_BITS + plen) + _DATA.pack(*head, code, value)
            for value, plen in port_prefixes(grant.lo, grant.hi)]


def value(grant: Grant, now: float, boot: int) -> bytes:
    expires = boot + int((grant.expires - now) * 1e9)
    return VAL.pack(expires, grant.lo, grant.hi, L4[grant.proto], grant.tag, grant.name.encode()[:127])


def grant_of(key: bytes, raw: bytes, now: float, boot: int) -> Grant:
    """The grant an entry was written for."""
    _plen, identity, family, addr, _code, _port = struct.unpack("<I", key[:4]) + _DATA.unpack(key[4:])
    expires, lo, hi, code, tag, name = VAL.unpack(raw)
    address = str(ipaddress.ip_address(addr[:4] if family == 4 else addr))
    return Grant(identity, address, family, L4_NAMES[code], lo, hi, now + (expires - boot) / 1e9,
                 name.rstrip(b"\0").decode(errors="replace"), tag=tag)


def _identity(key: bytes) -> int:
    return _DATA.unpack_from(key, 4)[0]


class FqdnMaps:
    """:class:`~plugin.enforce.fqdn.FqdnDatapath` on the ``fqdn`` maps.

    ``map_fd``: network id -> the fd of its pinned ``fqdn`` map (raises
    KeyError/BackendError when the network has none); ``lock``: the backend's.
    """

    def __init__(self, map_fd: Callable[[str], int], lock, clock=time.time, boot=_boot_ns):
        self.map_fd, self.lock, self.clock, self.boot = map_fd, lock, clock, boot
        self._holders: dict = {}   # network id -> {key bytes: {Grant.key: Grant}}
        self._heap: list = []      # (expires, network id, key bytes)
        self._timer: Optional[threading.Timer] = None
        self._due = 0.0

    def allow(self, network_id: str, grants: Sequence[Grant]) -> None:
        with self.lock:
            fd, now, boot = self.map_fd(network_id), self.clock(), self.boot()
            holders = self._holders.setdefault(network_id, {})
            for g in grants:
                for key in prefixes(g):
                    held = holders.setdefault(key, {})
                    held[g.key] = g
                    best = max(held.values(), key=lambda x: x.expires)
                    libbpf.update(fd, key, value(best, now, boot))
                    heapq.heappush(self._heap, (best.expires, network_id, key))
            self._schedule()

    def revoke(self, network_id: str, keys: Sequence[tuple]) -> None:
        with self.lock:
            fd, now, boot = self.map_fd(network_id), self.clock(), self.boot()
            holders = self._holders.setdefault(network_id, {})
            for gkey in keys:
                identity, address, proto, lo, hi = gkey
                probe = Grant(identity, address, 6 if ":" in address else 4, proto, lo, hi)
                for key in prefixes(probe):
                    held = holders.get(key, {})
                    held.pop(gkey, None)
                    if held:
                        best = max(held.values(), key=lambda x: x.expires)
                        libbpf.update(fd, key, value(best, now, boot))
                        heapq.heappush(self._heap, (best.expires, network_id, key))
                    else:
                        holders.pop(key, None)
                        libbpf.delete(fd, key)
            self._schedule()

    def learned(self, network_id: str) -> list:
        """The grants the map holds now (adopted as held: a restarted daemon)."""
        with self.lock:
            fd, now, boot = self.map_fd(network_id), self.clock(), self.boot()
            holders, out = self._holders.setdefault(network_id, {}), set()
            for key in list(libbpf.keys(fd, KEY.size)):
                raw = libbpf.lookup(fd, key, VAL.size)
                if raw is None:
                    continue
                g = grant_of(key, raw, now, boot)
                if g.expires <= now:
                    continue
                holders.setdefault(key, {}).setdefault(g.key, g)
                heapq.heappush(self._heap, (g.expires, network_id, key))
                out.add(g)
            self._schedule()
            return sorted(out)

    def drop_identities(self, network_id: str, identities: set, fd: Optional[int] = None) -> int:
        """Delete every entry of ``identities`` (expired ones too) from the network's map,
        or from the map behind ``fd`` (pinned, not loaded here); how many."""
        with self.lock:
            fd = self.map_fd(network_id) if fd is None else fd
            doomed = [k for k in list(libbpf.keys(fd, KEY.size)) if _identity(k) in identities]
            holders = self._holders.get(network_id, {})
            for key in doomed:
                holders.pop(key, None)
                libbpf.delete(fd, key)
            return len(doomed)

    def forget(self, network_id: str) -> None:
        """The network is gone (its map with it)."""
        with self.lock:
            self._holders.pop(network_id, None)

    # --- lazy deletion of expired entries ---------------------------------------------
    def _schedule(self) -> None:
        """One timer, at the next expiry; kept when it already fires no later."""
        if not self._heap:
            return
        due = self._heap[0][0]
        if self._timer is not None:
            if self._due <= due:
                return
            self._timer.cancel()
        self._due = due
        delay = max(0.0, due - self.clock()) + 0.5
        self._timer = threading.Timer(delay, self.expire)
        self._timer.daemon = True
        self._timer.start()

    def expire(self) -> int:
        """Delete the entries whose time is up; set the timer for the next. How many."""
        deleted = 0
        with self.lock:
            now = self.clock()
            while self._heap and self._heap[0][0] <= now:
                _expires, network_id, key = heapq.heappop(self._heap)
                held = self._holders.get(network_id, {}).get(key)
                if not held or max(g.expires for g in held.values()) > now:
                    continue
                del self._holders[network_id][key]
                try:
                    libbpf.delete(self.map_fd(network_id), key)
                    deleted += 1
                except Exception:   # the network went meanwhile
                    continue
            self._timer = None
            self._schedule()
        return deleted

    def close(self) -> None:
        with self.lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None


class FqdnMethods:
    """``EbpfBackend``'s :class:`~plugin.enforce.fqdn.FqdnDatapath` (its ``fqdn`` maps,
    under its lock; kernel errors as BackendError)."""

    def _fqdn_fd(self, network_id: str) -> int:
        st = self._nets.get(network_id[:12])
        if st is None:
            raise BackendError(f"eBPF network {network_id[:12]} is not loaded")
        return st.handle.maps["fqdn"]

    def allow(self, network_id: str, grants) -> None:
        """Put learned addresses in force (expiry in the value); raises BackendError."""
        try:
            self.fqdn.allow(network_id, grants)
        except libbpf.LibbpfError as exc:
            raise BackendError(f"eBPF network {network_id[:12]}: {exc}") from None

    def revoke(self, network_id: str, keys) -> None:
        """Remove learned addresses (``Grant.key`` values); absent ones are fine."""
        try:
            self.fqdn.revoke(network_id, keys)
        except libbpf.LibbpfError as exc:
            raise BackendError(f"eBPF network {network_id[:12]}: {exc}") from None

    def learned(self, network_id: str) -> list:
        """The learned addresses the map holds now (``Grant`` values)."""
        return self.fqdn.learned(network_id)

    def unlearn(self, network_id: str, identities) -> int:
        """Delete every learned address of ``identities`` (segment identities about to be
        freed) from the network's ``fqdn`` map, loaded here or only pinned (a restarted
        daemon before the network's first write); how many entries. No map: 0.
        Raises BackendError when the kernel refuses."""
        identities = set(identities)
        try:
            if network_id[:12] in self._nets:
                return self.fqdn.drop_identities(network_id, identities)
            try:
                fd = libbpf.obj_get(os.path.join(pins.network_dir(self.root, network_id), "fqdn"))
            except libbpf.LibbpfError as exc:
                if exc.errno == errno.ENOENT:   # never loaded (a create, after a host reboot)
                    return 0
                raise
            try:
                return self.fqdn.drop_identities(network_id, identities, fd)
            finally:
                os.close(fd)
        except libbpf.LibbpfError as exc:
            raise BackendError(f"eBPF network {network_id[:12]}: {exc}") from None

    def end_learned_flows(self, net, policy, learned=None, admitted=None) -> int:
        """After a policy change: delete the program's flow entries (both
        directions, in either table: ``pins.CT_MAPS``) of the flows learned addresses admitted (``CT_FQDN``) that the new
        state neither allows (``policy`` with the answers in force, ``learned``) nor
        keeps (``admitted``: the rule that taught the address went; see
        ``plugin.kernel.conntrack.dns_rule_by``); the program's own judging keeps
        them while any dns(...) rule of the segment names their service. Their next
        packet is judged as a new flow. Returns how many flows; raises BackendError.
        Nothing is read unless a removed rule taught an address: the program's own
        judging does the rest (``taught_by_removed``)."""
        from plugin.kernel.conntrack import allowed_by, dns_rule_by
        suspects = taught_by_removed(policy, admitted)
        if not suspects:
            return 0
        names = {identity: name for name, identity in policy.identities.items()}
        with self._lock:
            st = self._nets.get(net.id[:12])
            if st is None:
                return 0
            members = {a: names[p.identity] for p, _ifx in st.ports.values()
                       if p.identity in names for a in p.addresses}
            suspects = {(names[i], a) for i, a in suspects if i in names}
            doomed = 0
            try:
                for table in pins.CT_MAPS:   # answered flows, and flows not answered yet
                    fd = st.handle.maps[table]
                    pairs = learned_flows_to_end(_entries(fd), members, allowed_by(policy, learned),
                                                 dns_rule_by(policy, admitted), suspects)
                    for key in (k for pair in pairs for k in pair):
                        libbpf.delete(fd, key)
                    doomed += len(pairs)
            except libbpf.LibbpfError as exc:
                raise BackendError(f"eBPF network {net.id[:12]}: {exc}") from None
        return doomed


def _entries(fd: int):
    for key in list(libbpf.keys(fd, CT_KEY.size)):
        raw = libbpf.lookup(fd, key, CT_VAL.size)
        if raw is not None:
            yield key, raw


def _address(raw: bytes, family: int) -> str:
    return str(ipaddress.ip_address(raw[:4] if family == 4 else raw))


def taught_by_removed(policy, admitted) -> set:
    """``{(identity, address)}`` that a rule no longer in ``policy`` taught (``admitted``
    as ``LearnedStore.admitted`` gives it). A learned flow to any other address is
    kept by ``dns_rule_by`` exactly when the program's ``fqdn_rule_kept`` keeps it
    (a rule that taught it is there, so a rule names its service; or nothing is known)."""
    rules = {(f.identity, f.rule) for f in policy.fqdns}
    return {(identity, address) for (identity, address), taught in (admitted or {}).items()
            if any((identity, rule) not in rules for rule, *_service in taught)}


def learned_flows_to_end(entries, members: dict, allowed, kept, suspects=None) -> list:
    """``[(key, reverse key)]`` of the program's conntrack ``entries`` (key, value
    bytes) to delete: flows a learned address admitted (``CT_FQDN``, egress) from a
    member (``members``: address -> segment) that ``allowed`` and ``kept`` (as
    ``plugin.kernel.conntrack.judge`` takes them) both refuse; with ``suspects``
    (``{(segment, address)}``), only flows to those are judged."""
    out = []
    for key, raw in entries:
        saddr, daddr, sport, dport, proto, family, query = CT_KEY.unpack(key)
        flags, kind = CT_VAL.unpack(raw)[2:4]
        if flags & CT_REPLY or not flags & CT_FQDN or kind != KIND_EGRESS or proto not in CT_PROTOS:
            continue
        segment, dst = members.get(_address(saddr, family)), _address(daddr, family)
        if segment is None or (suspects is not None and (segment, dst) not in suspects):
            continue
        name = CT_PROTOS[proto]
        port = dport if name in ("tcp", "udp") else None
        src = ("segment", segment)
        if not allowed(src, ("addr", dst), name, port) and not kept(src, dst, name, port):
            # (an ICMP query's kind stays in the key's last field: lib/parse.h icmp_flow_class)
            out.append((key, CT_KEY.pack(daddr, saddr, dport, sport, proto, family, query)))
    return out
