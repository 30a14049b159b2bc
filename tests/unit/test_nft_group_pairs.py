"""nftables' bridge table counts the group copies it drops (chain group_copy) per
(sender identity, receiving port); drops.group_copy_pairs names the port by its
identity, so that show's and the metrics' pairs hold them as on eBPF."""
from __future__ import annotations

from plugin.enforce.nftables import ruleset
from plugin.enforce.nftables.drops import group_copy_pairs
from plugin.enforce.nftables.nftdump import decode_mark_port


def test_group_copies_join_the_inet_pairs_by_the_ports_identity_now():
    inet = {(258, 259): (2, 120)}
    bridge = {(258, "veth1"): (3, 300), (258, "veth2"): (1, 100), (260, "gone0"): (5, 500)}
    got = group_copy_pairs(inet, bridge, {"veth1": 259, "veth2": 261})
    assert got == {(258, 259): (5, 420), (258, 261): (1, 100)}
    assert inet == {(258, 259): (2, 120)}, "the inet pairs are not changed in place"


def test_a_mark_and_port_key_is_decoded():
    assert decode_mark_port((258).to_bytes(4, "little") + b"veth1".ljust(16, b"\0")) == (258, "veth1")


def test_the_bridge_tables_no_rule_chains_count_the_pair():
    text = "\n".join(ruleset.render_bridge("ab" * 32, "br0"))
    chain = text.split("chain drop_no_rule {", 1)[1].split("\n  }", 1)[0]
    audit = text.split("chain audit_no_rule {", 1)[1].split("\n  }", 1)[0]
    assert "update @gdrops { meta mark . oifname }" in chain
    assert "update @gaudits { meta mark . oifname }" in audit
    assert "set gdrops { type mark . ifname;" in text


def test_an_inactive_containers_would_drops_are_named_by_port_and_address():
    """iaudits4/iaudits6 (U14-F1): the sending port's identity now, the destination
    address's container's identity (else the outside); a port that is gone is left out."""
    from segmentation.identities import OUTSIDE, PENDING, QUARANTINED   # noqa: PLC0415
    from plugin.enforce.backend import Port   # noqa: PLC0415
    from plugin.enforce.nftables.drops import named_pairs   # noqa: PLC0415
    ports = {"e1": Port("e1", "veth1", "02:00:00:00:00:01", "10.200.0.2", identity=258),
             "e2": Port("e2", "veth2", "02:00:00:00:00:02", "10.200.0.3", identity=258, quarantine="bad"),
             "e3": Port("e3", "veth3", "02:00:00:00:00:03", "10.200.0.4")}
    port_sets = {"id4": {("10.200.0.2",): (258,), ("10.200.0.3",): (QUARANTINED,), ("10.200.0.4",): (PENDING,)}}
    counts = {"audits": {(258, 259): (1, 60)}, "gaudits": {(OUTSIDE, "veth2"): (2, 80)},
              "iaudits4": {("veth2", "10.200.0.2"): (3, 90), ("veth3", "10.200.0.255"): (1, 28),
                           ("gone0", "10.200.0.2"): (9, 900)},
              "iaudits6": {("veth3", "ff02::16"): (1, 76)}}
    dropped, would = named_pairs(counts, ports, port_sets)
    assert dropped == {}
    assert would == {(258, 259): (1, 60), (OUTSIDE, QUARANTINED): (2, 80), (QUARANTINED, 258): (3, 90),
                     (PENDING, OUTSIDE): (2, 104)}


def test_a_port_and_address_key_is_decoded():
    from plugin.enforce.nftables.nftdump import decode_port_address   # noqa: PLC0415
    assert decode_port_address(b"veth1".ljust(16, b"\0") + bytes([10, 200, 0, 2])) == ("veth1", "10.200.0.2")
    assert decode_port_address(b"veth1".ljust(16, b"\0") + bytes(15) + b"\1") == ("veth1", "::1")


def test_the_bridge_tables_audit_chains_of_inactive_containers_count_the_pair():
    text = "\n".join(ruleset.render_bridge("ab" * 32, "br0"))
    for reason in ("quarantined", "pending"):
        audit = text.split(f"chain audit_{reason} {{", 1)[1].split("\n  }", 1)[0]
        drop = text.split(f"chain drop_{reason} {{", 1)[1].split("\n  }", 1)[0]
        assert "meta mark 0 update @iaudits4 { iifname . ip daddr }" in audit
        assert "meta mark 0 update @iaudits4 { iifname . arp daddr ip }" in audit
        assert "meta mark != 0 update @gaudits { meta mark . oifname }" in audit
        assert "iaudits" not in drop and "@gdrops" not in drop, "enforce mode: per reason only, as before"
    assert "set iaudits6 { type ifname . ipv6_addr;" in text
