"""Drop reports from the datapath's ring buffer, as plugin.enforce.backend.DropEvent.

The programs report through one ring buffer (``<pin root>/events``), each
flow at most once per second (the ``reported`` LRU map in the kernel does
the rate limit, as nftables' per-flow ``limit`` does). A reader thread polls
it and hands every report to a callback; the buffer is opened when it
appears (it is created with the first network), so the reader can start
before any network exists.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import socket
import threading
import time
from typing import Callable, Iterable

from plugin.enforce.backend import REASONS, DropEvent
from plugin.kernel.addresses import covers
from plugin.kernel.conntrack import is_host_address

from . import libbpf
from .maps import DROP_EVENT
from .pins import EVENTS

log = logging.getLogger(__name__)
POLL_MS = 200
ETH_P_ARP = 0x0806


def _addr(raw: bytes, family: int) -> str:
    return str(ipaddress.ip_address(raw[:4] if family == 4 else raw))


def _ifname(ifindex: int):
    try:
        return socket.if_indextoname(ifindex) if ifindex else None
    except OSError:
        return None


def decode(raw: bytes, clock_offset: float) -> DropEvent:
    """A DropEvent from one ring-buffer record; ``clock_offset``: wall - monotonic seconds.

    IP packets carry their addresses; ARP its sender and target addresses
    (family 4, proto ``"arp"``); other frames no addresses (``""``), family 0
    and proto ``"ethertype-0xNNNN"``: what the nftables backend reports of them
    (plugin/enforce/nftables/nflog.py parse_payload), so that ``secnet log``
    prints the same line on both backends (U12-F5 b)."""
    (tag, ktime, reason, family, proto, audit, port, ethertype, ifindex, _src_id, _dst_id,
     saddr, daddr, _smac, _dmac) = DROP_EVENT.unpack_from(raw)
    ip = family in (4, 6)
    if ethertype == ETH_P_ARP:
        proto = "arp"    # family 4: the sender and target protocol addresses, as nflog shows them
    return DropEvent(
        network=f"{tag:012x}", reason=REASONS[reason] if reason < len(REASONS) else "invalid",
        family=family if ip else 0, proto=proto if ip else f"ethertype-0x{ethertype:04x}",
        src=_addr(saddr, family) if ip else "", dst=_addr(daddr, family) if ip else "",
        port=port if ip and proto in (6, 17) else None, ifname=_ifname(ifindex), audit=bool(audit),
        time=ktime / 1e9 + clock_offset)


def hairpin_target(event: DropEvent, gateways: Iterable[str], ports: Iterable,
                   is_local: Callable[[str], bool] = is_host_address) -> DropEvent:
    """``event`` as nftables logs it when it is a hairpin flow's: a member reaching a
    published port of its own network (through the bridge's address, any other
    address of the host, or the host address the port is published on) is judged
    at the sender, before the host's DNAT, so the event carries the host's address
    and port; nftables judges after the DNAT and names the member behind the port.
    Returns the event with that member's address and container port, or ``event``
    itself. ``ports``: the network's Port objects; ``is_local``: address -> is it
    the host's (asked only for a port published on every address)."""
    if event.family not in (4, 6) or event.proto not in (6, 17) or not event.port:
        return event
    proto, dst = ("tcp" if event.proto == 6 else "udp"), ipaddress.ip_address(event.dst)
    if dst.is_loopback:
        return event   # never DNAT'd from a container (nat_pre): dropped as sent
    gateway = dst in {ipaddress.ip_address(g) for g in gateways}
    for port in ports:
        if not port.active:
            continue
        for kind, host_ip, host_port, cport in port.published:
            if str(kind).lower() != proto or int(host_port) != event.port:
                continue
            if covers(host_ip, event.dst, lambda a: gateway or is_local(a)):
                for addr in port.addresses:
                    if ipaddress.ip_address(addr).version == event.family:
                        return dataclasses.replace(event, dst=addr, port=int(cport))
    return event


class DropReader:
    """Polls ``<root>/events`` on a thread of its own until ``stop()``."""

    def __init__(self, root: str, callback: Callable[[DropEvent], None]):
        self.root = root
        self.callback = callback
        self._stop = threading.Event()
        self._reopen = threading.Event()
        self._thread = threading.Thread(target=self._run, name="secnet-ebpf-drops", daemon=True)
        self._offset = time.time() - time.monotonic()

    def start(self) -> None:
        self._thread.start()

    def _on_record(self, raw: bytes) -> None:
        self.callback(decode(raw, self._offset))

    def _open(self):
        try:
            fd = libbpf.obj_get(os.path.join(self.root, EVENTS))
        except libbpf.LibbpfError:
            return None, None
        try:
            return fd, libbpf.RingBuffer(fd, self._on_record)
        except libbpf.LibbpfError:
            os.close(fd)
            raise

    def _run(self) -> None:
        fd, rb = None, None
        try:
            while not self._stop.is_set():
                if self._reopen.is_set() and rb is not None:
                    self._reopen.clear()
                    rb.poll(0)                 # what is in the old buffer still counts
                    rb.close()
                    os.close(fd)
                    fd, rb = None, None
                if rb is None:
                    self._reopen.clear()
                    fd, rb = self._open()
                    if rb is None:
                        self._stop.wait(POLL_MS / 1000)
                        continue
                rb.poll(POLL_MS)
        except Exception:  # noqa: BLE001 (a dead reader must say why)
            log.exception("eBPF drop reader stopped")
        finally:
            if rb is not None:
                rb.close()
            if fd is not None:
                os.close(fd)

    def reopen(self) -> None:
        """Open the pinned buffer again (it was replaced or removed)."""
        self._reopen.set()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2)
