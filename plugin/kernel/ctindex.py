"""A live index of the conntrack table, kept from ctnetlink's NEW and DESTROY events.

Kernel background. Reading the conntrack table over ctnetlink (a dump) walks
every bucket of its hash table, which all network namespaces share
(``net.netfilter.nf_conntrack_buckets``, 262,144 here): ~10 ms in the kernel
even when the namespace holds five entries. A policy edit that may deny a
flow reads the table to end such flows (:mod:`plugin.kernel.conntrack`).
The kernel also announces every entry it confirms and every one it destroys
on the netfilter netlink groups ``NFNLGRP_CONNTRACK_NEW`` and
``NFNLGRP_CONNTRACK_DESTROY`` (what ``conntrack -E`` prints), from the
context of the packet or request that made the change: once an entry is
confirmed, its message is in the receive queue of every socket in the group.

Design. One socket joins both groups; a full dump taken after the join
seeds the index (each entry by its original tuple, and the tuples naming
each address); the messages queued meanwhile are applied after it, in
order, so the index converges on the table. A daemon thread blocks in
``select()`` (no CPU while no flow starts or ends) and applies messages as
they come. A reader (:meth:`FlowIndex.entries`) first drains the queue
itself, under the index's lock: every entry confirmed before the call is in
the answer -- what a dump would have returned, without the walk.

Fail closed. The index answers only while it is known complete: a lost
message (ENOBUFS: the queue overflowed; a socket error), events switched off
(``net.netfilter.nf_conntrack_events=0``) or more than ``limit`` entries make
:meth:`~FlowIndex.entries` return None -- the caller dumps the table as
before -- and the thread seeds the index again (at most once per ``reseed``
seconds). An entry whose end the kernel never announces (made before any
listener existed) stays until secnet deletes it, a narrower watch drops it or the
index is seeded again: a stale entry costs a deletion that finds nothing, never a
flow that goes on. Entries are forgotten only when the kernel announced their
end or a deletion of them succeeded (:meth:`~FlowIndex.discard`).

The layout decoded here is the kernel's stable ABI
(``linux/netfilter/nfnetlink_conntrack.h``). pyroute2 decodes it too, but its
asyncio core cannot be woken from another thread to stop (see
:mod:`plugin.kernel.nftwatch`), and the dump is the cost being avoided.
Deletion encodes the same layout (:mod:`plugin.kernel.ctdelete`).
"""
from __future__ import annotations

import errno
import ipaddress
import logging
import os
import select
import socket
import struct
import threading
import time
from typing import Callable, Iterable, Iterator, Optional

from plugin.kernel.ctentry import PROTO_NAMES, Entry, Tuple
from plugin.kernel.nfgroups import NETLINK_NETFILTER, group_socket

log = logging.getLogger(__name__)

NFNLGRP_CONNTRACK_NEW, NFNLGRP_CONNTRACK_DESTROY = 1, 3
CT_NEW, CT_GET, CT_DELETE = 0x100, 0x101, 0x102      # NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_*
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_STATUS, CTA_MARK = 1, 2, 3, 8
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
ICMP_ATTRS = {4: "id", 5: "type", 6: "code", 7: "id", 8: "type", 9: "code"}  # CTA_PROTO_ICMP(V6)_*
RCVBUF = 8 << 20
EVENTS_SYSCTL = "/proc/sys/net/netfilter/nf_conntrack_events"

NLMSG_HDR = struct.Struct("=IHHII")   # length, type, flags, sequence, port id
NFGEN_HDR = struct.Struct("=BBH")     # family, version, resource id
NLA_HDR = struct.Struct("=HH")        # length, type


def _attrs(data: bytes, offset: int, end: int) -> dict:
    """Netlink attributes in ``data[offset:end]`` -> {type: (start, end)} of each payload."""
    out = {}
    while offset + 4 <= end:
        length, kind = NLA_HDR.unpack_from(data, offset)
        if length < 4:
            break
        out[kind & 0x3FFF] = (offset + 4, offset + length)
        offset += (length + 3) & ~3
    return out


