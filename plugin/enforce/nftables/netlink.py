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

import itertools
import operator
import os
import socket
import struct
import threading

from .elements import SCHEMAS, ElementDelta

from .nftdump import (FAMILIES, NFNL_SUBSYS_NFTABLES, NFTA_DATA_VALUE, NFTA_LIST_ELEM,
                      NFTA_SET_ELEM_DATA, NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_KEY_END,
                      NFTA_SET_ELEM_LIST_ELEMENTS, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_TABLE,
                      NLM_F_REQUEST, NLMSG_ERROR, TableReader, _attr, _attrs)

NETLINK_NETFILTER = 12
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 0x10, 0x11
NFT_MSG_NEWSETELEM, NFT_MSG_DELSETELEM = 12, 14
NFT_MSG_NEWGEN, NFT_MSG_GETGEN, NFTA_GEN_ID = 15, 16, 1
QUIET_MIN = 512        # elements from which a batch is sent with the change watcher paused
NLM_F_ACK, NLM_F_CREATE = 0x4, 0x400
NLA_F_NESTED = 0x8000
SOL_NETLINK, NETLINK_CAP_ACK = 270, 10
MAX_ATTR = 60000       # an attribute's length is 16 bits: elements go in chunks


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
    """Keys, ends and values of a set have fixed lengths: every header of an
    element is the same bytes, computed once here (deltas hold ~10^4 elements)."""
    _family, kinds, vkinds, interval = SCHEMAS[name]
    parts = identifier(name, key_only)
    klen = sum(_SIZES[k] for k in kinds)
    dlen = sum(_SIZES[k] for k in vkinds) if vkinds and not key_only else 0
    body = (8 + klen) * (2 if interval else 1) + (8 + dlen if dlen else 0)
    head = _header(NFTA_LIST_ELEM, body, True) + _header(NFTA_SET_ELEM_KEY, 4 + klen, True) + \
        _header(NFTA_DATA_VALUE, klen)
    end_head = _header(NFTA_SET_ELEM_KEY_END, 4 + klen, True) + _header(NFTA_DATA_VALUE, klen)
    data_head = _header(NFTA_SET_ELEM_DATA, 4 + dlen, True) + _header(NFTA_DATA_VALUE, dlen)
    if not interval and not dlen and all(k in _NUMERIC for k in kinds):   # the policy sets
        key = _numeric_key(kinds)
        return lambda element, value=None: head + key(element)

    def encode(element, value=None) -> bytes:
        key, end, data = parts(element, value)
        out = head + key
        if end is not None:
            out += end_head + end
        if data is not None:
            out += data_head + data
        return out
    return encode


_IDENTIFIERS: dict = {}


def identifier(name: str, key_only: bool = False):
    """A function ``(element, value) -> (key, key end, data)`` bytes for set ``name``
    (``key end`` and ``data`` None where the set has none)."""
    found = _IDENTIFIERS.get((name, key_only))
    if found is None:
        found = _IDENTIFIERS[(name, key_only)] = _make_identifier(name, key_only)
    return found


_NUMERIC = {"mark": "I", "zero": "I", "proto": "B3x", "port": "H2x"}   # one struct for the whole key


def _numeric_key(kinds: tuple):
    """``element -> key bytes`` of a set without intervals whose key fields are all
    numbers, by one struct: ports (network order) are swapped first. Written out for
    the shapes of the policy sets (the port last, if any), whose deltas hold ~10^4
    elements; any other shape by the general loop."""
    layout = struct.Struct("=" + "".join(_NUMERIC[k] for k in kinds))
    pack, htons = layout.pack, socket.htons
    ports = [i for i, k in enumerate(kinds) if k == "port"]
    if not ports:
        return lambda element: pack(*element)
    if ports == [3] and len(kinds) == 4:
        return lambda e: pack(e[0], e[1], e[2], htons(e[3]))
    if ports == [2] and len(kinds) == 3:
        return lambda e: pack(e[0], e[1], htons(e[2]))
    return lambda element: pack(*[htons(v) if i in ports else v for i, v in enumerate(element)])


_BULK: dict = {}


def bulk_encoder(name: str, key_only: bool = False):
    """A function ``elements (list) -> bytes``: the ``NFTA_LIST_ELEM`` attributes of the
    elements of set ``name`` one after the other, as :func:`encoder` gives them, without
    a Python call per element (a 10,000-rule set sends 20,000); None for sets other
    than those of numeric keys without intervals or values (the policy sets)."""
    found = _BULK.get((name, key_only), False)
    if found is False:
        found = _BULK[(name, key_only)] = _make_bulk(name, key_only)
    return found


