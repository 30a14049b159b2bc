"""Set-element deltas sent to nf_tables over netlink: one batch, one transaction.

Kernel background. nft scripts go through libnftables, whose parser and
evaluator cost ~10 microseconds per element: a 10,000-element delta spends
~100 ms in user space before the kernel sees it. Elements have a small,
stable binary form (``linux/netfilter/nf_tables.h``), so deltas are
encoded here and sent as one netfilter netlink *batch*
(``NFNL_MSG_BATCH_BEGIN``, then ``NFT_MSG_DELSETELEM``/``NFT_MSG_NEWSETELEM``
messages, then ``NFNL_MSG_BATCH_END``), which the kernel commits as one
transaction or not at all. The kernel handles the batch within ``send()``:
every acknowledgement is queued before it returns.

An element's key is the concatenation of its fields, each padded to 4
bytes: marks and the constant ``numgen`` key in host byte order (what
``meta mark`` loads into a register), addresses and ports in network byte
order, protocol one byte, interface names 16 bytes, MACs 6. Interval sets
(concatenations with ``flags interval``) take the range's start as the key
and its end as ``NFTA_SET_ELEM_KEY_END``, with every field in network byte
order (marks too: nft byte-swaps the register before such a lookup). Map
values are encoded alike.
The same elements written by nft's parser and by this module are the same
bytes (the kernel tier checks it: drift() after a netlink delta is empty).
"""
from __future__ import annotations

import os
import socket
import struct
import threading

from .elements import SCHEMAS, ElementDelta

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 0x10, 0x11
NFT_MSG_NEWSETELEM, NFT_MSG_GETSETELEM, NFT_MSG_DELSETELEM = 12, 13, 14
NLM_F_REQUEST, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP = 0x1, 0x4, 0x400, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
NFTA_SET_ELEM_EXPR, NFTA_SET_ELEM_EXPRESSIONS = 7, 11
NFTA_EXPR_NAME, NFTA_EXPR_DATA = 1, 2
NFTA_COUNTER_BYTES, NFTA_COUNTER_PACKETS = 1, 2
NFT_MSG_GETCHAIN, NFT_MSG_GETRULE, NFT_MSG_GETSET = 4, 7, 10
#: per object kind: (request, attribute holding the name, attributes that are not its shape:
#: handles, ids, reference counts, counter values)
SHAPES = {"chain": (NFT_MSG_GETCHAIN, 3, {2, 6, 8, 9, 11}),
          "rule": (NFT_MSG_GETRULE, 2, {3, 6, 8, 9, 10, 11}),
          "set": (NFT_MSG_GETSET, 2, {10, 14, 16, 20})}   # 20: element count
NFTA_RULE_EXPRESSIONS, NFTA_RULE_USERDATA = 4, 7
NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_ELEMENTS = 1, 2, 3
NFTA_LIST_ELEM = 1
NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_DATA, NFTA_SET_ELEM_KEY_END = 1, 2, 10
NFTA_DATA_VALUE = 1
NLA_F_NESTED = 0x8000
SOL_NETLINK, NETLINK_CAP_ACK = 270, 10
FAMILIES = {"inet": 1, "bridge": 7}
MAX_ATTR = 60000       # an attribute's length is 16 bits: elements go in chunks


def _attr(kind: int, data: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(data), kind) + data + b"\0" * (-len(data) % 4)


def _nest(kind: int, data: bytes) -> bytes:
    return _attr(kind | NLA_F_NESTED, data)


_U32, _BE32 = struct.Struct("=I"), struct.Struct("!I")
_PORT, _PROTO = struct.Struct("!H2x"), struct.Struct("=B3x")
_SIZES = {"mark": 4, "zero": 4, "proto": 4, "port": 4, "ip4": 4, "ip6": 16, "ifname": 16, "mac": 8,
          "raw": 16}


def _address(size: int):
    def encode(value) -> bytes:
        if isinstance(value, int):
            return value.to_bytes(size, "big")
        return socket.inet_pton(socket.AF_INET if size == 4 else socket.AF_INET6, value)
    return encode


_FIELDS = {
    "mark": _U32.pack, "zero": _U32.pack, "proto": _PROTO.pack, "port": _PORT.pack,
    "ip4": _address(4), "ip6": _address(16),
    "ifname": lambda v: v.encode().ljust(16, b"\0"),
    "mac": lambda v: bytes.fromhex(v.replace(":", "")) + b"\0\0",
    "raw": lambda v: v.to_bytes(16, "big"),
}


def _header(kind: int, length: int, nested: bool = False) -> bytes:
    return struct.pack("=HH", 4 + length, kind | (NLA_F_NESTED if nested else 0))


def _value(kind: int, data: bytes) -> bytes:
    """``kind`` { NFTA_DATA_VALUE data } (data is a multiple of 4 bytes long)."""
    return _header(kind, 4 + len(data), True) + _header(NFTA_DATA_VALUE, len(data)) + data


