"""nftables change notifications, decoded: who changed which table, chain, rule, set.

Every committed nftables transaction is announced by the kernel on the
netfilter netlink multicast group ``NFNLGRP_NFTABLES`` (7) of the network
namespace -- the stream ``nft monitor`` prints. ``iptables`` on Debian 12 is
``iptables-nft``, so ``iptables -F DOCKER-USER`` shows up here as rule
deletions in table ``filter`` (family ip), chain ``DOCKER-USER``; a
``firewall-cmd --reload`` as a burst of them. (``iptables-legacy`` writes
x_tables, which announce nothing: then only periodic passes notice.)

Only each message's header and the one or two name attributes a watcher needs
are decoded (pyroute2's ``NFTSocket`` decoders parse every rule's expressions,
which nobody here needs); the layout is the kernel's stable ABI
(``linux/netfilter/nf_tables.h``). The socket and the thread that reads it:
:mod:`plugin.kernel.nftsocket`, :mod:`plugin.kernel.nftwatch`.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Iterator, Optional

NFNL_SUBSYS_NFTABLES = 10
NFTA_GEN_PROC_PID = 2
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


def first_portid(data: bytes) -> int:
    """The sender port id of the first message of a datagram (0 if too short)."""
    return NLMSG_HDR.unpack_from(data)[4] if len(data) >= NLMSG_HDR.size else 0
