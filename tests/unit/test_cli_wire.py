"""The CLI's JSON (plugin.cli.wire) is the json package's, without importing it."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from hypothesis import given, settings, strategies as st

from plugin.cli import wire

SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(), inner, max_size=4), max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(VALUES)
def test_dumps_and_loads_are_the_json_package_s(value):
    text = json.dumps(value)
    assert wire.dumps(value) == text
    assert wire.loads(text) == value
    assert wire.loads(text.encode()) == value
    assert wire.loads(f" \n{text}\r\n\t") == json.loads(f" \n{text}\r\n\t")


def test_what_the_cli_sends_and_reads():
    body = {"network": "0123456789ab", "action": "set", "rules": ["web->api:tcp/80", "é->x"], "list": False}
    assert wire.dumps(body) == json.dumps(body)
    assert wire.loads(b'{"Err": "no secnet network \'x\'"}\n') == {"Err": "no secnet network 'x'"}
    assert math.isnan(wire.loads("NaN")) and wire.loads("[-Infinity, 1e3]") == [-math.inf, 1000.0]


@pytest.mark.parametrize("bad", [b"", b"   ", b"hello", b'{"a": 1} x', b'{"a": }', b"[1, 2", b"\xff", b'"\\x"'])
def test_what_is_not_one_json_value_is_a_value_error(bad):
    with pytest.raises(ValueError):
        json.loads(bad)
    with pytest.raises(ValueError):
        wire.loads(bad)


def test_a_value_json_cannot_write_is_a_type_error():
    with pytest.raises(TypeError, match="set is not JSON serializable"):
        wire.dumps({"rules": {"a"}})


def test_a_plain_rule_edit_runs_without_the_json_package(tmp_path):
    """(its import, through re and enum, was ~16 ms of CPU of every command)"""
    code = ("import sys; from plugin.cli import client, main; client.call = lambda path, body, timeout=30: "
            "client.wire.loads(client.wire.dumps({'network': 'n' * 64, 'count': len(body.get('rules', ()))})); "
            "main.call = client.call; main.network_names = lambda: {}; main.resolve_network = lambda ref: ref; "
            "main.main(['policy', 'n', 'set', 'a->b:tcp/1']); "
            "print(sorted({'json', 're', 'enum'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["network nnnnnnnnnnnn: 1 rule in force", "[]"]