def _tuple(data: bytes, span: tuple) -> tuple:
    """A CTA_TUPLE_* payload -> (Tuple, the key ctnetlink deletes it by: see :func:`delete_key`)."""
    top = _attrs(data, *span)
    ip = _attrs(data, *top[CTA_TUPLE_IP])
    proto = _attrs(data, *top[CTA_TUPLE_PROTO])
    src_span, dst_span = (ip[1], ip[2]) if 1 in ip else (ip[3], ip[4])
    af = socket.AF_INET if 1 in ip else socket.AF_INET6
    src = socket.inet_ntop(af, data[src_span[0]:src_span[1]])
    dst = socket.inet_ntop(af, data[dst_span[0]:dst_span[1]])
    num = data[proto[CTA_PROTO_NUM][0]]
    ports = [struct.unpack_from("!H", data, proto[a][0])[0] if a in proto else None
             for a in (CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT)]
    icmp = {name: data[proto[a][0]] if name != "id" else struct.unpack_from("!H", data, proto[a][0])[0]
            for a, name in ICMP_ATTRS.items() if a in proto}
    name = PROTO_NAMES.get(num, f"proto-{num}")
    key = (af, num, src, dst, ports[0], ports[1], icmp.get("id"), icmp.get("type"), icmp.get("code"))
    return Tuple(name, src, dst, ports[0], ports[1]), key


def raw_key(t) -> tuple:
    """The raw original tuple (as :func:`parse` keys entries) of a pyroute2 ``NFCTAttrTuple``."""
    return tuple(getattr(t, a, None) for a in ("family", "proto", "saddr", "daddr", "sport", "dport",
                                                "icmp_id", "icmp_type", "icmp_code"))


def parse(data: bytes) -> Iterator[tuple]:
    """``(kind, entry)`` of each conntrack message in a datagram: kind ``new`` (a NEW
    event, or an entry of a dump) or ``destroy``; ``entry.key`` is the raw original
    tuple. ``("done", None)`` ends a dump; other messages are skipped."""
    offset = 0
    while offset + NLMSG_HDR.size <= len(data):
        length, mtype, _flags, _seq, _port = NLMSG_HDR.unpack_from(data, offset)
        if length < NLMSG_HDR.size or offset + length > len(data):
            return
        if mtype == NLMSG_DONE:
            yield "done", None
        elif mtype in (CT_NEW, CT_DELETE):
            family = NFGEN_HDR.unpack_from(data, offset + NLMSG_HDR.size)[0]
            attrs = _attrs(data, offset + NLMSG_HDR.size + NFGEN_HDR.size, offset + length)
            orig, key = _tuple(data, attrs[CTA_TUPLE_ORIG])
            reply = _tuple(data, attrs[CTA_TUPLE_REPLY])[0] if CTA_TUPLE_REPLY in attrs else orig
            status, mark = (struct.unpack_from("!I", data, attrs[a][0])[0] if a in attrs else 0
                            for a in (CTA_STATUS, CTA_MARK))
            yield ("new" if mtype == CT_NEW else "destroy",
                   Entry(6 if family == socket.AF_INET6 else 4, orig, reply, status, mark, key=key))
        offset += (length + 3) & ~3


class Subnets:
    """Which addresses the index keeps entries for: those in any of some CIDRs."""

    def __init__(self, cidrs: Iterable[str]):
        self.cidrs = frozenset(str(ipaddress.ip_network(c, strict=False)) for c in cidrs)
        self._by_len: dict = {}   # (family, prefix length) -> set of network numbers
        self._seen: dict = {}     # address -> covered? (the same few thousand, asked on every read)
        for cidr in self.cidrs:
            net = ipaddress.ip_network(cidr)
            bits = net.max_prefixlen - net.prefixlen
            self._by_len.setdefault((net.version, net.max_prefixlen, bits), set()).add(int(net.network_address) >> bits)

    def covers(self, address: str) -> bool:
        known = self._seen.get(address)
        if known is None:
            if len(self._seen) > 1 << 16:
                self._seen.clear()
            known = self._seen[address] = self._covers(address)
        return known

    def _covers(self, address: str) -> bool:
        family = 6 if ":" in address else 4
        try:
            packed = socket.inet_pton(socket.AF_INET6 if family == 6 else socket.AF_INET, address)
        except (OSError, TypeError):
            return False
        number = int.from_bytes(packed, "big")
        return any(number >> bits in found for (version, _max, bits), found in self._by_len.items()
                   if version == family)

    def within(self, other: Optional["Subnets"]) -> bool:
        """Is every CIDR of this one among ``other``'s? (None: everything.)"""
        return other is None or self.cidrs <= other.cidrs


