"""Reading nf_tables back over netlink: set elements with their counters, the
shapes of a table's chains, sets and rules, and rule counters by comment.

Kernel background. A *dump* request (``NLM_F_DUMP``) for ``NFT_MSG_GETSETELEM``,
``NFT_MSG_GETCHAIN``, ``NFT_MSG_GETRULE`` or ``NFT_MSG_GETSET`` is answered
with a run of datagrams, each holding messages of netlink attributes, ended
by ``NLMSG_DONE`` (or ``NLMSG_ERROR`` with a negative errno). Attributes are
type-length-value records padded to 4 bytes; nested ones set
``NLA_F_NESTED`` in the type. :class:`TableReader` is mixed into
:class:`netlink.ElementWriter`, whose socket it reads on.
"""
from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct

from .elements import SCHEMAS

NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_GETSETELEM = 13
_NESTED = 0x8000
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
NFTA_SET_ELEM_EXPR, NFTA_SET_ELEM_EXPRESSIONS = 7, 11
NFTA_EXPR_NAME, NFTA_EXPR_DATA = 1, 2
NFTA_COUNTER_BYTES, NFTA_COUNTER_PACKETS = 1, 2
NFT_MSG_GETCHAIN, NFT_MSG_GETRULE, NFT_MSG_GETSET = 4, 7, 10
NFTA_RULE_EXPRESSIONS, NFTA_RULE_USERDATA = 4, 7
NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_ELEMENTS = 1, 2, 3
NFTA_LIST_ELEM = 1
NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_DATA, NFTA_SET_ELEM_KEY_END = 1, 2, 10
NFTA_DATA_VALUE = 1
FAMILIES = {"inet": 1, "bridge": 7}
FAMILIES_ALL = {"inet": 1, "ip": 2, "arp": 3, "netdev": 5, "bridge": 7, "ip6": 10}


NFT_MSG_GETOBJ, NFTA_OBJ_TABLE, NFTA_OBJ_NAME, NFTA_OBJ_TYPE, NFTA_OBJ_DATA = 19, 1, 2, 3, 4
NFT_OBJECT_COUNTER = 1


NFT_MSG_GETTABLE, NFTA_TABLE_NAME = 1, 1


