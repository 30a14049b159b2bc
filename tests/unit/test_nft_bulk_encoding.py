"""The policy sets' elements encoded in bulk are the bytes of encoding them one by one."""
from __future__ import annotations

from hypothesis import given, strategies as st

from plugin.enforce.nftables import netlink
from plugin.enforce.nftables.elements import SCHEMAS
from plugin.enforce.nftables.netlink import NFT_MSG_DELSETELEM, NFT_MSG_NEWSETELEM

_VALUES = {"mark": st.integers(0, 2**32 - 1), "zero": st.just(0), "proto": st.sampled_from([1, 6, 17, 58]),
           "port": st.integers(0, 65535)}
BULK_SETS = sorted(name for name in SCHEMAS if netlink.bulk_encoder(name) is not None)


def _elements(name: str):
    return st.lists(st.tuples(*(_VALUES[k] for k in SCHEMAS[name][1])), max_size=40)


def test_the_policy_sets_have_a_bulk_encoder_and_the_others_none():
    assert {"pol_port", "pol_proto", "pol_icmp", "pol_any", "restricted"} <= set(BULK_SETS)
    for name in ("pol_range", "id4", "eg4", "veths", "macs"):
        assert netlink.bulk_encoder(name) is None
    assert netlink.bulk_encoder("id4", key_only=True) is None   # an address key: one by one


@given(st.data())
def test_bulk_is_the_elements_encoded_one_by_one(data):
    name = data.draw(st.sampled_from(BULK_SETS))
    elements = data.draw(_elements(name))
    for key_only in (False, True):
        one_by_one = b"".join(netlink.encode_element(name, e, key_only=key_only) for e in elements)
        assert netlink.bulk_encoder(name, key_only)(elements) == one_by_one


@given(st.lists(st.tuples(_VALUES["mark"], _VALUES["mark"], _VALUES["proto"], _VALUES["port"]), max_size=900,
                unique=True))
def test_a_batch_s_messages_are_the_same_with_and_without_bulk(elements):
    """Chunked into messages as before (hundreds of elements per message), same sequence numbers."""
    sets = {"pol_port": dict.fromkeys(elements), "pol_any": dict.fromkeys((e[0], e[1]) for e in elements)}
    for verb in (NFT_MSG_NEWSETELEM, NFT_MSG_DELSETELEM):
        bulk = netlink.ElementWriter()._messages("secnet_x", verb, sets, {})
        try:
            netlink._BULK.update({(n, k): None for n in sets for k in (False, True)})
            plain = netlink.ElementWriter()._messages("secnet_x", verb, sets, {})
        finally:
            netlink._BULK.clear()
        assert bulk == plain
