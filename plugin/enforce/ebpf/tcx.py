"""tcx programs on a veth (Linux 6.6+): they run before every tc filter, ours included.

Kernel background (net/core/dev.c ``sch_handle_ingress``/``sch_handle_egress``,
include/net/tcx.h): a device's tcx programs (``BPF_TCX_INGRESS`` 46,
``BPF_TCX_EGRESS`` 47) run first; a verdict other than ``TCX_NEXT`` ends the
hook there, and the clsact filters -- our programs -- never see the packet.
Seen here (6.18): a two-instruction ``return 0`` (``TCX_PASS``) attached with
BPF_PROG_ATTACH to BPF_TCX_INGRESS of a veth passed what the tc filter behind
it drops. secnet does not use tcx (Debian 12's Linux 6.1 has none), so a tcx
program on a secnet veth is foreign: drift names it and a repair detaches it
(fail closed, as hooks.py does with foreign tc filters at our priority).
One attached by BPF_PROG_ATTACH goes by BPF_PROG_DETACH; one attached by a
bpf_link (``bpftool net attach tcx_ingress``) by BPF_LINK_DETACH of its link
(its holder keeps a defunct link). No notification announces a tcx attach:
only drift sees it (the periodic pass, or a check a tc change started).
"""
from __future__ import annotations

import ctypes
import errno
import os
import struct

from . import libbpf

TCX = {libbpf.BPF_TC_INGRESS: 46, libbpf.BPF_TC_EGRESS: 47}    # enum bpf_attach_type
BPF_LINK_TYPE_TCX = 11
_LINK_INFO = struct.Struct("=III4xII")   # type, id, prog_id, (union at 16) tcx.ifindex, tcx.attach_type
_U32P = ctypes.POINTER(ctypes.c_uint32)
_SIGS = {
    "bpf_prog_query": (ctypes.c_int, [ctypes.c_int, ctypes.c_int, ctypes.c_uint32, _U32P, ctypes.c_void_p, _U32P]),
    "bpf_prog_get_fd_by_id": (ctypes.c_int, [ctypes.c_uint32]),
    "bpf_prog_detach2": (ctypes.c_int, [ctypes.c_int, ctypes.c_int, ctypes.c_int]),
    "bpf_link_get_next_id": (ctypes.c_int, [ctypes.c_uint32, _U32P]),
    "bpf_link_get_fd_by_id": (ctypes.c_int, [ctypes.c_uint32]),
    "bpf_link_detach": (ctypes.c_int, [ctypes.c_int]),
}


def _fn(name: str):
    fn = getattr(libbpf.lib(), name)
    fn.restype, fn.argtypes = _SIGS[name]
    return fn


def programs(ifindex: int, point: int) -> list:
    """Ids of the tcx programs on hook ``point`` (libbpf.BPF_TC_INGRESS/EGRESS) of
    ``ifindex``; [] when there are none, or the kernel has no tcx (EINVAL)."""
    flags, count, ids = ctypes.c_uint32(0), ctypes.c_uint32(64), (ctypes.c_uint32 * 64)()
    if _fn("bpf_prog_query")(ifindex, TCX[point], 0, ctypes.byref(flags), ids, ctypes.byref(count)) < 0:
        return []
    return list(ids[:count.value])


def detach(ifindex: int, point: int) -> list:
    """Detach every tcx program from hook ``point`` of ``ifindex``; returns their ids.
    Raises OSError when one stays."""
    gone = []
    for prog in programs(ifindex, point):
        if not (_detach_prog(ifindex, point, prog) or _detach_link(ifindex, point, prog)):
            raise OSError(errno.EBUSY, f"tcx program {prog} on ifindex {ifindex} cannot be detached")
        gone.append(prog)
    return gone


def _detach_prog(ifindex: int, point: int, prog: int) -> bool:
    fd = _fn("bpf_prog_get_fd_by_id")(prog)
    if fd < 0:
        return False
    try:
        return _fn("bpf_prog_detach2")(fd, ifindex, TCX[point]) == 0
    finally:
        os.close(fd)


def _detach_link(ifindex: int, point: int, prog: int) -> bool:
    """Detach the tcx link of ``prog`` on that hook (links listed by id)."""
    link = ctypes.c_uint32(0)
    while _fn("bpf_link_get_next_id")(link.value, ctypes.byref(link)) == 0:
        fd = _fn("bpf_link_get_fd_by_id")(link.value)
        if fd < 0:
            continue
        try:
            info, size = ctypes.create_string_buffer(256), ctypes.c_uint32(256)
            if libbpf.lib().bpf_obj_get_info_by_fd(fd, info, ctypes.byref(size)) < 0:
                continue
            kind, _id, prog_id, ifx, attach = _LINK_INFO.unpack_from(info.raw)
            if (kind, prog_id, ifx, attach) == (BPF_LINK_TYPE_TCX, prog, ifindex, TCX[point]):
                return _fn("bpf_link_detach")(fd) == 0
        finally:
            os.close(fd)
    return False
