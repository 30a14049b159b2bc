"""Real packets from one container's namespace to another's, for `secnet verify`.

Every socket is made inside the namespace it belongs to (:mod:`plugin.kernel.netns`)
and then driven from the caller's thread, all probes at once, with one
selector and one deadline. Nothing runs inside the containers and nothing is
left behind: every socket is closed when :meth:`Session.run` returns.

How each kind of probe is observed:

* tcp: a non-blocking ``connect`` from the source, bound to its address. A
  listener (never accepting: the kernel completes the handshake) is put on
  the destination's address and port unless something already listens
  there. Connected, or refused (the RST answers a SYN that arrived), means
  the flow got through; silence until the deadline means it was dropped.
* udp: a datagram carrying a unique token; a raw ``IPPROTO_UDP`` socket in
  the destination's namespace sees a copy of every UDP datagram delivered
  there, whoever listens on the port, so arrival is observed without a reply.
* icmp: an echo request with a token from a raw socket of the source; the
  echo reply (or the request itself, seen by a raw socket of the
  destination when that namespace is also a source) shows it got through.
"""
from __future__ import annotations

import errno
import os
import re
import selectors
import socket
import time
from dataclasses import dataclass
from typing import Optional

from plugin.kernel import netns
from plugin.kernel.icmp import echo_request

TOKEN = re.compile(rb"snv-([0-9a-f]{8})-([0-9a-f]{6})")
REACHED = ("connected", "refused", "seen", "answered")


@dataclass(frozen=True)
class Spec:
    """One probe: ``proto`` (tcp/udp/icmp) from the source to the destination."""

    id: int
    proto: str
    family: int
    src_netns: str
    src_addr: str
    dst_netns: str
    dst_addr: str
    port: Optional[int] = None


def reached(outcome: str) -> bool:
    return outcome in REACHED


def _fam(family: int) -> int:
    return socket.AF_INET if family == 4 else socket.AF_INET6