def open_event_socket() -> socket.socket:
    """A non-blocking NETLINK_NETFILTER socket in both conntrack event groups (CAP_NET_ADMIN)."""
    return group_socket((NFNLGRP_CONNTRACK_NEW, NFNLGRP_CONNTRACK_DESTROY), RCVBUF, blocking=False)


def dump(sock: socket.socket, keep: Optional[Callable[[Entry], bool]] = None) -> list:
    """Every entry of the table (both families) over ``sock``, a plain netfilter socket;
    with ``keep``, only those it keeps (the others are decoded and let go at once)."""
    request = NLMSG_HDR.pack(NLMSG_HDR.size + NFGEN_HDR.size, CT_GET, NLM_F_REQUEST | NLM_F_DUMP, 1, 0)
    sock.send(request + NFGEN_HDR.pack(socket.AF_UNSPEC, 0, 0))
    out = []
    while True:
        data = sock.recv(1 << 16)
        if len(data) >= NLMSG_HDR.size + 4 and NLMSG_HDR.unpack_from(data)[1] == NLMSG_ERROR:
            code = -struct.unpack_from("=i", data, NLMSG_HDR.size)[0]
            if code:
                raise OSError(code, f"conntrack dump: {os.strerror(code)}")
        for kind, entry in parse(data):
            if kind == "done":
                return out
            if keep is None or keep(entry):
                out.append(entry)


