"""Can this host run the eBPF datapath? The kernel release and BTF it needs."""
from __future__ import annotations

import os
from typing import Optional

MIN_KERNEL = (5, 18)     # the newest feature used: conntrack kfuncs for tc (docs/ebpf.md)
BTF = "/sys/kernel/btf/vmlinux"
TCP_LOOSE = "/proc/sys/net/netfilter/nf_conntrack_tcp_loose"


def tcp_loose(path: str = TCP_LOOSE) -> bool:
    """The host's ``net.netfilter.nf_conntrack_tcp_loose`` (of this network namespace):
    True when conntrack lets a TCP ACK without a SYN open a flow (1, the kernel's default;
    also when conntrack is not loaded and the file is missing), False when it is 0
    (Documentation/networking/nf_conntrack-sysctl.rst). The datapath follows it as
    nftables' ``ct state invalid`` does (``settings.strict_tcp``, lib/conntrack.h)."""
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip() != "0"
    except OSError:
        return True


def host_problem(release: Optional[str] = None, btf: str = BTF) -> Optional[str]:
    """What this host lacks for the datapath, in one phrase, or None. ``release``: a
    kernel release such as ``6.1.0-18-amd64`` (default: this host's)."""
    release = release or os.uname().release
    try:
        version = tuple(int(x) for x in release.split("-")[0].split(".")[:2])
    except ValueError:
        return f"cannot read the kernel release {release!r}"
    if version < MIN_KERNEL:
        return f"Linux {release} is older than {MIN_KERNEL[0]}.{MIN_KERNEL[1]}"
    if not os.path.exists(btf):
        return f"the kernel has no BTF ({btf} is missing)"
    return None
