"""DNS over TCP: the answers of one connection, put back together from its segments.

Each queued segment of a DNS-over-TCP connection (server port 53) is fed in
the order the kernel queued it. Bytes are appended while they follow on
(``seq`` equals the next expected one; a retransmission's old bytes are
skipped); whole length-prefixed messages come out. A gap (a segment lost
before it reached the host) drops what was buffered and waits for the next
SYN: those answers are not learned, their addresses stay denied (fail
closed). The last segment of a message is held like any answer, so the
client cannot use it before its addresses are in force.

Bounded: at most ``MAX_STREAMS`` connections (the least recently used goes)
and ``MAX_BUFFER`` bytes each (one message of the largest size).
"""
from __future__ import annotations

import struct
from collections import OrderedDict

from .answers import Datagram

SYN, FIN, RST = 0x02, 0x01, 0x04
MAX_STREAMS = 1024
MAX_BUFFER = 2 + 65535
_WRAP = 1 << 32


class TcpStreams:
    """Reassembles the server-to-client direction of DNS-over-TCP connections."""

    def __init__(self, max_streams: int = MAX_STREAMS):
        self.max_streams = max_streams
        self._streams: OrderedDict = OrderedDict()   # flow -> [next seq, buffer]

    def __len__(self) -> int:
        return len(self._streams)

    def messages(self, dgram: Datagram) -> list:
        """The whole DNS wire messages this segment completes (often none)."""
        flow = (dgram.src, dgram.sport, dgram.dst, dgram.dport)
        if dgram.flags & (FIN | RST):
            self._streams.pop(flow, None)
        if dgram.flags & SYN:
            self._remember(flow, [(dgram.seq + 1) % _WRAP, b""])
            return []
        state = self._streams.get(flow)
        if state is None or not dgram.payload:
            return []
        self._streams.move_to_end(flow)
        offset = (state[0] - dgram.seq) % _WRAP     # bytes of this segment already seen
        if offset >= _WRAP // 2:                     # it starts after a gap
            self._streams.pop(flow)
            return []
        fresh = dgram.payload[offset:]
        state[0] = (state[0] + len(fresh)) % _WRAP
        state[1] += fresh
        return self._split(flow, state)

    def _remember(self, flow: tuple, state: list) -> None:
        self._streams[flow] = state
        self._streams.move_to_end(flow)
        while len(self._streams) > self.max_streams:
            self._streams.popitem(last=False)

    def _split(self, flow: tuple, state: list) -> list:
        out, data = [], state[1]
        while len(data) >= 2:
            size = struct.unpack("!H", data[:2])[0]
            if len(data) < 2 + size:
                break
            out.append(data[2:2 + size])
            data = data[2 + size:]
        if len(data) > MAX_BUFFER:
            self._streams.pop(flow, None)
            return out
        state[1] = data
        return out