def _make_bulk(name: str, key_only: bool):
    _family, kinds, vkinds, interval = SCHEMAS[name]
    if interval or (vkinds and not key_only) or not all(k in _NUMERIC for k in kinds):
        return None
    layout = struct.Struct("=" + "".join(_NUMERIC[k] for k in kinds))
    head = encoder(name, key_only)((0,) * len(kinds))[:-layout.size]   # the same header bytes
    columns = [(operator.itemgetter(i), k == "port") for i, k in enumerate(kinds)]

    def encode_all(elements: list) -> bytes:
        if not elements:
            return b""
        fields = [map(socket.htons, map(get, elements)) if port else map(get, elements)
                  for get, port in columns]
        return head + head.join(itertools.starmap(layout.pack, zip(*fields)))
    return encode_all


def _numeric_identifier(kinds: tuple, interval: bool):
    """``parts`` of a set whose key fields are all numbers (the policy sets), by one
    struct: network-order fields are swapped first (ports; marks of interval sets)."""
    if not interval:
        key = _numeric_key(kinds)
        return lambda element, value=None: (key(element), None, None)
    layout = struct.Struct("=" + "".join(_NUMERIC[k] for k in kinds))
    swap = [socket.htons if k == "port" else socket.htonl if k in ("mark", "zero") else None for k in kinds]
    swaps = [(i, f) for i, f in enumerate(swap) if f is not None]

    def pack(*values) -> bytes:
        values = list(values)
        for i, f in swaps:
            values[i] = f(values[i])
        return layout.pack(*values)
    return lambda element, value=None: (pack(*[v[0] for v in element]), pack(*[v[1] for v in element]), None)


def _make_identifier(name: str, key_only: bool):
    _family, kinds, vkinds, interval = SCHEMAS[name]
    if all(k in _NUMERIC for k in kinds) and (key_only or not vkinds):
        return _numeric_identifier(kinds, interval)
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


