"""LineRing (the drop log's compressed ring) behaves as a deque(maxlen) of rows."""
from __future__ import annotations

import collections
import json

from hypothesis import given, settings, strategies as st

from plugin.observe.linering import LineRing


@settings(max_examples=150, deadline=None)
@given(maxlen=st.integers(1, 40), block=st.integers(1, 9),
       lines=st.lists(st.text(st.characters(blacklist_characters="\n"), max_size=30), max_size=120),
       since=st.integers(0, 130))
def test_the_ring_holds_what_a_bounded_deque_holds(maxlen, block, lines, since):
    ring, model = LineRing(maxlen, block=block), collections.deque(maxlen=maxlen)
    for seq, text in enumerate(lines, 1):
        row = (seq, f"net{seq % 3}", text)
        ring.append(*row)
        model.append(row)
    assert list(ring) == list(model)
    assert list(ring.rows(since)) == [r for r in model if r[0] > since]
    assert len(ring) == len(model) and ring.size == sum(len(r[2]) for r in model)
    assert ring.last() == (model[-1] if model else None)


def test_ten_thousand_drop_entries_take_a_fraction_of_their_text():
    ring = LineRing(10_000)
    entry = {"network": "ab" * 32, "reason": "no-rule", "why": "no rule allows it", "dport": 0,
             "src": {"address": "10.200.0.2", "endpoint": "cd" * 32}, "dst": {"address": "10.200.0.3"}}
    for seq in range(1, 12_001):
        ring.append(seq, entry["network"], json.dumps(dict(entry, seq=seq, dport=seq % 5000)))
    held = sum(len(b.data) + b.seqs.itemsize * len(b.seqs) for b in ring._blocks)
    assert len(ring) == 10_000 and list(ring)[0][0] == 2_001
    assert held < ring.size / 5