def _request(msg: bytes) -> bytes:
    """Send one request on a new NETLINK_NETFILTER socket (the caller's namespace); the
    answer's first message, or OSError with the kernel's errno."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)   # NETLINK_NETFILTER
    try:
        sock.send(msg)
        buf = sock.recv(1 << 16)
    finally:
        sock.close()
    length, kind = struct.unpack_from("=IH", buf, 0)
    if kind == NLMSG_ERROR:
        code = -struct.unpack_from("=i", buf, 16)[0]
        raise OSError(code, os.strerror(code))
    return buf[:length]


def table_exists(family: str, table: str) -> bool:
    """Whether ``table`` of ``family`` exists: one ``NFT_MSG_GETTABLE`` (not a dump),
    answered with the table or ENOENT (``nft list table`` fetches the whole ruleset
    first). Raises OSError for other errors (EPERM)."""
    body = _attr(NFTA_TABLE_NAME, table.encode() + b"\0")
    head = struct.pack("=BBH", FAMILIES_ALL[family], 0, 0)
    try:
        _request(struct.pack("=IHHII", 16 + len(head) + len(body),
                             (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE, NLM_F_REQUEST, 1, 0) + head + body)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True


def object_counter(family: str, table: str, name: str) -> tuple:
    """``(packets, bytes)`` of the named counter ``name`` of ``table``: one
    ``NFT_MSG_GETOBJ`` (not a dump; table, name and ``NFT_OBJECT_COUNTER``), answered
    with that object alone. ``nft list counter`` fetches the whole ruleset first, set
    elements included (nft 1.0.6: ~385 ms beside a 50,000-element set). Raises OSError
    (ENOENT: no such table or counter)."""
    body = (_attr(NFTA_OBJ_TABLE, table.encode() + b"\0") + _attr(NFTA_OBJ_NAME, name.encode() + b"\0")
            + _attr(NFTA_OBJ_TYPE, struct.pack("!I", NFT_OBJECT_COUNTER)))
    head = struct.pack("=BBH", FAMILIES_ALL[family], 0, 0)
    msg = struct.pack("=IHHII", 16 + len(head) + len(body), (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETOBJ,
                      NLM_F_REQUEST, 1, 0) + head + body
    buf = _request(msg)
    data = _attrs(_attrs(buf[20:]).get(NFTA_OBJ_DATA, b""))
    return (struct.unpack("!Q", data[NFTA_COUNTER_PACKETS])[0], struct.unpack("!Q", data[NFTA_COUNTER_BYTES])[0])


def _attr(kind: int, data: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(data), kind) + data + b"\0" * (-len(data) % 4)


#: per object kind: (request, attribute holding the name, attributes that are not its shape:
#: handles, ids, reference counts, counter values)
SHAPES = {"chain": (NFT_MSG_GETCHAIN, 3, {2, 6, 8, 9, 11}),
          "rule": (NFT_MSG_GETRULE, 2, {3, 6, 8, 9, 10, 11}),
          "set": (NFT_MSG_GETSET, 2, {10, 14, 16, 20})}   # 20: element count


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


def decode_mark_port(key: bytes) -> tuple:
    """(identity, port name) of a ``mark . ifname`` key (the name NUL-padded to IFNAMSIZ)."""
    return struct.unpack("=I", key[:4])[0], key[4:20].split(b"\0", 1)[0].decode()


def decode_port_address(key: bytes) -> tuple:
    """(port name, address text) of an ``ifname . ipv4_addr`` or ``ifname . ipv6_addr`` key."""
    return key[:16].split(b"\0", 1)[0].decode(), str(ipaddress.ip_address(key[16:]))


_PORT_KEY = struct.Struct("=IIB3xH2x")


def decode_port_key(key: bytes) -> tuple:
    """A ``mark . mark . inet_proto . inet_service`` key (16 bytes: ``pol_port``'s,
    ``hit_port``'s) as its element ``(src, dst, protocol number, port)``."""
    src, dst, proto, port = _PORT_KEY.unpack(key)
    return src, dst, proto, socket.ntohs(port)


def decode_pair(key: bytes) -> tuple:
    """A pair set's key: ``mark . mark`` (8 bytes) or ``mark . ifname`` (20)."""
    return decode_marks(key) if len(key) == 8 else decode_mark_port(key)


class TableReader:
    """Dumps of one nf_tables table, on the socket of the class it is mixed into
    (which gives ``_socket()``, ``_lock`` and ``_message()``: :class:`netlink.ElementWriter`)."""

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

    def held(self, table: str, name: str, elements: list, encode) -> list:
        """The elements of ``elements`` that set ``name`` holds: one ``NFT_MSG_GETSETELEM``
        (not a dump) per element, answered with the element or ENOENT (also when the set or
        the table is missing: then it holds none). ``encode``: element -> its
        ``NFTA_LIST_ELEM`` attribute (key only). For a few elements of a set that may hold
        many. Raises OSError for other refusals."""
        with self._lock:
            family = FAMILIES[SCHEMAS[name][0]]
            head = (_attr(NFTA_SET_ELEM_LIST_TABLE, table.encode() + b"\0")
                    + _attr(NFTA_SET_ELEM_LIST_SET, name.encode() + b"\0"))
            sock, found = self._socket(), []
            for element in elements:
                sock.send(self._message((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETSETELEM, family,
                                        head + _attr(NFTA_SET_ELEM_LIST_ELEMENTS | _NESTED, encode(element)),
                                        NLM_F_REQUEST))
                got: list = []
                try:
                    _messages_of(sock.recv(1 << 16), got)
                except OSError as exc:
                    if exc.errno != errno.ENOENT:
                        raise
                    continue
                if got:
                    found.append(element)
            return found

    @staticmethod
    def _read_dump(buf: bytes, out: dict) -> bool:
        """Add the elements of one datagram of a dump to ``out``; True at its end."""
        messages: list = []
        done = _messages_of(buf, messages)
        for attrs in messages:
            for elem in _all(attrs.get(NFTA_SET_ELEM_LIST_ELEMENTS, b""), NFTA_LIST_ELEM):
                e = _attrs(elem)
                out[_identity(e)] = _counter(e)
        return done

