"""ElementWriter without a kernel: a large element delta is sent with the change
watcher out of its group (``unheard``), a small one heard as usual."""
from __future__ import annotations

import contextlib
import socket
import struct

import pytest

from plugin.enforce.nftables.elements import ElementDelta
from plugin.enforce.nftables.netlink import UNHEARD_FROM, ElementWriter


def delta_of(n: int) -> ElementDelta:
    delta = ElementDelta()
    for port in range(1, n + 1):
        delta.add["pol_port"][(1, 2, 6, port)] = None
    return delta


def writer_recording():
    writer, log = ElementWriter(), []
    writer._send = lambda batch, names: log.append(("send", len(names)))

    @contextlib.contextmanager
    def unheard(generation):
        log.append(("leave", generation == writer._generation))
        yield
        log.append(("join", None))
    writer.unheard = unheard
    return writer, log


def test_a_large_delta_is_sent_unheard():
    writer, log = writer_recording()
    writer.apply("secnet_x", delta_of(UNHEARD_FROM))
    assert [step for step, _ in log] == ["leave", "send", "join"]
    assert log[0][1]   # the watcher reads the generation through this writer's socket


def test_a_small_delta_and_a_writer_without_watcher_are_heard():
    writer, log = writer_recording()
    writer.apply("secnet_x", delta_of(UNHEARD_FROM - 1))
    assert [step for step, _ in log] == ["send"]
    plain = ElementWriter()
    sent = []
    plain._send = lambda batch, names: sent.append(batch)
    plain.apply("secnet_x", delta_of(UNHEARD_FROM))
    assert len(sent) == 1 and plain.unheard is None


def _reply(kind: int, seq: int, payload: bytes) -> bytes:
    return struct.pack("=IHHII", 16 + len(payload), kind, 0, seq, 0) + payload


def _newgen(seq: int, gen: int) -> bytes:
    return _reply((10 << 8) | 15, seq, b"\0\0\0\0" + struct.pack("=HH", 8, 1) + struct.pack("!I", gen))


def test_the_generation_is_read_from_the_answer_to_getgen():
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        writer = ElementWriter()
        writer._sock, writer._seq = ours, 41
        theirs.send(_newgen(7, 1) + _newgen(42, 0x01020304))   # a stale answer first
        assert writer._generation() == 0x01020304
        request = theirs.recv(100)
        assert struct.unpack_from("=IHHI", request)[1:4:2] == ((10 << 8) | 16, 42)
        theirs.send(_reply(2, 43, struct.pack("=i", -1) + b"\0" * 16))   # NLMSG_ERROR -EPERM
        with pytest.raises(OSError) as err:
            writer._generation()
        assert err.value.errno == 1
    finally:
        ours.close()
        theirs.close()
