"""What differs between an eBPF network's kernel state and the desired state.

Read-only: compares the version in force of the versioned maps, the
settings, the endpoints and members, whether our programs sit on every
port's veth with no foreign filter before them (hooks.py: what drift finds there,
``backend.foreign_seen``, the next whole write deletes), and whether the network's
NAT-only nft table is there. One short line per difference (the reconciler logs them
and calls apply_network to repair).
"""
from __future__ import annotations

from . import hooks, host, libbpf, maps


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
    out += _port_drift(backend, st, ports)
    if backend.nat is not None:                  # published ports and masquerade (nftables)
        out += backend.nat.drift(st.spec.id)
    return out


def _port_drift(backend, st, ports: list) -> list:
    from plugin.kernel.links import IPRoute   # noqa: PLC0415
    ours = {libbpf.prog_id(fd) for fd in st.handle.progs.values()}
    out = []
    with IPRoute() as ipr:
        for port in ports:
            out += _one_port(st.handle, ipr, port, ours, backend.foreign_seen)
    return out


def _one_port(h, ipr, port, ours: set, foreign_seen: set) -> list:
    """Drift lines of one port: its map entries, our programs on its veth's hooks, and
    foreign filters before them (their ifindex goes into ``foreign_seen``)."""
    import socket   # noqa: PLC0415
    try:
        ifindex = socket.if_nametoindex(port.name)
    except OSError:
        return [f"port {port.name}: no such link"]
    out = []
    raw = libbpf.lookup(h.maps["endpoints"], maps.U32.pack(ifindex), maps.ENDPOINT.size)
    if raw != maps.endpoint_value(port):
        out.append(f"port {port.name}: endpoint entry {'missing' if raw is None else 'differs'}")
    for key, value in maps.member_entries(port, ifindex).items():
        if libbpf.lookup(h.maps["members"], key, maps.MEMBER.size) != value:
            out.append(f"port {port.name}: member entry missing or differs")
    for point, prog in hooks.POINTS.items():
        if libbpf.tc_query(ifindex, point) not in ours:
            out.append(f"port {port.name}: our {prog} program is not attached")
    strange = hooks.foreign_lines(ipr, ifindex, port.name)
    if strange:
        foreign_seen.add(ifindex)
    return out + strange
