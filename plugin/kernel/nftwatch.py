"""Watch nftables change notifications: who changed which table, chain, rule, set.

Every committed nftables transaction is announced by the kernel on the
netfilter netlink multicast group ``NFNLGRP_NFTABLES`` (7) of the network
namespace -- the stream ``nft monitor`` prints. ``iptables`` on Debian 12 is
``iptables-nft``, so ``iptables -F DOCKER-USER`` shows up here as rule
deletions in table ``filter`` (family ip), chain ``DOCKER-USER``; a
``firewall-cmd --reload`` as a burst of them. (``iptables-legacy`` writes
x_tables, which announce nothing: then only periodic passes notice.)

Design: one daemon thread blocks in ``select()`` on a raw
``NETLINK_NETFILTER`` socket and a wake-up pipe (no CPU while nothing
changes), decodes each message's header and the one or two name attributes
it needs, and calls the subscribers. pyroute2's ``NFTSocket`` can join the
group too (checked with pyroute2 0.9.7), but its asyncio core cannot be
woken from another thread to stop, and its decoders parse every rule's
expressions, which nobody here needs; the header layout decoded below is
the kernel's stable ABI (``linux/netfilter/nf_tables.h``). When the socket
fails, the thread reopens it with backoff; after a gap (reopen, or the
kernel dropped notifications: ENOBUFS) subscribers get one ``resync`` event,
meaning "anything may have changed: look again".

Subscribers run in the watcher thread: they must be quick, and use
:class:`Debouncer` to do real work elsewhere.
"""
from __future__ import annotations

import errno
import logging
import os
import select
import socket
import struct
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

from plugin.kernel.nfgroups import NETLINK_ADD_MEMBERSHIP, SOL_NETLINK, group_socket

log = logging.getLogger(__name__)

NFNLGRP_NFTABLES = 7
NETLINK_DROP_MEMBERSHIP = 2
NFTA_GEN_PROC_PID = 2
PENDING_MAX = 1000     # events of one transaction held until its generation; beyond: a resync
NFNL_SUBSYS_NFTABLES = 10
RCVBUF = 4 << 20
BACKOFF_MIN, BACKOFF_MAX = 0.2, 10.0

FAMILIES = {1: "inet", 2: "ip", 3: "arp", 5: "netdev", 7: "bridge", 10: "ip6"}
# NFT_MSG_* -> (kind, object, attribute type holding the second name or None)
MESSAGES = {
    0: ("add", "table", None), 2: ("delete", "table", None),
    3: ("add", "chain", 3), 5: ("delete", "chain", 3),            # NFTA_CHAIN_NAME
    6: ("add", "rule", 2), 8: ("delete", "rule", 2),              # NFTA_RULE_CHAIN
    9: ("add", "set", 2), 11: ("delete", "set", 2),               # NFTA_SET_NAME
    12: ("add", "element", 2), 14: ("delete", "element", 2),      # NFTA_SET_ELEM_LIST_SET
    15: ("add", "generation", None),                              # NFT_MSG_NEWGEN: a commit
    18: ("add", "object", 2), 20: ("delete", "object", 2),        # NFTA_OBJ_NAME
    22: ("add", "flowtable", 2), 24: ("delete", "flowtable", 2),  # NFTA_FLOWTABLE_NAME
}
NLMSG_HDR = struct.Struct("=IHHII")   # length, type, flags, sequence, port id
NFGEN_HDR = struct.Struct("=BBH")     # family, version, resource id (big endian)
NLA_HDR = struct.Struct("=HH")        # length, type


@dataclass(frozen=True)
class NftEvent:
    """One change, as announced.

    ``kind``: ``add``, ``delete``, or ``resync`` (notifications were lost or
    the watcher reconnected: re-check everything). ``object``: ``table``,
    ``chain``, ``rule``, ``set``, ``element``, ``object``, ``flowtable``,
    ``generation`` (end of a committed transaction) or ``all``. ``family``:
    ``ip``, ``ip6``, ``inet``, ``bridge``, ``arp``, ``netdev`` ('' if unknown).
    ``table``; ``chain`` for chains and rules; ``name`` for sets, elements
    (the set's name), objects and flowtables. ``portid``: the netlink port id
    of the socket whose request caused the change (nf_tables notifies with
    the requester's port id; 0 when unknown): a writer can skip its own changes.
    ``pid``: of a ``generation`` event, the task (thread) id that committed the
    transaction (``NFTA_GEN_PROC_PID``, the kernel's ``task_pid_nr(current)``; 0 if absent).
    """

    kind: str
    object: str
    family: str = ""
    table: str = ""
    chain: str = ""
    name: str = ""
    portid: int = field(default=0, compare=False)
    pid: int = field(default=0, compare=False)


