"""The drop log: what policy dropped, why, and between which containers.

Each backend reports drops as :class:`~plugin.enforce.backend.DropEvent`
(at most one per flow and second, rate-limited in the kernel) to
:meth:`DropLog.record`, which maps the addresses and bridge ports back to
containers and segments through the daemon's saved state
(:class:`Directory`) and keeps the entry

* in memory, in a ring of at most ``capacity`` entries, each held as its
  JSON line (a few hundred bytes; all but the newest few compressed,
  :class:`~plugin.observe.linering.LineRing`), served by ``/secnet/log``;
* on disk under the state directory, as JSON lines in ``droplog.jsonl``,
  renamed to ``droplog.jsonl.1`` when it would outgrow ``max_bytes`` (so at
  most two files of ``max_bytes`` each). At start the ring is refilled from
  those files, and sequence numbers go on from the last one, so a
  ``secnet log --follow`` cursor stays valid across a daemon restart.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import os
import threading
import time
from typing import Optional

from plugin.kernel.addresses import link_local
from plugin.observe.linering import LineRing

log = logging.getLogger(__name__)

CAPACITY = 10_000
MAX_BYTES = 5 * 1024 * 1024
FILE_NAME = "droplog.jsonl"
REASON_TEXT = {
    "no-rule": "no rule allows it",
    "egress": "egress denied",
    "internal": "internal network: nothing leaves or enters",
    "not-member": "not a member of the network",
    "invalid": "invalid packet (no valid connection state)",
    "quarantined": "quarantined",
    "pending": "segment not known yet (fail closed)",
    "spoofed": "spoofed: address not the one the network gave",
    "ethertype": "ethertype not allowed",
    "loopback": "to the host's loopback (never reachable from a container)",
    "router": "router advertisement or redirect (a container routes for no one)",
}


class Directory:
    """Addresses and bridge ports → endpoints, from saved state, cached briefly.

    A snapshot of a network is rebuilt when an endpoint was written or removed since
    (the state's ``endpoint_generation``: an address that a removed container had and a
    new one has now names the new one, U16-F1), when it is older than ``max_age``
    seconds, or on a miss when older than ``miss_age`` (a container that
    just joined): driven by the messages, never by a timer.
    """

    def __init__(self, state, max_age: float = 2.0, miss_age: float = 0.25):
        self.state = state
        self.max_age, self.miss_age = max_age, miss_age
        self._nets: tuple = (0.0, {})        # (built at, {nid12: NetworkRecord})
        self._snaps: dict = {}               # network id -> (built at, generation, by address, by veth)
        self._lock = threading.Lock()

    def network(self, nid12: str):
        with self._lock:
            built, nets = self._nets
            age = time.monotonic() - built
            if age > self.max_age or (nid12 not in nets and age > self.miss_age):
                nets = {n.id[:12]: n for n in self.state.networks()}
                self._nets = (time.monotonic(), nets)
            return nets.get(nid12)

    def _snapshot(self, net_id: str, missed: bool):
        built, gen, by_addr, by_veth = self._snaps.get(net_id, (0.0, -1, {}, {}))
        age = time.monotonic() - built
        now_gen = getattr(self.state, "endpoint_generation", gen)
        if gen != now_gen or age > self.max_age or (missed and age > self.miss_age):
            by_addr, by_veth = {}, {}
            for ep in self.state.endpoints(net_id):
                by_veth[ep.veth_host] = ep
                for cidr in (ep.ipv4, ep.ipv6):
                    if cidr:
                        by_addr[cidr.split("/")[0]] = ep
                if getattr(ep, "mac", None):   # its own link-local address (what it sends from it is judged)
                    by_addr[link_local(ep.mac)] = ep
            self._snaps[net_id] = (time.monotonic(), now_gen, by_addr, by_veth)
        return by_addr, by_veth

    def by_address(self, net_id: str, address: Optional[str]):
        if not address:
            return None
        with self._lock:
            by_addr, _ = self._snapshot(net_id, False)
            if address not in by_addr:
                by_addr, _ = self._snapshot(net_id, True)
            return by_addr.get(address)

    def by_port(self, net_id: str, name: Optional[str]):
        """The endpoint whose host-side veth is ``name`` (a bridge port)."""
        if not name:
            return None
        with self._lock:
            _, by_veth = self._snapshot(net_id, False)
            if name not in by_veth:
                _, by_veth = self._snapshot(net_id, True)
            return by_veth.get(name)


def _multicast(address: Optional[str]) -> bool:
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    return ip.is_multicast or str(ip) == "255.255.255.255"


def end_view(address: Optional[str], ep) -> dict:
    """One end of a dropped flow: its address and, when it is a member, whose it is."""
    if ep is None:
        group = _multicast(address)
        return {"address": address, "container": None, "segment": None, "multicast": group,
                "outside": address is not None and not group}
    state = "quarantined" if ep.quarantine is not None else ("pending" if ep.segment is None else None)
    return {"address": address, "container": ep.container or ep.id[:12], "segment": ep.segment,
            "state": state, "outside": False, "endpoint": ep.id}


def current_names(entries: list, endpoints) -> list:
    """``entries`` with each member end named by its container's current name
    (names change with `docker rename`; an entry keeps its endpoint id)."""
    names = {ep.id: ep.container for ep in endpoints if ep.container}
    for entry in entries:
        for end in (entry.get("src"), entry.get("dst")):
            if isinstance(end, dict) and end.get("endpoint") in names:
                end["container"] = names[end["endpoint"]]
    return entries


_PROTO_NAMES = {(4, 1): "icmp", (6, 58): "icmpv6", (4, 6): "tcp", (6, 6): "tcp", (4, 17): "udp",
                (6, 17): "udp", (4, 132): "sctp", (6, 132): "sctp"}


def proto_name(family: int, proto) -> str:
    """A drop event's protocol as the log shows it, whichever backend reported it:
    ``tcp``, ``udp``, ``icmp`` (IPv4), ``icmpv6`` (IPv6), ``sctp``, else ``proto-N``
    (N the IP protocol number: ``proto-136`` for UDP-Lite; nftables' names, U14-F4),
    or a name a backend gives a frame that is not IP (``arp``, ``ethertype-0x88b5``).
    ``proto``: the number (eBPF, nftables for the protocols above) or that text."""
    if isinstance(proto, int):
        return _PROTO_NAMES.get((family, proto), f"proto-{proto}")
    return str(proto)


def why(reason: str, src_ep, dst_ep) -> str:
    text = REASON_TEXT.get(reason, reason)
    if reason == "quarantined":
        for ep in (src_ep, dst_ep):
            if ep is not None and ep.quarantine:
                return f"quarantined: {ep.quarantine}"
    return text


class DropLog:
    """Bounded ring + bounded rotating file of dropped flows; thread-safe."""

    def __init__(self, state_dir: str, directory: Optional[Directory] = None,
                 capacity: int = CAPACITY, max_bytes: int = MAX_BYTES):
        self.directory = directory
        self.path = os.path.join(state_dir, FILE_NAME)
        self.max_bytes = max_bytes
        self.ring = LineRing(capacity)
        self.seq = 0
        self.unknown = 0          # events that could not be attributed
        self.received = 0         # events recorded
        self._lock = threading.Lock()
        self._file = None
        self._write_failed = False
        self._load()

    # --- intake -------------------------------------------------------------------------
    def record(self, event) -> Optional[dict]:
        """Turn one DropEvent into an entry and keep it (a backend's reader thread calls this)."""
        if self.directory is None:
            self.unknown += 1
            return None
        self.received += 1
        net = self.directory.network(event.network[:12])
        net_id = net.id if net is not None else event.network
        src_ep = self.directory.by_port(net_id, event.ifname) or self.directory.by_address(net_id, event.src)
        dst_ep = self.directory.by_address(net_id, event.dst)
        if dst_ep is None and event.out_ifname != event.ifname and not _multicast(event.dst):
            dst_ep = self.directory.by_port(net_id, event.out_ifname)
        devices = {k: v for k, v in (("in", event.ifname), ("out", event.out_ifname)) if v}
        entry = {"time": event.time or time.time(), "network": net_id, "reason": event.reason,
                 "why": why(event.reason, src_ep, dst_ep), "audit": event.audit,
                 "family": event.family, "proto": proto_name(event.family, event.proto),
                 "sport": event.sport,
                 "dport": event.port, "icmp_type": event.icmp_type,
                 "src": end_view(event.src, src_ep), "dst": end_view(event.dst, dst_ep),
                 "devices": devices}
        return self.append(entry)

    def append(self, entry: dict) -> dict:
        with self._lock:
            self.seq += 1
            entry = dict(entry, seq=self.seq)
            line = json.dumps(entry, separators=(",", ":"))
            self.ring.append(self.seq, entry.get("network", ""), line)
            self._write(line)
        return entry

    # --- reads --------------------------------------------------------------------------
    def query(self, network: Optional[str] = None, since: int = 0, limit: int = CAPACITY) -> dict:
        """Entries after cursor ``since`` (of ``network`` when given), oldest first."""
        with self._lock:
            rows = [line for _seq, net, line in self.ring.rows(since)
                    if network is None or net == network]
            cursor = self.seq
        rows = rows[-limit:] if limit else []
        return {"entries": [json.loads(r) for r in rows], "cursor": cursor}

    def stats(self) -> dict:
        with self._lock:
            size = self.ring.size
            return {"entries": len(self.ring), "capacity": self.ring.maxlen, "bytes": size,
                    "received": self.received,
                    "cursor": self.seq, "file": self.path, "max_bytes": self.max_bytes}

    # --- the files ----------------------------------------------------------------------
    def _load(self) -> None:
        for path in (self.path + ".1", self.path):
            try:
                with open(path, encoding="utf-8") as f:
                    for line in f:
                        self._load_line(line.strip())
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("cannot read the drop log %s: %s", path, exc)

    def _load_line(self, line: str) -> None:
        try:
            entry = json.loads(line)
            seq = int(entry["seq"])
        except (ValueError, KeyError, TypeError):
            return  # a torn last line after a crash
        if seq > self.seq:
            self.seq = seq
            self.ring.append(seq, entry.get("network", ""), line)

    def _write(self, line: str) -> None:
        data = line + "\n"
        try:
            if self._file is None:
                self._file = open(self.path, "a", encoding="utf-8")
            if self._file.tell() + len(data) > self.max_bytes:
                self._file.close()
                os.replace(self.path, self.path + ".1")
                self._file = open(self.path, "a", encoding="utf-8")
            self._file.write(data)
            self._file.flush()
            self._write_failed = False
        except OSError as exc:
            if not self._write_failed:
                log.error("cannot write the drop log %s: %s (kept in memory only)", self.path, exc)
            self._write_failed = True
            self._drop_file()

    def _drop_file(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
        self._file = None

    def close(self) -> None:
        with self._lock:
            self._drop_file()
