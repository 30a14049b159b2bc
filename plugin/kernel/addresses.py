"""Address facts that several layers need: the IPv6 link-local address the kernel
gives an interface, and which host addresses a published port's binding covers.
Pure functions (no I/O).
"""
from __future__ import annotations

import functools
import ipaddress


@functools.lru_cache(maxsize=8192)
def link_local(mac: str) -> str:
    """The EUI-64 link-local address the kernel gives an interface with MAC ``mac``
    (``"02:42:0a:c8:00:02"`` -> ``"fe80::42:aff:fec8:2"``): fe80::/64 and the MAC with
    ff:fe in its middle and the universal/local bit flipped (RFC 4291 appendix A;
    Linux addrconf_ifid_eui48, net/ipv6/addrconf.c, the default addr_gen_mode 0).
    A container on another scheme (stable-privacy, random) has another address:
    anti-spoofing drops what it sends from it. Raises ValueError on a malformed MAC.
    Remembered per MAC (a pure function; formatting costs ~10 µs and every policy
    edit's flow pruning asks it for each member: 1,000 members, ~10 ms a ``policy set``)."""
    b = bytes.fromhex(mac.replace(":", ""))
    if len(b) != 6:
        raise ValueError(f"not a MAC address: {mac!r}")
    iid = bytes([b[0] ^ 0x02, b[1], b[2], 0xFF, 0xFE, b[3], b[4], b[5]])
    return str(ipaddress.IPv6Address(b"\xfe\x80" + bytes(6) + iid))


def host_families(host_ip: str) -> tuple:
    """The IP versions a binding on ``host_ip`` publishes on: ``""`` both (4, 6),
    otherwise the address's own (``0.0.0.0`` 4, ``::`` 6)."""
    return (4, 6) if not host_ip else (ipaddress.ip_address(host_ip).version,)


def is_wildcard(host_ip: str) -> bool:
    """True when a binding on ``host_ip`` covers every address (of its families):
    ``""``, ``0.0.0.0`` or ``::``."""
    return not host_ip or ipaddress.ip_address(host_ip).is_unspecified


def covers(host_ip: str, address: str, is_local) -> bool:
    """Does a binding on ``host_ip`` publish on host address ``address``? A wildcard
    binding covers every address of its families for which ``is_local(address)``
    (address -> bool, asked only then) holds; any other only ``address`` itself."""
    addr = ipaddress.ip_address(address)
    if addr.version not in host_families(host_ip):
        return False
    return bool(is_local(address)) if is_wildcard(host_ip) else ipaddress.ip_address(host_ip) == addr