RESYNC = NftEvent("resync", "all")


def _attrs(data: bytes, offset: int, end: int) -> dict:
    """Top-level netlink attributes -> {type: payload}, nested flag cleared."""
    out = {}
    while offset + NLA_HDR.size <= end:
        length, kind = NLA_HDR.unpack_from(data, offset)
        if length < NLA_HDR.size:
            break
        out[kind & 0x3FFF] = data[offset + NLA_HDR.size:offset + length]
        offset += (length + 3) & ~3
    return out


def _text(raw: Optional[bytes]) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace") if raw else ""


def parse(data: bytes) -> Iterator[NftEvent]:
    """The events in one datagram from the group (several messages each).

    Messages of other netfilter subsystems and unknown types are skipped;
    a truncated message ends the datagram.
    """
    offset = 0
    while offset + NLMSG_HDR.size + NFGEN_HDR.size <= len(data):
        length, mtype, _flags, _seq, portid = NLMSG_HDR.unpack_from(data, offset)
        if length < NLMSG_HDR.size or offset + length > len(data):
            return
        known = MESSAGES.get(mtype & 0xFF) if mtype >> 8 == NFNL_SUBSYS_NFTABLES else None
        if known is not None:
            family, _version, _res = NFGEN_HDR.unpack_from(data, offset + NLMSG_HDR.size)
            yield _event(known, family, _attrs(data, offset + NLMSG_HDR.size + NFGEN_HDR.size,
                                               offset + length), portid)
        offset += (length + 3) & ~3


def _event(known: tuple, family: int, attrs: dict, portid: int = 0) -> NftEvent:
    kind, obj, second = known
    if obj == "generation":
        raw = attrs.get(NFTA_GEN_PROC_PID)
        pid = struct.unpack("!I", raw[:4])[0] if raw and len(raw) >= 4 else 0
        return NftEvent(kind, obj, portid=portid, pid=pid)
    name = _text(attrs.get(second)) if second else ""
    chain = name if obj in ("chain", "rule") else ""
    return NftEvent(kind, obj, FAMILIES.get(family, ""), _text(attrs.get(1)), chain,
                    "" if chain else name, portid)


PROC_PID_INIT_INO = 0xEFFFFFFC   # the initial pid namespace's inode (include/linux/proc_ns.h)


