"""What reached each end during a phase of the differential test: frames sniffed
at the containers' and the outside host's ``eth0`` (AF_PACKET, inbound only).

A probe the model drops may still *reach* its destination while the reply is
dropped (a one-way leak: the probe then times out, as a drop does). So for
every dropped cell the destination must not have received the flow's first
packet -- a TCP SYN, a UDP datagram or an ICMP/ICMPv6 echo request with the
cell's addresses, protocol and port. Within one phase a (src, dst, proto,
port, family) appears once, so a packet names its cell.

Egress to the outside host is masqueraded (the host's address is the source
there), so at the outside a packet is matched without its source, and only
when no passing cell of the phase has the same protocol, port and family.

The contract's deviations (docs/deviations.md): "A unicast frame reaches only
the container whose MAC it is for" -- on both backends, in both modes. So any
frame with a unicast destination MAC that is not the container's own, seen at
a container, is a leak too (a flooded copy).
"""
from __future__ import annotations

import ipaddress
import socket

from packets import Sniffer, mac_bytes

RCVBUF = 8 << 20     # frames wait in the socket until the phase's probes are done
SO_RCVBUFFORCE = 33  # <asm-generic/socket.h>: as SO_RCVBUF, past rmem_max (root); not in Python's socket
PROTOS = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmp"}


class Catch:
    """Sniffers on ``ends`` (end name -> lab Container), opened now."""

    def __init__(self, ends: dict):
        self.ends = ends
        self.sniffers = {}
        try:
            for end, box in ends.items():
                sniffer = Sniffer(box)
                sniffer.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
                self.sniffers[end] = sniffer
        except BaseException:
            self.close()
            raise

    def collect(self) -> dict:
        """end -> [frame] received since the sniffers opened; closes them."""
        try:
            return {end: _drain(s) for end, s in self.sniffers.items()}
        finally:
            self.close()

    def close(self) -> None:
        for s in self.sniffers.values():
            s.close()
        self.sniffers = {}


def _drain(sniffer: Sniffer) -> list:
    out = []
    while True:
        try:
            data, addr = sniffer.sock.recvfrom(65535)
        except (socket.timeout, BlockingIOError):
            return out
        if addr[2] != 4:    # PACKET_OUTGOING: what the namespace sent itself
            out.append(data)


def first_packet(frame: bytes):
    """(src, dst, proto, port) of a frame that opens a flow (a TCP SYN without ACK, a
    UDP datagram, an ICMP/ICMPv6 echo request), addresses as text; else None."""
    kind = frame[12:14]
    if kind == b"\x08\x00":
        ihl = (frame[14] & 0x0F) * 4
        number, src, dst, l4 = frame[23], frame[26:30], frame[30:34], frame[14 + ihl:]
    elif kind == b"\x86\xdd":
        number, src, dst, l4 = frame[20], frame[22:38], frame[38:54], frame[54:]
    else:
        return None
    proto = PROTOS.get(number)
    if proto is None or len(l4) < 14 and proto == "tcp" or len(l4) < 4:
        return None
    if proto == "tcp" and l4[13] & 0x12 != 0x02:
        return None
    if proto == "icmp" and l4[0] not in (8, 128):
        return None
    port = None if proto == "icmp" else int.from_bytes(l4[2:4], "big")
    return str(ipaddress.ip_address(src)), str(ipaddress.ip_address(dst)), proto, port


def leaks(run, phase: int, drawn: list, passes: list, seen: dict) -> list:
    """Lines naming every dropped cell whose first packet reached its destination, and
    every frame for another MAC that reached a container."""
    got = {end: {p for f in frames if (p := first_packet(f))} for end, frames in seen.items()}
    bad, outside = [], {}
    for cell, ok in zip(drawn, passes):
        src, dst, proto, port, fam = cell
        if ok or dst not in got:
            continue
        if dst == "outside":
            outside.setdefault((proto, port, fam), []).append(cell)
        elif (run.address(src, fam), run.address(dst, fam), proto, port) in got[dst]:
            bad.append(f"phase {phase} {_show(cell)}: model dropped, but its first packet reached {dst}")
    return bad + _outside(run, phase, drawn, passes, got.get("outside", set()), outside) + flooded(run, phase, seen)


def _outside(run, phase: int, drawn: list, passes: list, got: set, dropped: dict) -> list:
    """The outside host sees masqueraded sources: one line per service that a dropped
    cell's packet reached it on, when no passing cell of the phase used that service."""
    open_out = {c[2:] for c, ok in zip(drawn, passes) if ok and c[1] == "outside"}
    bad = []
    for (proto, port, fam), cells_ in sorted(dropped.items(), key=str):
        if (proto, port, fam) not in open_out and (run.address("outside", fam), proto, port) in \
                {p[1:] for p in got}:
            who = ", ".join(_show(c) for c in cells_)
            bad.append(f"phase {phase} {who}: model dropped, but a first packet reached outside"
                       " (masqueraded: one of these)")
    return bad


def flooded(run, phase: int, seen: dict) -> list:
    """Frames with a unicast destination MAC other than the container's, at a container."""
    bad = []
    for end, frames in seen.items():
        if end == "outside":
            continue
        own = mac_bytes(run.ends[end].mac)
        for f in frames:
            if not f[0] & 1 and f[:6] != own:
                what = first_packet(f) or f"ethertype {f[12:14].hex()}"
                bad.append(f"phase {phase}: a frame for {f[:6].hex(':')} reached {end} ({what})")
    return bad[:20]


def _show(cell) -> str:
    src, dst, proto, port, fam = cell
    return f"{src}->{dst} {proto}/{port or '-'} v{fam}"
