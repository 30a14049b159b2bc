"""plugin.kernel.linkgroups: an RTM_GETLINK dump read for two attributes (crafted datagrams;
the real kernel's in tests/kernel/test_linkgroups.py)."""
from __future__ import annotations

import errno
import struct

import pytest

from plugin.kernel.linkgroups import (IFLA_GROUP, IFLA_IFALIAS, IFLA_IFNAME, IFLA_INFO_KIND, IFLA_LINKINFO,
                                     NLMSG_DONE, NLMSG_ERROR, RTM_NEWLINK, _parse)


def _attr(kind: int, value: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(value), kind) + value
    return raw + b"\0" * (-len(raw) % 4)


def _msg(kind: int, seq: int, body: bytes, flags: int = 2) -> bytes:   # NLM_F_MULTI
    return struct.pack("=IHHII", 16 + len(body), kind, flags, seq, 0) + body


def _link(name: str, group=None, extra: bytes = b"") -> bytes:
    body = struct.pack("=BxHiII", 0, 1, 7, 0, 0) + extra + _attr(IFLA_IFNAME, name.encode() + b"\0")
    if group is not None:
        body += _attr(IFLA_GROUP, struct.pack("=I", group))
    return body


def test_names_groups_aliases_and_kinds_of_a_dump_up_to_its_end():
    other = _attr(1, b"\x02\x42\x0a\x00\x00\x02")   # IFLA_ADDRESS: skipped, 2 bytes of padding
    info = _attr(IFLA_LINKINFO | 0x8000, _attr(IFLA_INFO_KIND, b"veth\0") + _attr(2, b"\0" * 8))   # NLA_F_NESTED
    data = (_msg(RTM_NEWLINK, 5, _link("veth1", 0x5ec0001, other + info + _attr(IFLA_IFALIAS, b"secnet:ab\0")))
            + _msg(RTM_NEWLINK, 5, _link("lo"))
            + _msg(RTM_NEWLINK, 4, _link("stale", 9)))   # another request's answer: not ours
    out: list = []
    assert _parse(memoryview(data), 5, out) == (False, False)   # more datagrams to come
    assert out == [("veth1", 0x5ec0001, "secnet:ab", "veth"), ("lo", 0, None, None)]
    assert _parse(memoryview(_msg(NLMSG_DONE, 5, struct.pack("=i", 0))), 5, out) == (True, False)


def test_a_dump_the_kernel_marks_interrupted_is_told_and_not_returned(monkeypatch):
    """NLM_F_DUMP_INTR (0x10): links changed during the dump; LinkGroups dumps again, and
    after ``attempts`` interrupted dumps fails (a missing port would be taken as absent)."""
    from plugin.kernel.linkgroups import LinkGroups
    out: list = []
    assert _parse(memoryview(_msg(RTM_NEWLINK, 1, _link("a"), 0x12) + _msg(NLMSG_DONE, 1, b"\0" * 4, 0x12)),
                  1, out) == (True, True)
    answers = iter([(["partial"], True), (["whole"], False)])
    links = LinkGroups()
    monkeypatch.setattr(links, "_dump", lambda: next(answers))
    assert links.links() == ["whole"]
    monkeypatch.setattr(links, "_dump", lambda: (["partial"], True))
    with pytest.raises(OSError) as err:
        links.links(attempts=3)
    assert err.value.errno == errno.EINTR


def test_the_kernels_error_is_raised_with_its_errno():
    data = _msg(NLMSG_ERROR, 3, struct.pack("=i", -errno.EPERM) + b"\0" * 16)
    with pytest.raises(OSError) as err:
        _parse(memoryview(data), 3, [])
    assert err.value.errno == errno.EPERM


def test_a_message_shorter_than_its_header_is_refused():
    with pytest.raises(OSError, match="malformed"):
        _parse(memoryview(struct.pack("=IHHII", 8, RTM_NEWLINK, 2, 1, 0)), 1, [])
