"""Duplicate address detection is a port's own business (U23-F2), on every backend.

A DAD neighbour solicitation (source ``::``, to the target's solicited-node group)
for a tentative address makes that address a duplicate (RFC 4862 5.4.3): before,
both backends passed any member's DAD solicitation unjudged (anti-spoofing let
ND from ``::`` through), so a member of another segment, from its own MAC, took
away a victim's address as it came up (``dadfailed``: its link-local address at
every container start; a global one added without ``nodad``). Now a DAD
solicitation passes only for an address of the port that sends it (its EUI-64
link-local one or the one the network gave it), as a neighbour advert already
did; any other is dropped as ``spoofed``.

Lab: victim (segment api), attacker (evil), web (web), rule web->api:tcp/8080.
"""
from __future__ import annotations

import ipaddress
import socket
import struct
import threading
import time

import pytest

from nsfixtures import lab  # noqa: F401 (fixture)
from packets import Sniffer, icmp6_frame, link_local, mac_bytes, ns_socket, sh

pytestmark = pytest.mark.kernel


def _dad_ns(sender_mac: str, target: str) -> bytes:
    """A DAD solicitation from ``sender_mac`` (source ::) for ``target``, to its solicited-node group."""
    t = ipaddress.IPv6Address(target)
    group = ipaddress.IPv6Address(int(ipaddress.IPv6Address("ff02::1:ff00:0")) | (int(t) & 0xFFFFFF))
    gmac = "33:33:" + ":".join(f"{b:02x}" for b in group.packed[-4:])
    return icmp6_frame(sender_mac, gmac, "::", str(group), struct.pack("!BBHI", 135, 0, 0, 0) + t.packed)


def _solicited(frames: list, sender_mac: str) -> set:
    """The targets of the DAD solicitations from ``sender_mac`` among ``frames``."""
    out = set()
    for f in frames:
        if f[6:12] == mac_bytes(sender_mac) and f[12:14] == b"\x86\xdd" and f[20] == 58 and f[54] == 135:
            out.add(str(ipaddress.IPv6Address(f[62:78])))
    return out


def _spam(sender, frames: list, stop: threading.Event) -> None:
    with ns_socket(sender.ns, socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind(("eth0", 0))
        while not stop.is_set():
            for f in frames:
                s.send(f)
            time.sleep(0.05)


def _readd(c, addr: str) -> None:
    """``addr`` of ``c``'s eth0 removed and added again, with DAD (tentative)."""
    c.ip_cmd("addr", "del", f"{addr}/64", "dev", "eth0", check=False)
    c.ip_cmd("addr", "add", f"{addr}/64", "dev", "eth0")


def _state(c, addr: str) -> str:
    out = sh("ip", "-n", c.ns, "-6", "addr", "show", "dev", "eth0").stdout
    return next((line.strip() for line in out.splitlines() if f" {addr}/" in line), "(gone)")


def test_dad_for_another_members_address_is_dropped(lab):
    """The attacker's DAD solicitations for the victim's global and link-local addresses
    reach no one (sniffed at the victim and at web), are counted as ``spoofed``, and the
    victim's addresses, re-added with DAD meanwhile, come up; its own DAD solicitations
    (for its global and link-local address) reach both (the control)."""
    victim, attacker, web = lab.add(3)
    lab.apply("web->api:tcp/8080", {victim: "api", attacker: "evil", web: "web"}, "allow")
    time.sleep(0.2)
    theirs = [victim.ip6, link_local(victim.mac)]
    own = [attacker.ip6, link_local(attacker.mac)]
    before = lab.dropped("spoofed")
    sniffers = [Sniffer(victim), Sniffer(web)]
    stop = threading.Event()
    spammer = threading.Thread(target=_spam, args=(attacker, [_dad_ns(attacker.mac, a) for a in theirs + own],
                                                    stop), daemon=True)
    spammer.start()
    try:
        time.sleep(0.2)
        for addr in theirs:
            _readd(victim, addr)
        time.sleep(2.5)                  # DAD: one solicitation, one second (the defaults)
        seen = [_solicited(s.frames(0.3), attacker.mac) for s in sniffers]
    finally:
        stop.set()
        spammer.join(2)
        for s in sniffers:
            s.close()
    states = {addr: _state(victim, addr) for addr in theirs}
    dropped = lab.dropped("spoofed") - before
    assert all("dadfailed" not in s and "tentative" not in s and s != "(gone)" for s in states.values()), states
    assert all(got == set(own) for got in seen), (seen, own)
    assert dropped > 0, dropped