class ElementWriter(TableReader):
    """Writes an :class:`ElementDelta` as one nf_tables batch on its own socket
    (and reads the table back: :class:`nftdump.TableReader`).

    The socket is opened on first use in the calling thread's network
    namespace. ``apply`` raises OSError (errno of the first refused message,
    naming the set) when the kernel refuses the batch: then nothing of it
    was applied.
    """

    def __init__(self) -> None:
        self._sock = None
        self._portid = 0
        self._seq = 0
        self._lock = threading.Lock()
        self.quiet = None   # the change watcher to pause around large batches (NftWatcher)

    def _socket(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
            sock.bind((0, 0))
            sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            self._sock, self._portid = sock, sock.getsockname()[0]
        return self._sock

    def open(self) -> int:
        """Open the socket now (in the calling thread's network namespace); its port id."""
        self._socket()
        return self._portid

    @property
    def portid(self) -> int:
        """The netlink port id of this writer's socket (0 before first use): change
        notifications of its own batches carry it."""
        return self._portid if self._sock is not None else 0

    def _message(self, kind: int, family: int, body: bytes, flags: int) -> bytes:
        self._seq += 1
        payload = struct.pack("=BBH", family, 0, 0) + body
        return struct.pack("=IHHII", 16 + len(payload), kind, flags, self._seq, 0) + payload

    def _batch_marker(self, kind: int) -> bytes:
        self._seq += 1
        return struct.pack("=IHHII", 20, kind, NLM_F_REQUEST, self._seq, 0) + struct.pack(
            "!BBH", 0, 0, NFNL_SUBSYS_NFTABLES)

    def _messages(self, table: str, verb: int, elements: dict, names: dict, flush=frozenset()) -> list:
        """The messages of ``verb`` for ``elements`` (``{set: {element: value}}``); a set of
        ``flush`` (deletions only) is one message without elements: the kernel then deletes
        every element the set holds (nf_tables_delsetelem -> nft_set_flush, Linux >= 4.10)."""
        out = []
        flags = NLM_F_REQUEST | NLM_F_ACK | (NLM_F_CREATE if verb == NFT_MSG_NEWSETELEM else 0)
        head_of = {}
        for name, els in elements.items():
            if not els:
                continue
            family = SCHEMAS[name][0]
            head = head_of.setdefault(name, _attr(NFTA_SET_ELEM_LIST_TABLE, table.encode() + b"\0")
                                      + _attr(NFTA_SET_ELEM_LIST_SET, name.encode() + b"\0"))
            if verb == NFT_MSG_DELSETELEM and name in flush:
                out.append(self._message((NFNL_SUBSYS_NFTABLES << 8) | verb, FAMILIES[family], head, flags))
                names[self._seq] = name
                continue
            encode = encoder(name, key_only=verb == NFT_MSG_DELSETELEM)
            per = max(1, MAX_ATTR // len(encode(*next(iter(els.items())))))   # elements of a set: one length
            bulk = bulk_encoder(name, key_only=verb == NFT_MSG_DELSETELEM)
            keys, items = iter(els), iter(els.items())
            for _ in range(0, len(els), per):   # a chunk's attributes at a time: no 10^4 small bytes at once
                chunk = bulk(list(itertools.islice(keys, per))) if bulk is not None else \
                    b"".join(itertools.starmap(encode, itertools.islice(items, per)))
                out.append(self._elements_message(verb, family, head, chunk, flags, names, name))
        return out

    def _elements_message(self, verb, family, head, chunk: bytes, flags, names, name) -> bytes:
        msg = self._message((NFNL_SUBSYS_NFTABLES << 8) | verb, FAMILIES[family],
                            head + _nest(NFTA_SET_ELEM_LIST_ELEMENTS, chunk), flags)
        names[self._seq] = name
        return msg

    def apply(self, table: str, delta: ElementDelta) -> None:
        """Deletions, then additions, of ``delta`` in table ``table`` (both families).

        A delta of :data:`QUIET_MIN` elements or more is sent with :attr:`quiet` (the
        daemon's :class:`~plugin.kernel.nftwatch.NftWatcher`) paused, so that the kernel
        builds no notification per element; when the ruleset's generation moved by more
        than this batch's own commit meanwhile, the watcher is told (:meth:`lost`)."""
        with self._lock:
            names: dict = {}
            parts = [self._batch_marker(NFNL_MSG_BATCH_BEGIN)]
            parts += self._messages(table, NFT_MSG_DELSETELEM, delta.delete, names, delta.flush)
            parts += self._messages(table, NFT_MSG_NEWSETELEM, delta.add, names)
            if delta.kept:   # a flushed set's elements that stay
                parts += self._messages(table, NFT_MSG_NEWSETELEM, delta.kept, names)
            parts.append(self._batch_marker(NFNL_MSG_BATCH_END))
            watcher = self.quiet if delta.size() >= QUIET_MIN else None
            if watcher is None:
                self._send(b"".join(parts), names)
            else:
                self._send_quietly(watcher, b"".join(parts), names)

    def _send_quietly(self, watcher, batch: bytes, names: dict) -> None:
        try:
            before = self._generation()
        except OSError:
            self._send(batch, names)
            return
        committed = 0
        watcher.pause()
        try:
            self._send(batch, names)
            committed = 1
        finally:
            watcher.resume()
            try:
                moved = (self._generation() - before) & 0xFFFFFFFF
            except OSError:
                moved = None
            if moved != committed:
                watcher.lost()

    def generation(self) -> int:
        """The nf_tables ruleset generation of this namespace (``NFT_MSG_GETGEN``: one
        request; every committed transaction adds one, an aborted one nothing).
        Raises OSError."""
        with self._lock:
            return self._generation()

    def _generation(self) -> int:
        sock = self._socket()
        sock.send(self._message((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN, 0, b"", NLM_F_REQUEST))
        seq = self._seq
        while True:
            buf = sock.recv(1 << 16)
            pos = 0
            while pos + 16 <= len(buf):
                length, kind, _flags, got, _pid = struct.unpack_from("=IHHII", buf, pos)
                if length < 16:
                    break
                if got == seq and kind == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", buf, pos + 16)[0]
                    raise OSError(code or 71, "NFT_MSG_GETGEN: " + os.strerror(code or 71))
                if got == seq and kind == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN:
                    attrs = _attrs(buf[pos + 20:pos + length])
                    return _BE32.unpack(attrs[NFTA_GEN_ID][:4])[0]
                pos += (length + 3) & ~3

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


__all__ = ["ElementWriter", "encode_element", "identifier"]
