"""What differs between an eBPF network's kernel state and the desired state.

Read-only: compares the version in force of the versioned maps, the
settings, the endpoints and members, whether our programs sit on every
port's veth, and whether the network's NAT-only nft table is there. One short line per difference (the reconciler logs them and
calls apply_network to repair).
"""
from __future__ import annotations

from . import host, libbpf, maps


def drift(backend, st, policy, ports: list) -> list:
    h = st.handle
    out = []
    version, _generation, _tag = backend._state(h)   # noqa: SLF001 (the backend's helper)
    for name, (_before, content) in maps.full_changes(policy).items():
        have = backend._dump(h, name, version & 1)    # noqa: SLF001
        missing = content.keys() - have.keys()
        extra = have.keys() - content.keys()
        changed = {k for k in content.keys() & have.keys() if content[k] != have[k]}
        for what, keys in (("missing", missing), ("unexpected", extra), ("changed", changed)):
            if keys:
                out.append(f"{name}: {len(keys)} {what} entries")
    raw = libbpf.lookup(h.maps["settings"], maps.U32.pack(version & 1), maps.SETTINGS.size)
    if raw != maps.settings_value(policy, st.spec.mode, st.spec.internal, host.tcp_loose()):
        out.append("settings: differ from the network's (mode, egress, internal, tcp_loose)")
    want = maps.subnet_entries(st.spec.subnets)
    have = set(libbpf.keys(h.maps["subnets"], maps.SUBNET_KEY.size))
    if have != set(want):
        out.append("subnets: differ from the network's")
    out += _port_drift(h, st, ports)
    if backend.nat is not None:                  # published ports and masquerade (nftables)
        out += backend.nat.drift(st.spec.id)
    return out


def _port_drift(h, st, ports: list) -> list:
    import socket   # noqa: PLC0415
    out = []
    ours = {libbpf.prog_id(fd) for fd in h.progs.values()}
    for port in ports:
        try:
            ifindex = socket.if_nametoindex(port.name)
        except OSError:
            out.append(f"port {port.name}: no such link")
            continue
        raw = libbpf.lookup(h.maps["endpoints"], maps.U32.pack(ifindex), maps.ENDPOINT.size)
        if raw != maps.endpoint_value(port):
            out.append(f"port {port.name}: endpoint entry {'missing' if raw is None else 'differs'}")
        for key, value in maps.member_entries(port, ifindex).items():
            if libbpf.lookup(h.maps["members"], key, maps.MEMBER.size) != value:
                out.append(f"port {port.name}: member entry missing or differs")
        for point, prog in ((libbpf.BPF_TC_INGRESS, "ingress"), (libbpf.BPF_TC_EGRESS, "egress")):
            if libbpf.tc_query(ifindex, point) not in ours:
                out.append(f"port {port.name}: our {prog} program is not attached")
    return out
