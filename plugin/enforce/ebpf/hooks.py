"""The tc hooks of an eBPF network's veths: is our program there, does anything run before it?

Kernel background (net/sched/cls_api.c, cls_bpf.c; seen on Linux 6.18). Our
programs are direct-action ``bpf`` filters, handle 1 at priority (tc's
``pref``) 1 of chain 0, protocol all, on the clsact ingress and egress hooks
of each port's host-side veth (:func:`libbpf.tc_attach`). Filters run in
priority order and a direct-action verdict (OK, SHOT, REDIRECT) ends the walk:
a filter at pref 2 or beyond never sees a packet. But priority 1 is not ours
alone: one ``tcf_proto`` per priority holds any number of filters of its kind,
and cls_bpf puts a new one at the *head* of its list (``cls_bpf_change``:
``list_add_rcu``). So ``tc filter add dev V ingress pref 1 handle 2 bpf da
...`` runs *before* ours, and its pass verdict lets a packet through unjudged
(seen here: a classic-BPF ``ret #0`` passed what our program drops). A filter
of another kind or protocol at pref 1 (ours deleted first) makes our re-attach
fail (EINVAL "filter kind does not match", "protocol mismatch").

So secnet treats priority 1 of chain 0 on its own veths' hooks as its own:
every filter there but our handle 1 is *foreign*; drift names it and the
repair deletes it before attaching (fail closed: secnet's promise is that no
packet of a member passes unjudged; the admin's filter belongs at another
priority, where it runs after ours and sees nothing, or on another device).
Filters at other priorities and in other chains are left alone. tcx programs
(Linux 6.6+) run before every tc filter of the device: foreign too (tcx.py).
Not inspected: XDP.
"""
from __future__ import annotations

import contextlib
import logging
import socket
from dataclasses import dataclass
from typing import Iterable, Optional

from plugin.kernel.links import IPRoute

from . import libbpf, maps, tcx

log = logging.getLogger(__name__)
PARENTS = {libbpf.BPF_TC_INGRESS: 0xFFFFFFF2, libbpf.BPF_TC_EGRESS: 0xFFFFFFF3}   # clsact ffff:fff2/3
POINTS = {libbpf.BPF_TC_INGRESS: "ingress", libbpf.BPF_TC_EGRESS: "egress"}
OUR_PRIO, OUR_HANDLE, ETH_P_ALL = 1, 1, 3


@dataclass(frozen=True)
class Filter:
    """A filter at our priority: ``protocol`` an ETH_P_* number (host order); or a tcx
    program detached (``kind`` "tcx", ``handle`` its id)."""

    handle: int
    kind: str
    protocol: int

    def text(self) -> str:
        if self.kind == "tcx":
            return f"tcx program {self.handle}"
        return f"pref {OUR_PRIO} handle {self.handle:#x} {self.kind}"


def at_our_priority(ipr, ifindex: int, point: int) -> list:
    """The filters at pref 1 of chain 0 on hook ``point`` of ``ifindex`` ([] when the
    device or its clsact qdisc is gone). A dump's handle-0 entry is the priority's own
    header, not a filter."""
    out = []
    for msg in ipr.get_filters(index=ifindex, parent=PARENTS[point]):
        info = msg["info"]
        if msg.get_attr("TCA_CHAIN") or info >> 16 != OUR_PRIO or not msg["handle"]:
            continue
        out.append(Filter(msg["handle"], msg.get_attr("TCA_KIND") or "?", socket.ntohs(info & 0xFFFF)))
    return out


def foreign(filters: Iterable[Filter]) -> list:
    """Those of ``filters`` that are not where our program sits (handle 1, bpf, all)."""
    return [f for f in filters if (f.handle, f.kind, f.protocol) != (OUR_HANDLE, "bpf", ETH_P_ALL)]


def foreign_lines(ipr, ifindex: int, name: str) -> list:
    """One drift line per foreign filter, and per tcx program (tcx.py), on either hook
    of ``ifindex`` (veth ``name``)."""
    return [f"port {name}: a foreign {what} runs before our {POINTS[point]} program"
            for point in PARENTS
            for what in [f"filter ({f.text()})" for f in foreign(at_our_priority(ipr, ifindex, point))]
            + [f"tcx program (id {prog})" for prog in tcx.programs(ifindex, point)]]


