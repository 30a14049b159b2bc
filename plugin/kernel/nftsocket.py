"""The socket that hears nftables' change notifications (``NFNLGRP_NFTABLES``), and how
a listener tells its own process's changes apart.

Two ways, both for the daemon's own writes, which it need not hear:
- a classic BPF socket filter drops datagrams that a given netlink port id caused
  (the element writer's own socket): :func:`attach_port_filter`;
- the committing thread's id (``NFTA_GEN_PROC_PID`` of the transaction's generation
  message), numbered in the initial pid namespace: comparable with this process's
  threads only when it runs there (:func:`in_initial_pid_namespace`).
"""
from __future__ import annotations

import os
import socket
import struct

from plugin.kernel.nfgroups import group_socket

NFNLGRP_NFTABLES = 7
NETLINK_DROP_MEMBERSHIP = 2
RCVBUF = 4 << 20
PROC_PID_INIT_INO = 0xEFFFFFFC   # the initial pid namespace's inode (include/linux/proc_ns.h)


def in_initial_pid_namespace() -> bool:
    """Whether this process's pid namespace is the initial one (task ids are the global
    ones that nf_tables reports)."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino == PROC_PID_INIT_INO
    except OSError:
        return False


SO_ATTACH_FILTER = 26
_BPF_INSN = struct.Struct("=HBBI")   # classic BPF: code, jump if true, jump if false, k


def port_filter(ports) -> bytes:
    """A classic BPF program (``sock_filter`` array) that drops every datagram whose
    first message's sender port id is one of ``ports`` and accepts the rest.

    nf_tables coalesces the notifications of one transaction into datagrams per
    requester, so the first message's port id stands for the whole datagram.
    A word load (``ld [12]``: ``nlmsg_pid``) reads network byte order, the header
    is in host order: each id is compared in the loaded order.
    """
    ports = sorted(set(ports))
    loaded = [struct.unpack("!I", struct.pack("=I", p))[0] for p in ports]
    prog = [_BPF_INSN.pack(0x20, 0, 0, 12)]                        # ld [12]
    for i, k in enumerate(loaded):                                 # jeq #k, drop
        prog.append(_BPF_INSN.pack(0x15, len(loaded) - i, 0, k))
    prog.append(_BPF_INSN.pack(0x06, 0, 0, 0xFFFFFFFF))            # ret #-1: accept
    prog.append(_BPF_INSN.pack(0x06, 0, 0, 0))                     # ret #0: drop
    return b"".join(prog)


def attach_port_filter(sock: socket.socket, ports) -> None:
    """Attach :func:`port_filter` to ``sock`` (OSError if the kernel refuses it)."""
    import ctypes
    code = port_filter(ports)
    buf = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("HL", len(code) // _BPF_INSN.size, ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def open_socket() -> socket.socket:
    """A netfilter netlink socket joined to NFNLGRP_NFTABLES (needs CAP_NET_ADMIN)."""
    return group_socket((NFNLGRP_NFTABLES,), RCVBUF)
