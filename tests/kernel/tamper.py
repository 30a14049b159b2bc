"""Changing a network's kernel state behind its backend's back: what drift must see.

Each function does the same harm on every backend, in that backend's own
terms, so that one test proves on each that drift names it, that real
packets feel it, and that a repair undoes it:

* :func:`delete_policy_entry` -- one element of the policy goes (nftables: the
  element of set ``pol_port``; eBPF: the entry of map ``policy`` in force);
* :func:`open_hole` -- a rule goes, and ``tcp/9999`` from ``sender`` to
  ``receiver`` passes unjudged (nftables: a rule of chain ``forward`` becomes
  an accept; eBPF: the programs leave both veths).
"""
from __future__ import annotations

from nsfixtures import NET_ID

HOLE_PORT = 9999


def delete_policy_entry(lab, entry) -> None:
    """Delete the kernel's element of one single-port PolicyEntry (``entry.key``)."""
    src, dst, proto, lo, hi = entry.key
    assert lo == hi, "a single-port entry"
    if lab.backend_name == "nftables":
        lab.nft("delete", "element", "inet", lab.table, "pol_port", f"{{ {src:#x} . {dst:#x} . {proto} . {lo} }}")
    else:
        lab.backend.call(_delete_ebpf_entry, lab.backend.obj, entry)


def _delete_ebpf_entry(backend, entry) -> None:
    from plugin.enforce.ebpf import libbpf, maps   # noqa: PLC0415 (reaching into the kernel on purpose)
    handle = backend._nets[NET_ID[:12]].handle     # noqa: SLF001
    version = maps.STATE.unpack(libbpf.lookup(handle.maps["state"], maps.U32.pack(0), maps.STATE.size))[0]
    for prefix in maps.policy_content([entry]):
        libbpf.delete(handle.maps["policy"], maps.policy_key(version & 1, prefix))


def open_hole(lab, sender, receiver) -> None:
    """Let tcp/HOLE_PORT from ``sender`` to ``receiver`` through, unjudged."""
    if lab.backend_name == "nftables":
        listing = lab.nft("-a", "list", "chain", "inet", lab.table, "forward").stdout
        line = next(line for line in listing.splitlines() if "ip protocol igmp" in line)
        handle = line.rsplit("# handle", 1)[1].strip()
        # same number of rules, one of them now lets a port through
        lab.nft("replace", "rule", "inet", lab.table, "forward", "handle", handle,
                "tcp", "dport", str(HOLE_PORT), "goto", "pass")
    else:
        for veth in (sender.veth, receiver.veth):
            for point in ("ingress", "egress"):
                lab.exec("tc", "filter", "del", "dev", veth, point)