def remove_foreign(ipr, ifindex: int) -> list:
    """Delete the foreign filters at our priority on both hooks of ``ifindex``; returns
    them. When the priority is a bpf/all one, each foreign handle goes alone (ours, if
    there, stays in force throughout); else the whole priority goes (ours cannot be in
    it). The tcx programs go too (as ``Filter(id, "tcx", 0)``). Raises pyroute2's
    NetlinkError or OSError when the kernel refuses."""
    gone = []
    for point, parent in PARENTS.items():
        gone += [Filter(prog, "tcx", 0) for prog in tcx.detach(ifindex, point)]
        filters = at_our_priority(ipr, ifindex, point)
        strange = foreign(filters)
        if not strange:
            continue
        if all((f.kind, f.protocol) == ("bpf", ETH_P_ALL) for f in filters):
            for f in strange:
                ipr.tc("del-filter", "bpf", ifindex, f.handle, parent=parent, prio=OUR_PRIO, protocol=ETH_P_ALL)
        else:
            ipr.tc("del-filter", index=ifindex, parent=parent, prio=OUR_PRIO, protocol=filters[0].protocol)
        gone += strange
    return gone


def drifted(backend, links: Optional[set], ipr=None) -> dict:
    """Network id -> (drift lines, ifindexes of the ports they name), for each eBPF
    network of ``backend`` with a port on one of ``links`` (ifindexes; None: every
    port); lines name hooks that lack our program or hold something foreign before it
    (``([], set())``: those ports are in order). Cheap: two ``tc_query`` and two filter
    dumps per port; the backend's lock is held only to list the ports (a port being
    re-attached meanwhile may be named: repairing it again does no harm). ``ipr``: an
    IPRoute of the caller's thread to use (else one is opened for the call)."""
    with backend._lock:   # noqa: SLF001 (a read of the backend's own bookkeeping, as drift.py)
        ports = []
        for st in backend._nets.values():   # noqa: SLF001
            mine = [(port.name, ifx) for port, ifx in st.ports.values() if links is None or ifx in links]
            if mine:
                ours = {libbpf.prog_id(fd) for fd in st.handle.progs.values()}
                ports += [(st.spec.id, name, ifx, ours) for name, ifx in mine]
    out: dict = {}
    if not ports:
        return out
    with contextlib.nullcontext(ipr) if ipr is not None else IPRoute() as ipr:
        for network_id, name, ifindex, ours in ports:
            if not _exists(ifindex):
                continue   # a veth going with its endpoint: the driver's removal, not drift
            lines = [f"port {name}: our {text} program is not attached" for point, text in POINTS.items()
                     if libbpf.tc_query(ifindex, point) not in ours]
            lines += foreign_lines(ipr, ifindex, name)
            found = out.setdefault(network_id, ([], set()))
            if lines:
                found[0].extend(lines)
                found[1].add(ifindex)
    return out


def _exists(ifindex: int) -> bool:
    try:
        socket.if_indextoname(ifindex)
    except OSError:
        return False
    return True


def clear(seen: set, ifindexes: Iterable[int]) -> None:
    """Before a whole write attaches our programs: delete the foreign filters on those of
    ``ifindexes`` where drift saw some (``seen``, the backend's ``foreign_seen``; they
    leave it)."""
    todo = [ifx for ifx in ifindexes if ifx in seen]
    seen.difference_update(todo)
    remove_all_foreign(todo)


def remove_all_foreign(ifindexes: list) -> list:
    """:func:`remove_foreign` on each of ``ifindexes``, logged; returns what went. A refusal
    is logged: the attach after it, or the next drift check, says what is left."""
    if not ifindexes:
        return []
    gone = []
    with IPRoute() as ipr:
        for ifindex in ifindexes:
            try:
                these = remove_foreign(ipr, ifindex)
            except Exception as exc:   # noqa: BLE001 (pyroute2's NetlinkError and its socket errors)
                log.error("ifindex %d: cannot delete the foreign filters before our programs: %s", ifindex, exc)
                continue
            if these:
                log.warning("ifindex %d: deleted foreign tc filters at secnet's priority: %s",
                            ifindex, ", ".join(f.text() for f in these))
            gone += these
    return gone


def detach_all(handle) -> None:
    """Take our filters off every veth of a network (``handle``: pins.Handle; only
    where they are ours: a veth's hook may hold another network's by now)."""
    ours = {libbpf.prog_id(fd) for fd in handle.progs.values()}
    for key in list(libbpf.keys(handle.maps["endpoints"], 4)) if "endpoints" in handle.maps else ():
        ifindex = maps.U32.unpack(key)[0]
        for point in PARENTS:
            if libbpf.tc_query(ifindex, point) in ours:
                libbpf.tc_detach(ifindex, point)
