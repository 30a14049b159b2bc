"""--json's text (plugin.cli.format.json_text) is json.dumps(indent=2, sort_keys=True)'s, char for char."""
import json
import math

from hypothesis import given, strategies as st

from plugin.cli.format import json_text

SCALARS = (st.none() | st.booleans() | st.integers() | st.text()
           | st.floats(allow_nan=True, allow_infinity=True))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.lists(st.text(), max_size=4)
                      | st.dictionaries(st.text(), inner, max_size=4)
                      | st.dictionaries(st.integers(), inner, max_size=3)
                      | st.tuples(inner, inner), max_leaves=30)


@given(VALUES)
def test_the_same_text_as_json(value):
    assert json_text(value) == json.dumps(value, indent=2, sort_keys=True)


def test_a_policy_answer_and_odd_strings():
    rules = [f"s{i}->s{i + 1}:tcp/{i}" for i in range(1000)]
    answer = {"network": "be0c5" * 12, "count": 1000, "rules": rules, "empty": [], "none": {},
              "odd": ["tab\there", "quote\"", "back\\slash", "new\nline", "é ü ☃", "\x00", "\ud800"],
              "nested": [{"b": [1, 2.5, math.inf], "a": {"x": None}}, [], [[]]]}
    assert json_text(answer) == json.dumps(answer, indent=2, sort_keys=True)
    assert json.loads(json_text(answer)) == json.loads(json.dumps(answer))