_ENCODERS: dict = {}


def encoder(name: str, key_only: bool = False):
    """A function ``(element, value) -> NFTA_LIST_ELEM attribute`` for set ``name``."""
    found = _ENCODERS.get((name, key_only))
    if found is None:
        found = _ENCODERS[(name, key_only)] = _make_encoder(name, key_only)
    return found


def _make_encoder(name: str, key_only: bool):
    parts = identifier(name, key_only)

    def encode(element, value=None) -> bytes:
        key, end, data = parts(element, value)
        body = _value(NFTA_SET_ELEM_KEY, key)
        if end is not None:
            body += _value(NFTA_SET_ELEM_KEY_END, end)
        if data is not None:
            body += _value(NFTA_SET_ELEM_DATA, data)
        return _header(NFTA_LIST_ELEM, len(body), True) + body
    return encode


_IDENTIFIERS: dict = {}


def identifier(name: str, key_only: bool = False):
    """A function ``(element, value) -> (key, key end, data)`` bytes for set ``name``
    (``key end`` and ``data`` None where the set has none)."""
    found = _IDENTIFIERS.get((name, key_only))
    if found is None:
        found = _IDENTIFIERS[(name, key_only)] = _make_identifier(name, key_only)
    return found


def _make_identifier(name: str, key_only: bool):
    _family, kinds, vkinds, interval = SCHEMAS[name]
    # interval sets keep every field in network byte order (nft converts host-order
    # registers such as the marks before the lookup): ranges compare as bytes
    fields = [_BE32.pack if interval and k in ("mark", "zero") else _FIELDS[k] for k in kinds]
    values = [_FIELDS[k] for k in vkinds or ()] if not key_only else []

    def parts(element, value=None) -> tuple:
        if interval:
            key = b"".join([f(v[0]) for f, v in zip(fields, element)])
            end = b"".join([f(v[1]) for f, v in zip(fields, element)])
        else:
            key, end = b"".join([f(v) for f, v in zip(fields, element)]), None
        data = b"".join([f(v) for f, v in zip(values, value)]) if values else None
        return key, end, data
    return parts


def encode_element(name: str, element: tuple, value=None, key_only: bool = False) -> bytes:
    """The ``NFTA_LIST_ELEM`` attribute of one element of set ``name``."""
    return encoder(name, key_only)(element, value)


def identity(name: str, element: tuple, value=None) -> tuple:
    """``(key, key end, data)`` bytes of an element, as :meth:`ElementWriter.dump` reads them back."""
    return identifier(name)(element, value)


def _identity(attrs: dict) -> tuple:
    return tuple(_attrs(attrs[k]).get(NFTA_DATA_VALUE) if k in attrs else None
                 for k in (NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_KEY_END, NFTA_SET_ELEM_DATA))


def _attrs(data: bytes) -> dict:
    out, pos = {}, 0
    while pos + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, pos)
        if length < 4:
            break
        out.setdefault(kind & 0x3FFF, data[pos + 4:pos + length])
        pos += (length + 3) & ~3
    return out


def _all(data: bytes, kind: int) -> list:
    """Every attribute of type ``kind`` in a run of attributes (lists repeat their type)."""
    out, pos = [], 0
    while pos + 4 <= len(data):
        length, k = struct.unpack_from("=HH", data, pos)
        if length < 4:
            break
        if k & 0x3FFF == kind:
            out.append(data[pos + 4:pos + length])
        pos += (length + 3) & ~3
    return out


def _counter(attrs: dict):
    """(packets, bytes) of an element's counter expression, or None."""
    exprs = _all(attrs.get(NFTA_SET_ELEM_EXPRESSIONS, b""), NFTA_LIST_ELEM)
    if NFTA_SET_ELEM_EXPR in attrs:
        exprs.append(attrs[NFTA_SET_ELEM_EXPR])
    for expr in exprs:
        e = _attrs(expr)
        if e.get(NFTA_EXPR_NAME, b"").rstrip(b"\0") == b"counter":
            data = _attrs(e.get(NFTA_EXPR_DATA, b""))
            return (struct.unpack("!Q", data[NFTA_COUNTER_PACKETS])[0],
                    struct.unpack("!Q", data[NFTA_COUNTER_BYTES])[0])
    return None


def _messages_of(buf: bytes, out: list) -> bool:
    """Append the attributes of each message of one dump datagram; True at its end."""
    pos = 0
    while pos + 16 <= len(buf):
        length, kind, _flags, _seq, _pid = struct.unpack_from("=IHHII", buf, pos)
        if length < 16 or kind == NLMSG_DONE:
            return True
        if kind == NLMSG_ERROR:
            code = -struct.unpack_from("=i", buf, pos + 16)[0]
            if code:
                raise OSError(code, os.strerror(code))
            return True
        out.append(_attrs(buf[pos + 20:pos + length]))
        pos += (length + 3) & ~3
    return False