def in_initial_pid_namespace() -> bool:
    """Whether this process's pid namespace is the initial one (task ids are the global
    ones that nf_tables reports)."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino == PROC_PID_INIT_INO
    except OSError:
        return False


SO_ATTACH_FILTER = 26
_BPF_INSN = struct.Struct("=HBBI")   # classic BPF: code, jump if true, jump if false, k


def port_filter(ports) -> bytes:
    """A classic BPF program (``sock_filter`` array) that drops every datagram whose
    first message's sender port id is one of ``ports`` and accepts the rest.

    nf_tables coalesces the notifications of one transaction into datagrams per
    requester, so the first message's port id stands for the whole datagram.
    A word load (``ld [12]``: ``nlmsg_pid``) reads network byte order, the header
    is in host order: each id is compared in the loaded order.
    """
    ports = sorted(set(ports))
    loaded = [struct.unpack("!I", struct.pack("=I", p))[0] for p in ports]
    prog = [_BPF_INSN.pack(0x20, 0, 0, 12)]                        # ld [12]
    for i, k in enumerate(loaded):                                 # jeq #k, drop
        prog.append(_BPF_INSN.pack(0x15, len(loaded) - i, 0, k))
    prog.append(_BPF_INSN.pack(0x06, 0, 0, 0xFFFFFFFF))            # ret #-1: accept
    prog.append(_BPF_INSN.pack(0x06, 0, 0, 0))                     # ret #0: drop
    return b"".join(prog)


def attach_port_filter(sock: socket.socket, ports) -> None:
    """Attach :func:`port_filter` to ``sock`` (OSError if the kernel refuses it)."""
    import ctypes
    code = port_filter(ports)
    buf = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("HL", len(code) // _BPF_INSN.size, ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def first_portid(data: bytes) -> int:
    """The sender port id of the first message of a datagram (0 if too short)."""
    return NLMSG_HDR.unpack_from(data)[4] if len(data) >= NLMSG_HDR.size else 0


def open_socket() -> socket.socket:
    """A netfilter netlink socket joined to NFNLGRP_NFTABLES (needs CAP_NET_ADMIN)."""
    return group_socket((NFNLGRP_NFTABLES,), RCVBUF)


class NftWatcher:
    """Calls subscribers with every :class:`NftEvent` of this network namespace.

    ``subscribe(callback, match=None)``: ``callback(event)`` for events for
    which ``match(event)`` is true (all when None); returns the callback.
    ``start()`` opens the socket in the caller's thread (so an error such as
    EPERM is raised there) and starts the thread; ``stop()`` ends it. A subclass
    listening to another group sets ``name``, ``parse`` (datagram -> events) and
    ``resync`` (plugin.kernel.tcwatch.TcWatcher).
    """

    name = "secnet-nftwatch"
    parse = staticmethod(parse)
    resync = RESYNC

    def __init__(self, opener: Callable[[], socket.socket] = open_socket, sleep=None):
        self._opener = opener
        self._subs: list = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sleep = sleep or self._stop.wait
        self._wake_r, self._wake_w = os.pipe()
        self._sock: Optional[socket.socket] = None
        self._thread: Optional[threading.Thread] = None
        self.events = 0      # delivered, for status and tests
        self.restarts = 0
        self._ignored: set = set()
        self._own_threads = False   # drop transactions committed by this process's threads
        self._pending: list = []    # events of the transaction in progress (with _own_threads)
        self._overflow = False
        self._paused = 0     # writers inside pause() .. resume()
        self._broken = False
        self.pauses = 0      # windows opened, for status and tests

    def subscribe(self, callback: Callable[[NftEvent], None], match=None):
        with self._lock:
            self._subs.append((match, callback))
        return callback

    def unsubscribe(self, callback) -> None:
        with self._lock:
            self._subs = [(m, c) for m, c in self._subs if c is not callback]

    def ignore_port(self, portid: int) -> None:
        """Deliver no event that netlink port ``portid`` caused (a writer's own
        changes: a 10,000-element edit announces every element). Dropped by a
        socket filter in the kernel where it takes one, else before decoding."""
        if not portid:
            return
        with self._lock:
            self._ignored.add(portid)
        if self._sock is not None:
            self._filter(self._sock)

    def _filter(self, sock) -> None:
        with self._lock:
            ports = set(self._ignored)
        if ports:
            try:
                attach_port_filter(sock, ports)
            except OSError as exc:
                log.debug("no socket filter (%s): own events are skipped in user space", exc)

    def ignore_own_threads(self) -> bool:
        """Deliver nothing of a transaction that a thread of this process committed (the
        daemon's own libnftables writes, whose socket's port id is libnftables' own):
        events are held until the transaction's ``generation`` event, whose ``pid``
        (the committing thread, as the initial pid namespace numbers it) tells; a thread
        of ours is one in ``/proc/self/task``. Only in the initial pid namespace, where
        those numbers are ours too; in another one (a managed plugin) every transaction
        is delivered, as without this. Returns whether it is on. More than
        :data:`PENDING_MAX` events of one transaction are held as one ``resync``."""
        self._own_threads = in_initial_pid_namespace()
        return self._own_threads

    def _take(self, event: NftEvent) -> None:
        if not self._own_threads or event.kind == "resync":
            self._pending, self._overflow = [], False
            self.deliver(event)
            return
        if event.object != "generation":
            if len(self._pending) < PENDING_MAX:
                self._pending.append(event)
            else:
                self._overflow = True
            return
        pending, overflow = self._pending, self._overflow
        self._pending, self._overflow = [], False
        if event.pid and os.path.exists(f"/proc/self/task/{event.pid}"):
            return   # our own transaction
        for held in ([self.resync] if overflow else pending):
            self.deliver(held)
        self.deliver(event)

    def pause(self) -> None:
        """Leave ``NFNLGRP_NFTABLES`` until the matching :meth:`resume` (calls nest).

        For a writer's own large batch, whose events are ignored anyway
        (:meth:`ignore_port`): nf_tables builds a notification for every set element
        only while some socket of the host listens on the group
        (``nf_tables_setelem_notify`` checks ``nfnetlink_has_listeners``, whose bitmap is
        per protocol, not per namespace): ~1.3 us of the transaction per element, ~40 %
        of a 10,000-element delta's kernel time (bench/results/2026-12-01-pset3.md).
        What others commit meanwhile goes unannounced: the writer compares the ruleset's
        generation before and after the window and calls :meth:`lost` when it moved by
        more than its own commit."""
        with self._lock:
            self._paused += 1
            self.pauses += 1
            if self._paused == 1:
                self._membership(NETLINK_DROP_MEMBERSHIP)

    def resume(self) -> None:
        """End a :meth:`pause`; the last one joins the group again (if that fails, the
        socket is reopened: a new one joins and subscribers get a ``resync``)."""
        with self._lock:
            self._paused -= 1
            if self._paused == 0:
                self._membership(NETLINK_ADD_MEMBERSHIP)

    def lost(self) -> None:
        """Changes may have gone unannounced (a paused window saw foreign commits):
        subscribers get one ``resync`` event."""
        self.deliver(self.resync)

    def _membership(self, option: int) -> None:
        sock = self._sock
        if sock is None:
            return   # the watcher reopens (joined) and announces a resync itself
        try:
            sock.setsockopt(SOL_NETLINK, option, NFNLGRP_NFTABLES)
        except OSError as exc:
            if option == NETLINK_ADD_MEMBERSHIP:   # never stay deaf: reopen
                log.warning("%s: cannot rejoin the group (%s): reopening", self.name, exc)
                self._broken = True
                os.write(self._wake_w, b"x")

    def start(self) -> "NftWatcher":
        if self._thread is None:
            self._sock = self._opener()
            self._filter(self._sock)
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def deliver(self, event: NftEvent) -> None:
        """Hand ``event`` to every matching subscriber; one failing never stops the rest."""
        with self._lock:
            subs = list(self._subs)
        self.events += 1
        for match, callback in subs:
            try:
                if match is None or match(event):
                    callback(event)
            except Exception:
                log.exception("%s: subscriber %r failed on %s", self.name, callback, event)

    def _run(self) -> None:
        delay = BACKOFF_MIN
        while not self._stop.is_set():
            try:
                if self._sock is None:
                    self._sock = self._opener()
                    self._filter(self._sock)
                    self.restarts += 1
                    self._take(self.resync)  # what changed while nobody listened is unknown
                self._pump()
                delay = BACKOFF_MIN
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # the kernel dropped notifications
                    log.warning("%s: events overran the socket buffer: resync", self.name)
                    self._take(self.resync)
                    continue
                log.warning("%s: event socket failed (%s); reopening in %.1f s", self.name, exc, delay)
                self._close()
                self._sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)
        self._close()

    def _pump(self) -> None:
        """Read and deliver until stopped; raises OSError on socket errors."""
        while not self._stop.is_set():
            ready, _, _ = select.select([self._sock, self._wake_r], [], [])
            if self._wake_r in ready:
                os.read(self._wake_r, 64)
            if self._broken:
                self._broken = False
                raise OSError(errno.EPIPE, "left the group")
            if self._sock in ready:
                data = self._sock.recv(1 << 20)
                if self._ignored and first_portid(data) in self._ignored:
                    continue
                for event in self.parse(data):
                    self._take(event)

    def _close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


class Debouncer:
    """Runs ``action()`` in its own thread once a burst of triggers is over.

    ``trigger()`` is cheap and safe from any thread (e.g. an nft subscriber);
    ``action`` runs ``delay`` seconds after the first trigger of a burst
    (triggers during that window fold into the same run; a trigger during
    the run schedules one more run). With ``every`` (seconds), it also runs
    that long after the last run when nothing triggered it: a slow periodic
    pass for changes no event announces. ``runs`` counts completed runs.
    """

    def __init__(self, action: Callable[[], None], delay: float = 0.1,
                 every: Optional[float] = None, name: str = "secnet-debounce"):
        self.action, self.delay, self.every = action, delay, every
        self._pending = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.runs = 0

    def start(self) -> "Debouncer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._pending.set()

    def trigger(self, _event=None) -> None:
        self._pending.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._pending.wait(self.every)
            if self._stop.is_set():
                return
            if self._pending.is_set():
                self._stop.wait(self.delay)   # let the burst finish
            self._pending.clear()
            try:
                self.action()
            except Exception:
                log.exception("%s failed", self._thread.name)
            self.runs += 1


def table_match(prefix: str, kinds=("add", "delete")) -> Callable[[NftEvent], bool]:
    """A ``match`` for :meth:`NftWatcher.subscribe`: events of tables whose name
    starts with ``prefix`` (and every ``resync``), of the given kinds."""
    def match(event: NftEvent) -> bool:
        return event.kind == "resync" or (event.kind in kinds and event.table.startswith(prefix))
    return match
