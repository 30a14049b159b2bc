"""JSON of the CLI's requests and answers without importing the ``json`` package.

``import json`` costs every ``secnet`` command ~16 ms of CPU (median of 25 interleaved
process pairs on the 2-core bench VM; a one-rule edit is ~40 ms in all): its
decoder and encoder modules import ``re``, and ``re`` imports ``enum``. The work
itself is done by ``_json``, the C module that ``json`` wraps (CPython's own
accelerator, built into every CPython 3): here it is called as ``json.dumps`` and
``json.loads`` call it, with their default settings. Where ``_json`` is missing
(another Python), the ``json`` package does it.

* :func:`dumps`: what ``json.dumps(obj)`` gives (``", "`` and ``": "`` separators,
  ASCII only, NaN and the infinities allowed, no circular-reference check: the CLI
  sends dicts of strings, lists, numbers and booleans). TypeError for other values.
* :func:`loads`: ``json.loads`` of UTF-8 bytes or a str; ValueError (as ``json``'s
  ``JSONDecodeError`` is one) for anything that is not one JSON value.

The ``--json`` output (indented, sorted keys) still imports ``json``: only then.
"""
from __future__ import annotations

try:
    from _json import encode_basestring_ascii as _quote, make_encoder as _make_encoder, make_scanner as _make_scanner
except ImportError:   # pragma: no cover - not CPython
    _make_encoder = _make_scanner = None

_WHITESPACE = " \t\n\r"   # JSON's (RFC 8259 section 2)


class _Context:
    """What ``_json.make_scanner`` reads of a ``json.JSONDecoder``: its default settings
    (``parse_constant``: ``float`` reads ``NaN``, ``Infinity`` and ``-Infinity`` as
    ``json``'s table of them does)."""

    strict = True
    object_hook = object_pairs_hook = None
    parse_float, parse_int, parse_constant = float, int, float


def _default(obj):
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


if _make_encoder is not None:
    # the arguments json.JSONEncoder.iterencode passes (markers None: no circular check)
    _encode = _make_encoder(None, _default, _quote, None, ": ", ", ", False, False, True)
    _scan = _make_scanner(_Context())
else:   # pragma: no cover - not CPython
    _encode = _scan = None


def dumps(obj) -> str:
    """``json.dumps(obj)``."""
    if _encode is None:   # pragma: no cover
        import json
        return json.dumps(obj)
    return "".join(_encode(obj, 0))


def loads(data):
    """``json.loads(data)`` (``data``: UTF-8 bytes or str)."""
    text = bytes(data).decode() if isinstance(data, (bytes, bytearray)) else data
    if _scan is None:   # pragma: no cover
        import json
        return json.loads(text)
    text = text.strip(_WHITESPACE)
    try:
        obj, end = _scan(text, 0)
    except StopIteration:
        raise ValueError("not a JSON value") from None
    if end != len(text):
        raise ValueError(f"extra data after the JSON value at character {end}")
    return obj