def _comment(userdata: bytes):
    """The comment in a rule's user data (type-length-value records, type 0), or None."""
    pos = 0
    while pos + 2 <= len(userdata):
        kind, length = userdata[pos], userdata[pos + 1]
        if kind == 0:
            return userdata[pos + 2:pos + 2 + length].rstrip(b"\0").decode(errors="replace")
        pos += 2 + length
    return None


def _without_counters(expressions: bytes) -> tuple:
    """(name, data) of each expression of a rule, a counter's values left out."""
    out = []
    for expr in _all(expressions, NFTA_LIST_ELEM):
        e = _attrs(expr)
        name = e.get(NFTA_EXPR_NAME, b"")
        out.append((name, b"" if name.rstrip(b"\0") == b"counter" else e.get(NFTA_EXPR_DATA, b"")))
    return tuple(out)


def decode_marks(key: bytes) -> tuple:
    """The identities of a ``mark . mark`` key."""
    return struct.unpack("=II", key[:8])


class ElementWriter:
    """Writes an :class:`ElementDelta` as one nf_tables batch on its own socket.

    The socket is opened on first use in the calling thread's network
    namespace. ``apply`` raises OSError (errno of the first refused message,
    naming the set) when the kernel refuses the batch: then nothing of it
    was applied.
    """

    def __init__(self) -> None:
        self._sock = None
        self._seq = 0
        self._lock = threading.Lock()

    def _socket(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
            sock.bind((0, 0))
            sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            self._sock = sock
        return self._sock

    @property
    def portid(self) -> int:
        """The netlink port id of this writer's socket (0 before first use): change
        notifications of its own batches carry it."""
        return self._sock.getsockname()[0] if self._sock is not None else 0

    def _message(self, kind: int, family: int, body: bytes, flags: int) -> bytes:
        self._seq += 1
        payload = struct.pack("=BBH", family, 0, 0) + body
        return struct.pack("=IHHII", 16 + len(payload), kind, flags, self._seq, 0) + payload

    def _batch_marker(self, kind: int) -> bytes:
        self._seq += 1
        return struct.pack("=IHHII", 20, kind, NLM_F_REQUEST, self._seq, 0) + struct.pack(
            "!BBH", 0, 0, NFNL_SUBSYS_NFTABLES)

    def _messages(self, table: str, verb: int, elements: dict, names: dict) -> list:
        out = []
        flags = NLM_F_REQUEST | NLM_F_ACK | (NLM_F_CREATE if verb == NFT_MSG_NEWSETELEM else 0)
        head_of = {}
        for name, els in elements.items():
            if not els:
                continue
            family = SCHEMAS[name][0]
            head = head_of.setdefault(name, _attr(NFTA_SET_ELEM_LIST_TABLE, table.encode() + b"\0")
                                      + _attr(NFTA_SET_ELEM_LIST_SET, name.encode() + b"\0"))
            chunk, size = [], 0
            encode = encoder(name, key_only=verb == NFT_MSG_DELSETELEM)
            for element, value in els.items():
                attr = encode(element, value)
                if size + len(attr) > MAX_ATTR:
                    out.append(self._elements_message(verb, family, head, chunk, flags, names, name))
                    chunk, size = [], 0
                chunk.append(attr)
                size += len(attr)
            out.append(self._elements_message(verb, family, head, chunk, flags, names, name))
        return out

    def _elements_message(self, verb, family, head, chunk, flags, names, name) -> bytes:
        msg = self._message((NFNL_SUBSYS_NFTABLES << 8) | verb, FAMILIES[family],
                            head + _nest(NFTA_SET_ELEM_LIST_ELEMENTS, b"".join(chunk)), flags)
        names[self._seq] = name
        return msg

    def apply(self, table: str, delta: ElementDelta) -> None:
        """Deletions, then additions, of ``delta`` in table ``table`` (both families)."""
        with self._lock:
            names: dict = {}
            parts = [self._batch_marker(NFNL_MSG_BATCH_BEGIN)]
            parts += self._messages(table, NFT_MSG_DELSETELEM, delta.delete, names)
            parts += self._messages(table, NFT_MSG_NEWSETELEM, delta.add, names)
            parts.append(self._batch_marker(NFNL_MSG_BATCH_END))
            self._send(b"".join(parts), names)

    def _send(self, batch: bytes, names: dict) -> None:
        sock = self._socket()
        try:
            sock.setsockopt(socket.SOL_SOCKET, 32, max(len(batch) * 2, 1 << 16))  # SO_SNDBUFFORCE
        except OSError:
            pass
        sock.send(batch)
        failure = None
        sock.setblocking(False)
        try:
            while True:
                failure = _first_error(sock.recv(1 << 20), names) or failure
        except BlockingIOError:
            pass
        finally:
            sock.setblocking(True)
        if failure:
            code, name = failure
            raise OSError(code, f"nf_tables refused the elements of set {name}: {os.strerror(code)}")

    def shapes(self, family: str, table: str) -> dict:
        """``{(kind, name): [shape, ...]}`` of the table's chains, sets and rules (per chain,
        in order): their netlink attributes without handles, ids and counter values.

        Raises OSError (ENOENT when the table is missing).
        """
        out: dict = {}
        name = table.encode() + b"\0"
        for kind, (request, name_attr, skip) in SHAPES.items():
            for attrs in self._dump_messages(request, FAMILIES[family], _attr(1, name)):
                if attrs.get(1) != name:
                    continue   # a chain dump is not filtered by table (nf_tables_dump_chains)
                shape = tuple((k, _without_counters(v) if kind == "rule" and k == NFTA_RULE_EXPRESSIONS
                               else v) for k, v in sorted(attrs.items()) if k not in skip)
                out.setdefault((kind, attrs.get(name_attr, b"").rstrip(b"\0").decode()), []).append(shape)
        return out

    def rule_counters(self, family: str, table: str) -> dict:
        """comment -> [packets, bytes] summed over the table's commented rules with a counter."""
        out: dict = {}
        name = table.encode() + b"\0"
        for attrs in self._dump_messages(NFT_MSG_GETRULE, FAMILIES[family], _attr(1, name)):
            comment = _comment(attrs.get(NFTA_RULE_USERDATA, b""))
            if comment is None or attrs.get(1) != name:
                continue
            for expr in _all(attrs.get(NFTA_RULE_EXPRESSIONS, b""), NFTA_LIST_ELEM):
                e = _attrs(expr)
                if e.get(NFTA_EXPR_NAME, b"").rstrip(b"\0") == b"counter":
                    data = _attrs(e.get(NFTA_EXPR_DATA, b""))
                    total = out.setdefault(comment, [0, 0])
                    total[0] += struct.unpack("!Q", data[NFTA_COUNTER_PACKETS])[0]
                    total[1] += struct.unpack("!Q", data[NFTA_COUNTER_BYTES])[0]
        return out

    def _dump_messages(self, request: int, family: int, body: bytes) -> list:
        with self._lock:
            sock = self._socket()
            sock.send(self._message((NFNL_SUBSYS_NFTABLES << 8) | request, family, body,
                                    NLM_F_REQUEST | NLM_F_DUMP))
            out: list = []
            while not _messages_of(sock.recv(1 << 20), out):
                pass
            return out

    def dump(self, table: str, name: str) -> dict:
        """``{(key, key end, data): (packets, bytes) or None}`` of set ``name`` as the kernel has it.

        Raises OSError (ENOENT: no such table or set).
        """
        with self._lock:
            family = FAMILIES[SCHEMAS[name][0]]
            body = (_attr(NFTA_SET_ELEM_LIST_TABLE, table.encode() + b"\0")
                    + _attr(NFTA_SET_ELEM_LIST_SET, name.encode() + b"\0"))
            sock = self._socket()
            sock.send(self._message((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETSETELEM, family, body,
                                    NLM_F_REQUEST | NLM_F_DUMP))
            out: dict = {}
            while not self._read_dump(sock.recv(1 << 20), out):
                pass
            return out

    @staticmethod
    def _read_dump(buf: bytes, out: dict) -> bool:
        """Add the elements of one datagram of a dump to ``out``; True at its end."""
        pos = 0
        while pos + 16 <= len(buf):
            length, kind, _flags, _seq, _pid = struct.unpack_from("=IHHII", buf, pos)
            if length < 16:
                return True
            if kind == NLMSG_DONE:
                return True
            if kind == NLMSG_ERROR:
                code = -struct.unpack_from("=i", buf, pos + 16)[0]
                if code:
                    raise OSError(code, os.strerror(code))
                return True
            attrs = _attrs(buf[pos + 20:pos + length])
            for elem in _all(attrs.get(NFTA_SET_ELEM_LIST_ELEMENTS, b""), NFTA_LIST_ELEM):
                e = _attrs(elem)
                out[_identity(e)] = _counter(e)
            pos += (length + 3) & ~3
        return False

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _first_error(buf: bytes, names: dict):
    pos = 0
    while pos + 16 <= len(buf):
        length, kind, _flags, seq, _pid = struct.unpack_from("=IHHII", buf, pos)
        if length < 16:
            break
        if kind == NLMSG_ERROR:
            code = -struct.unpack_from("=i", buf, pos + 16)[0]
            if code:
                return code, names.get(seq, "?")
        pos += (length + 3) & ~3
    return None


__all__ = ["ElementWriter", "encode_element"]
