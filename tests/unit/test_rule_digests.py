"""nftables drift check: a network's reference rules are kept as digests, and the
comparison still names the chain and the first differing item."""
from __future__ import annotations

from plugin.enforce.nftables.kernel import compare_rules, digested


def _shapes(port: bytes = b"\x1f\x90") -> dict:
    rule = lambda n: ((1, b"snt-abc\0"), (4, b"expr" + bytes([n]) + port))   # noqa: E731
    return {("inet", "rule forward"): [rule(0), rule(1), rule(2)],
            ("bridge", "chain forward"): [((3, b"forward\0"),)]}


def test_equal_shapes_give_equal_digests():
    assert digested(_shapes()) == digested(_shapes())
    assert compare_rules(digested(_shapes()), digested(_shapes())) == []


def test_a_changed_item_is_named_by_its_chain_and_index():
    have = _shapes()
    have[("inet", "rule forward")][1] = ((1, b"snt-abc\0"), (4, b"expr\x01\x27\x0f"))
    assert compare_rules(digested(_shapes()), digested(have)) == [
        "inet rule forward: item 1 differs (3 items, want 3)"]


def test_a_missing_chain_is_named():
    have = _shapes()
    del have[("bridge", "chain forward")]
    assert compare_rules(digested(_shapes()), digested(have)) == ["bridge chain forward missing"]


def test_a_digest_is_16_bytes_an_item():
    out = digested(_shapes())
    assert {len(d) for items in out.values() for d in items} == {16}
