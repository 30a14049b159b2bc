"""Published ports (`docker run -p`): Docker's port map as typed bindings.

Docker hands a remote driver the bindings of ``-p`` in the endpoint option
``com.docker.network.portmap`` (``[{Proto: 6|17, IP, Port, HostIP, HostPort,
HostPortEnd}]``); :func:`parse_portmap` validates them into :class:`Binding`
values (BadRequest for anything malformed) before anything is reserved.

HostIP keeps Docker's meaning (U18-F5): no HostIP (``""``) publishes on every
address of both families; ``0.0.0.0`` on every IPv4 address only and ``::``
on every IPv6 address only, as Docker's bridge driver binds them (moby
libnetwork#2607; measured here on dockerd 20.10: ``-p 0.0.0.0:P:C`` is refused
on the host's IPv6 addresses, ``-p [::]:P:C`` on its IPv4 ones). Rows that an
older secnet saved folded both into ``""`` and keep that meaning ("every
address") when restored: they are what was in force, and Docker does not
send the port map again until the container starts again.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from plugin.kernel.addresses import host_families
from plugin.errors import BadRequest

PORTMAP = "com.docker.network.portmap"
PROTOS = {6: "tcp", 17: "udp", "tcp": "tcp", "udp": "udp"}


@dataclass(frozen=True)
class Binding:
    proto: str
    host_ip: str        # "" = every address, 0.0.0.0 / :: = every address of that family
    host_port: int      # 0 = any free port
    host_port_end: int
    container_port: int


def _port(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise BadRequest(f"invalid {what} {value!r} in {PORTMAP}: expected 0-65535")
    return value


def parse_portmap(options: dict) -> list:
    """Docker's ``com.docker.network.portmap`` → Bindings (validated)."""
    raw = options.get(PORTMAP) or []
    if not isinstance(raw, list):
        raise BadRequest(f"invalid {PORTMAP}: expected a list")
    out = []
    for item in raw:
        if not isinstance(item, dict):
            raise BadRequest(f"invalid {PORTMAP} entry {item!r}")
        proto = PROTOS.get(item.get("Proto"))
        if proto is None:
            raise BadRequest(f"unsupported protocol {item.get('Proto')!r} in {PORTMAP}: tcp or udp")
        host_ip = item.get("HostIP") or ""
        if host_ip:
            try:
                host_ip = str(ipaddress.ip_address(host_ip))
            except ValueError:
                raise BadRequest(f"invalid HostIP {host_ip!r} in {PORTMAP}") from None
            if host_ip == "::1":
                # IPv6 has no route_localnet: a flow from [::1] cannot be DNAT'd to a
                # container (the kernel drops it), so say so instead of publishing a black hole.
                raise BadRequest(f"cannot publish on [::1]:{item.get('HostPort') or ''}: secnet cannot "
                                 "forward IPv6 loopback to a container; publish on 127.0.0.1 or [::]")
        cport = _port(item.get("Port"), "Port")
        start = _port(item.get("HostPort") or 0, "HostPort")
        end = _port(item.get("HostPortEnd") or start, "HostPortEnd")
        if cport == 0 or end < start:
            raise BadRequest(f"invalid port binding {item!r} in {PORTMAP}")
        out.append(Binding(proto, host_ip, start, end, cport))
    return out


def host_text(host_ip: str) -> str:
    """``host_ip`` as Docker prints it before a port: an IPv6 address in brackets."""
    return f"[{host_ip}]" if ":" in host_ip else host_ip


def check_families(bindings: list, families: set) -> None:
    """BadRequest naming the first binding that would publish on no family of the
    container (``families``: the IP versions it has an address in, e.g. ``{4}``):
    ``-p [::]:P:C`` or ``-p <IPv6 address>:P:C`` on an IPv4-only network, and the
    converse. Docker's bridge proxies such a port to the other family (docker-proxy);
    secnet does not, and would otherwise hold the port and publish nothing."""
    for b in bindings:
        missing = [f for f in host_families(b.host_ip) if f not in families]
        if len(missing) == len(host_families(b.host_ip)):
            where = f"{host_text(b.host_ip)}:{b.host_port}" if b.host_port else host_text(b.host_ip)
            raise BadRequest(f"cannot publish {where}/{b.proto}: the container has no "
                             f"IPv{missing[0]} address on this network, and secnet does not forward "
                             f"one IP version to the other")
