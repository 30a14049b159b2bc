"""The drop reasons are one list (plugin.enforce.backend.REASONS) that the eBPF
datapath indexes (``enum reason`` in bpf/lib/common.h), the nft drop chains are made
from, and ``secnet log`` words (droplog.REASON_TEXT): a reason added to one and not
the others would be logged or counted under another name on one backend."""
from __future__ import annotations

import pathlib
import re

from plugin.enforce.backend import REASONS
from plugin.observe.droplog import REASON_TEXT

COMMON_H = pathlib.Path(__file__).parents[2] / "plugin/enforce/ebpf/bpf/lib/common.h"


def test_the_ebpf_enum_is_the_reasons_in_order():
    body = re.search(r"enum reason \{(.*?)\};", COMMON_H.read_text(), re.S).group(1)
    body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
    names = [n.split("=")[0].strip() for n in body.split(",") if n.strip()]
    assert names == ["R_" + r.upper().replace("-", "_") for r in REASONS]


def test_every_reason_has_a_log_text():
    assert set(REASON_TEXT) == set(REASONS)
    assert REASON_TEXT["loopback"].startswith("to the host's loopback")
