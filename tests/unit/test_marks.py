"""The mark bits: the eBPF programs' copies equal plugin/kernel/marks.py, and no two
meanings of one kind (packet, connection) share a bit."""
from __future__ import annotations

import re
from pathlib import Path

from plugin.kernel import marks

COMMON_H = Path(marks.__file__).resolve().parents[1] / "enforce" / "ebpf" / "bpf" / "lib" / "common.h"
#: the C name of each mark the eBPF programs set -> the Python one
IN_C = {"PASSED_MARK": "PASSED_MARK", "LEARNED_MARK": "LEARNED_FLOW_MARK", "HOST_DENIED_MARK": "HOST_DENIED_MARK"}
PACKET = ("PASSED_MARK", "DNS_HOLD_MARK", "LEARNED_FLOW_MARK", "HOST_DENIED_MARK")
CONNECTION = ("LEARNED_FLOW_MARK", "JUDGED_FLOW_MARK")


def test_the_bpf_programs_set_the_same_bits():
    defines = dict(re.findall(r"^#define (\w+_MARK)\s+(0x[0-9a-fA-F]+)", COMMON_H.read_text(), re.M))
    assert set(defines) == set(IN_C), defines
    assert {IN_C[name]: int(value, 16) for name, value in defines.items()} == \
        {py: getattr(marks, py) for py in IN_C.values()}


def test_each_mark_is_one_bit_and_no_two_of_a_kind_share_it():
    for kind in (PACKET, CONNECTION):
        bits = [getattr(marks, name) for name in kind]
        assert all(b and b & (b - 1) == 0 for b in bits), kind
        assert len(set(bits)) == len(bits), kind
    assert all(getattr(marks, name) >= 1 << 16 for name in CONNECTION)   # above the 16-bit identities