def _make_sockets(needs: dict) -> dict:
    """Runs inside one namespace: the sockets ``needs`` asks for (see Session._needs)."""
    made = {"listeners": [], "observers": [], "icmp": {}, "udp": {}, "tcp": {}}
    for family, addr, port in sorted(needs["listen"]):
        s = socket.socket(_fam(family), socket.SOCK_STREAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((addr, port))
            s.listen(64)
            made["listeners"].append(s)
        except OSError:  # something of the container's own listens there: it answers instead
            s.close()
    for family in sorted(needs["observe"]):
        s = socket.socket(_fam(family), socket.SOCK_RAW, socket.IPPROTO_UDP)
        made["observers"].append((family, s))
    for family, addr in sorted(needs["send"]):
        proto = socket.IPPROTO_ICMP if family == 4 else socket.IPPROTO_ICMPV6
        made["icmp"][family] = socket.socket(_fam(family), socket.SOCK_RAW, proto)
        made["udp"][family] = socket.socket(_fam(family), socket.SOCK_DGRAM)
        for s in (made["icmp"][family], made["udp"][family]):
            s.bind((addr, 0))
    for spec_id, family, addr in needs["tcp"]:
        s = socket.socket(_fam(family), socket.SOCK_STREAM)
        made["tcp"][spec_id] = s
        s.bind((addr, 0))
    return made


class Session:
    """One round of probes, run concurrently; ``run()`` -> {spec id: outcome}."""

    def __init__(self, specs: list, timeout: float = 0.5):
        self.specs = {s.id: s for s in specs}
        self.timeout = timeout
        self.nonce = os.urandom(4).hex().encode()
        self.outcome: dict = {}
        self._sockets: list = []

    def _needs(self) -> dict:
        needs: dict = {}
        for s in self.specs.values():
            src = needs.setdefault(s.src_netns, {"listen": set(), "observe": set(), "send": set(), "tcp": []})
            dst = needs.setdefault(s.dst_netns, {"listen": set(), "observe": set(), "send": set(), "tcp": []})
            src["send"].add((s.family, s.src_addr))
            if s.proto == "tcp":
                src["tcp"].append((s.id, s.family, s.src_addr))
                dst["listen"].add((s.family, s.dst_addr, s.port))
            elif s.proto == "udp":
                dst["observe"].add(s.family)
        return needs

    def _setup(self) -> dict:
        made = {}
        for path, needs in self._needs().items():
            try:
                made[path] = netns.run_in(path, _make_sockets, needs)
            except OSError as exc:
                made[path] = None
                for s in self.specs.values():
                    if path in (s.src_netns, s.dst_netns):
                        self.outcome.setdefault(s.id, f"error:{exc.strerror or exc}")
                continue
            m = made[path]
            self._sockets += m["listeners"] + [s for _f, s in m["observers"]]
            self._sockets += list(m["icmp"].values()) + list(m["udp"].values()) + list(m["tcp"].values())
        return made

    def token(self, spec_id: int) -> bytes:
        return b"snv-" + self.nonce + b"-" + b"%06x" % spec_id

    def run(self) -> dict:
        sel = selectors.DefaultSelector()
        try:
            made = self._setup()
            self._send(made, sel)
            self._collect(sel)
        finally:
            sel.close()
            for s in self._sockets:
                s.close()
            self._sockets.clear()
        for spec_id in self.specs:
            self.outcome.setdefault(spec_id, "timeout")
        return self.outcome

    def _send(self, made: dict, sel) -> None:
        for m in made.values():
            if m is None:
                continue
            for family, s in m["observers"]:
                sel.register(s, selectors.EVENT_READ, ("udp-observer", family))
            for family, s in m["icmp"].items():
                sel.register(s, selectors.EVENT_READ, ("icmp", family))
        for s in self.specs.values():
            if s.id in self.outcome or made.get(s.src_netns) is None:
                continue
            try:
                self._send_one(s, made[s.src_netns], sel)
            except OSError as exc:
                self.outcome[s.id] = f"error:{errno.errorcode.get(exc.errno, exc)}"

    def _send_one(self, s: Spec, m: dict, sel) -> None:
        token = self.token(s.id)
        if s.proto == "tcp":
            sock = m["tcp"][s.id]
            sock.setblocking(False)
            code = sock.connect_ex((s.dst_addr, s.port))
            if code not in (0, errno.EINPROGRESS):
                raise OSError(code, os.strerror(code))
            sel.register(sock, selectors.EVENT_WRITE, ("tcp", s.id))
        elif s.proto == "udp":
            m["udp"][s.family].sendto(token, (s.dst_addr, s.port))
        else:
            ident = (s.id * 7919 + int(self.nonce[:4], 16)) & 0xFFFF
            m["icmp"][s.family].sendto(echo_request(s.family, ident, token), (s.dst_addr, 0))

    def _collect(self, sel) -> None:
        deadline = time.monotonic() + self.timeout
        while len(self.outcome) < len(self.specs):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            for key, _events in sel.select(left):
                kind, value = key.data
                if kind == "tcp":
                    sel.unregister(key.fileobj)
                    code = key.fileobj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    self.outcome.setdefault(value, "connected" if code == 0 else
                                            "refused" if code == errno.ECONNREFUSED else
                                            f"error:{errno.errorcode.get(code, code)}")
                else:
                    self._read_raw(key.fileobj, kind, value)

    def _read_raw(self, sock, kind: str, family: int) -> None:
        try:
            data = sock.recv(65535, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        if family == 4 and data:
            data = data[(data[0] & 0x0F) * 4:]  # IPv4 raw sockets see the IP header, IPv6 ones do not
        request, reply = (8, 0) if family == 4 else (128, 129)
        if kind == "udp-observer":
            body, outcome = data[8:], "seen"
        elif data and data[0] in (request, reply):
            body, outcome = data[8:], "answered" if data[0] == reply else "seen"
        else:
            return  # ICMP errors quote our packets: they prove nothing
        for match in TOKEN.finditer(body):
            if match.group(1) == self.nonce:
                spec_id = int(match.group(2), 16)
                if spec_id in self.specs:
                    self.outcome.setdefault(spec_id, outcome)
