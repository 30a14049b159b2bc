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