class FlowIndex:
    """The conntrack entries of this network namespace, from events (see the module
    docstring). ``start()`` opens the sockets in the caller's thread and namespace
    (OSError, e.g. EPERM, is raised there) and starts the thread; ``stop()`` ends it.
    """

    def __init__(self, limit: int = 1 << 16, reseed: float = 5.0, opener=open_event_socket, dumper=None):
        self.limit, self.reseed, self._base_reseed = limit, reseed, reseed
        self._opener, self._dump = opener, dumper   # dumper: () -> [Entry] (None: ctnetlink)
        self._lock = threading.Lock()
        self._by_key: dict = {}     # raw original tuple -> Entry
        self._by_addr: dict = {}    # address -> set of raw original tuples
        self._complete = False
        self._lost = False
        self._subnets: Optional[Subnets] = None   # None: every address
        self.seeds = 0
        self._events = self._dumper = self._sysctl = None
        self._wake_r = self._wake_w = None   # a pipe, from start(): wakes the thread
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> "FlowIndex":
        self._events = self._opener()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        if self._dump is None:
            self._dumper = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
            self._dumper.bind((0, 0))
            self._dump = lambda: dump(self._dumper)
        try:
            self._sysctl = open(EVENTS_SYSCTL, "rb", buffering=0)   # this namespace's setting
        except OSError:
            self._sysctl = None
        self._thread = threading.Thread(target=self._run, name="secnet-ctindex", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for closable in (self._events, self._dumper, self._sysctl):
            if closable is not None:
                closable.close()
        for fd in (self._wake_r, self._wake_w):
            if fd is not None:
                os.close(fd)
        self._wake_r = self._wake_w = None

    # --- what Flows calls ---------------------------------------------------
    def watch(self, cidrs: Iterable[str]) -> None:
        """Keep only the entries naming an address in ``cidrs`` (the subnets of the
        daemon's networks). A CIDR not watched before means entries the index never
        kept: it is seeded again (reads dump the table meanwhile)."""
        subnets = Subnets(cidrs)
        with self._lock:
            wider = not subnets.within(self._subnets) and self._subnets is not None
            self._subnets = subnets
            if wider:
                self._give_up("new subnets to watch")
                return
            for key, entry in list(self._by_key.items()):   # narrower: drop what it no longer keeps
                if not any(map(subnets.covers, entry.addresses)):
                    self._remove(key)

    def entries(self, addresses: Optional[Iterable[str]] = None) -> Optional[list]:
        """The entries naming one of ``addresses`` (a collection) in either tuple (every
        entry when None), as of this call; None when the index is not known complete, or does
        not keep entries for all of those addresses (a watched subnet holds each)."""
        with self._lock:
            if not self._complete:
                return None
            subnets = self._subnets
            if subnets is not None and (addresses is None or not all(map(subnets.covers, addresses))):
                return None
            self._drain()
            if self._complete and not self._events_on():
                self._give_up("net.netfilter.nf_conntrack_events is 0")
            if not self._complete:
                return None
            if addresses is None:
                return list(self._by_key.values())
            keys = set()
            # few flows and many members (a policy edit): the flows' addresses asked, not each member's
            found = self._by_addr.keys() & addresses if len(self._by_addr) < len(addresses) else addresses
            for addr in found:
                keys.update(self._by_addr.get(addr, ()))
            return [self._by_key[k] for k in keys]

    def discard(self, entries: Iterable[Entry]) -> None:
        """Forget ``entries`` (deleted, or found gone: their DESTROY may never come); from
        this index or from a dump (a pyroute2 tuple as ``key``)."""
        with self._lock:
            for e in entries:
                self._remove(e.key if isinstance(e.key, tuple) else raw_key(e.key))

    @property
    def complete(self) -> bool:
        return self._complete

    # --- the index ------------------------------------------------------------
    def _add(self, entry: Entry) -> None:
        self._remove(entry.key)
        if self._subnets is not None and not any(map(self._subnets.covers, entry.addresses)):
            return
        self._by_key[entry.key] = entry
        for addr in entry.addresses:
            self._by_addr.setdefault(addr, set()).add(entry.key)
        if len(self._by_key) > self.limit:
            self.reseed = min(self.reseed * 2, 300.0)   # each seed would fill it again: less often
            self._give_up(f"more than {self.limit} entries")
            return

    def _remove(self, key) -> None:
        old = self._by_key.pop(key, None)
        if old is None:
            return
        for addr in old.addresses:
            keys = self._by_addr.get(addr)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_addr[addr]

    def _give_up(self, why: str) -> None:
        if self._complete:
            log.warning("conntrack index incomplete (%s): flow checks dump the table until it is seeded again",
                        why)
        self._complete, self._lost = False, True
        self._by_key, self._by_addr = {}, {}
        self._wake()

    def _wake(self) -> None:
        try:
            if self._wake_w is not None:
                os.write(self._wake_w, b"x")
        except OSError:   # full: the thread wakes anyway; closed: stopped
            pass

    def _drain(self) -> None:
        """Apply every queued message (caller holds the lock)."""
        while True:
            try:
                data = self._events.recv(1 << 16)
            except BlockingIOError:
                return
            except OSError as exc:   # ENOBUFS: the kernel dropped messages for us
                self._give_up(errno.errorcode.get(exc.errno, str(exc)))
                continue
            try:
                for kind, entry in parse(data):
                    if kind == "new":
                        self._add(entry)
                    elif kind == "destroy":
                        self._remove(entry.key)
            except (KeyError, IndexError, ValueError, struct.error) as exc:   # not as documented
                self._give_up(f"undecodable message: {type(exc).__name__} {exc}")

    def _events_on(self) -> bool:
        if self._sysctl is None:
            return True
        try:
            self._sysctl.seek(0)
            return self._sysctl.read().strip() != b"0"
        except OSError:
            return False

    # --- the thread -----------------------------------------------------------
    def _seed(self) -> None:
        """Dump the table (messages queue meanwhile), then install it and apply them."""
        with self._lock:
            self._lost = False
        try:
            found = self._dump()
        except (OSError, KeyError, IndexError, ValueError, struct.error) as exc:
            log.warning("conntrack index: dump failed: %s", exc)
            return
        with self._lock:
            self._by_key, self._by_addr = {}, {}
            for entry in found:
                self._add(entry)
            self._drain()
            self._complete = not self._lost and self._events_on()
            self.seeds += 1
            # a seed that did not take (events off, overflowing) is tried less and less often
            self.reseed = self._base_reseed if self._complete else min(self.reseed * 2, 300.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._loop()
            except Exception:   # never a dead thread: start over, incomplete meanwhile
                log.exception("conntrack index failed; seeding it again")
                with self._lock:
                    self._give_up("error")
                self._stop.wait(self.reseed)

    def _loop(self) -> None:
        next_seed = 0.0
        while not self._stop.is_set():
            if not self._complete and time.monotonic() >= next_seed:
                next_seed = time.monotonic() + self.reseed
                self._seed()
            wait = None if self._complete else max(0.0, next_seed - time.monotonic())
            ready, _, _ = select.select([self._events, self._wake_r], [], [], wait)
            if self._wake_r in ready:
                os.read(self._wake_r, 4096)
            if self._events in ready:
                with self._lock:
                    self._drain()
