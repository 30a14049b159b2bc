"""Probes the benchmark sends from inside namespaces: a TCP connect, a ping
train from the host, and a continuous prober of one address."""
from __future__ import annotations

import errno
import os
import select
import socket
import struct
import threading
import time
from typing import Optional

from plugin.kernel import icmp, netns

from .common import now


def enter_netns(path: str) -> None:
    """Move the *calling thread* into the network namespace at ``path``."""
    netns.enter(path)


def tcp_probe(ip: str, port: int, timeout: float) -> str:
    """One TCP connect: 'open', 'refused' (both mean the packets passed) or 'none'."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST on close
    s.setblocking(False)
    try:
        rc = s.connect_ex((ip, port))
        if rc == 0:
            return "open"
        if rc == errno.ECONNREFUSED:
            return "refused"
        if rc not in (errno.EINPROGRESS, errno.EAGAIN):
            return "none"
        p = select.poll()
        p.register(s, select.POLLOUT | select.POLLERR)
        if not p.poll(timeout * 1000):
            return "none"
        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        return "open" if err == 0 else "refused" if err == errno.ECONNREFUSED else "none"
    finally:
        s.close()


class HostPinger:
    """ICMP echo from the host (raw socket), for 'until the network answers'."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        self.ident = os.getpid() & 0xFFFF
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def wait_answer(self, ip: str, deadline: float, every: float = 0.002) -> Optional[float]:
        """Ping ``ip`` every ``every`` s until a reply; returns its arrival time or None."""
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        while now() < deadline:
            self.seq = (self.seq + 1) & 0xFFFF
            pkt = icmp.echo_request(4, self.ident, b"snbench", self.seq)
            try:
                self.sock.sendto(pkt, (ip, 0))
            except OSError:
                pass  # EHOSTUNREACH while ARP fails: try again
            until = now() + every
            while True:
                left = until - now()
                if left <= 0 or not poller.poll(left * 1000):
                    break
                data, addr = self.sock.recvfrom(2048)
                ihl = (data[0] & 0x0F) * 4
                typ, _c, _s, ident, _seq = struct.unpack("!BBHHH", data[ihl:ihl + 8])
                if typ == 0 and ident == self.ident and addr[0] == ip:
                    return now()
        return None


class Prober(threading.Thread):
    """TCP-probes a moving target continuously from inside a namespace.

    ``set_target(key, ip)`` switches the target; ``first[key]``/``last[key]``
    are the times of the first/last answer for that key,
    ``answers[key]``/``probes[key]`` count them.
    """

    def __init__(self, netns: str, port: int, name: str, timeout: float = 0.01):
        super().__init__(name=name, daemon=True)
        self.netns, self.port, self.timeout = netns, port, timeout
        self.target = None
        self.first: dict = {}
        self.last: dict = {}
        self.answers: dict = {}
        self.probes: dict = {}
        self.answer_log: list = []   # (time, key, address, 'open' or 'refused'), the first 1,000
        self.stop_event = threading.Event()
        self.error: Optional[str] = None

    def set_target(self, key, ip: str) -> None:
        self.target = (key, ip)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(5)

    def run(self) -> None:
        try:
            enter_netns(self.netns)
        except OSError as exc:
            self.error = str(exc)
            return
        while not self.stop_event.is_set():
            tgt = self.target
            if tgt is None:
                time.sleep(0.001)
                continue
            key, ip = tgt
            result = tcp_probe(ip, self.port, self.timeout)
            t = now()
            self.probes[key] = self.probes.get(key, 0) + 1
            if result != "none":
                self.answers[key] = self.answers.get(key, 0) + 1
                self.first.setdefault(key, t)
                self.last[key] = t
                if len(self.answer_log) < 1000:
                    self.answer_log.append((t, key, ip, result))
            else:
                time.sleep(0.0005)


PACKET_HOST = 0    # sll_pkttype of a frame addressed to this host (linux/if_packet.h)


class FrameWitness(threading.Thread):
    """Every IPv4 frame that arrives at ``eth0`` of a namespace addressed to it, from a
    source ``watched(address)`` selects: (time, source, IP protocol, TCP flags or None).

    The packet-level witness of "nothing got through": a socket's answer is only the
    kernel's word that a handshake completed, a frame from the target is the packet
    itself (an AF_PACKET socket sees every frame the device receives, before IP).
    """

    def __init__(self, netns: str, watched, name: str = "frame-witness"):
        super().__init__(name=name, daemon=True)
        self.netns, self.watched = netns, watched
        self.frames: list = []
        self.error: Optional[str] = None
        self.stop_event = threading.Event()

    def stop(self) -> None:
        self.stop_event.set()
        self.join(5)

    def run(self) -> None:
        try:
            enter_netns(self.netns)
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
            sock.bind(("eth0", 0x0800))
            sock.settimeout(0.2)
        except OSError as exc:
            self.error = str(exc)
            return
        with sock:
            while not self.stop_event.is_set():
                try:
                    data, addr = sock.recvfrom(128)
                except socket.timeout:
                    continue
                except OSError as exc:   # the device went away (the peer's container removed)
                    self.error = None if self.stop_event.is_set() else str(exc)
                    return
                if addr[2] != PACKET_HOST or len(data) < 34:
                    continue
                src = socket.inet_ntoa(data[26:30])
                if self.watched(src):
                    ihl = (data[14] & 0x0F) * 4
                    flags = data[14 + ihl + 13] if data[23] == 6 and len(data) > 14 + ihl + 13 else None
                    self.frames.append((now(), src, data[23], flags))
