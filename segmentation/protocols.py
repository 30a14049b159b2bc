"""The L4 protocols secnet's rules speak of: one table, used everywhere.

A rule names ``tcp``, ``udp``, ``icmp`` or ``any``. ``icmp`` means ICMP echo
(IPv4) and ICMPv6 echo (IPv6): the protocol number differs per family, so
every place that turns a rule into a kernel match asks this table instead of
writing the numbers itself (IANA protocol numbers: tcp 6, udp 17, icmp 1,
ipv6-icmp 58; echo-request 8 / 128, echo-reply 0 / 129).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class L4:
    """One L4 protocol a flow can have.

    ``number4``/``number6``: the IP protocol (next header) number per family;
    ``ports``: whether flows of it have ports; ``echo4``/``echo6``: the echo
    request type for ICMP (``None`` otherwise).
    """

    name: str
    number4: int
    number6: int
    ports: bool
    echo4: int | None = None
    echo6: int | None = None

    def number(self, family: int) -> int:
        """The IP protocol number of this protocol in IPv``family`` (4 or 6)."""
        return self.number4 if family == 4 else self.number6


TCP = L4("tcp", 6, 6, ports=True)
UDP = L4("udp", 17, 17, ports=True)
ICMP = L4("icmp", 1, 58, ports=False, echo4=8, echo6=128)

ANY = "any"
#: name -> L4 of every protocol a single flow can have
FLOW = {p.name: p for p in (TCP, UDP, ICMP)}
FLOW_PROTOCOLS = tuple(FLOW)                 # ("tcp", "udp", "icmp")
RULE_PROTOCOLS = FLOW_PROTOCOLS + (ANY,)     # what a rule may name
PORT_PROTOCOLS = tuple(p.name for p in FLOW.values() if p.ports)  # ("tcp", "udp")
BY_NUMBER = {(fam, p.number(fam)): p for p in FLOW.values() for fam in (4, 6)}
ECHO_REPLY = {4: 0, 6: 129}


def by_number(family: int, number: int) -> L4 | None:
    """The L4 protocol of IP protocol ``number`` in IPv``family``, or None."""
    return BY_NUMBER.get((family, number))
