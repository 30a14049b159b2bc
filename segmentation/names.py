"""Segment names.

A segment name is what a container's segment label (or ``--driver-opt
secnet.segment=...``) holds and what allow rules name::

    SEGMENT := [A-Za-z0-9][A-Za-z0-9_.-]{0,62}

Anything that parses as an IP address is an address, never a segment name
(``10.0.0.1`` matches the pattern but is refused), so a rule can never be
read two ways. Four dot-separated numbers that are no valid address
(``10.0.0.300``) are refused too: a mistyped address must not silently
become a segment that no container is in. So are the short forms that
inet_aton(3) reads as IPv4 addresses (``127.1`` is 127.0.0.1, ``10.1.2`` is
10.1.0.2, hex parts ``0x7f.1`` too; what ``ping`` and most tools accept):
two to four dot-separated numbers (U11-F2). A single number (``1``, ``2024``)
stays a segment name: it reads as no address in a rule, and it needs no dot.
"""

from __future__ import annotations

import functools
import ipaddress
import re

from .errors import PolicyError, shown

SEGMENT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")

# digits and dots in the shape of an IPv4 address, e.g. a mistyped 10.0.0.300
_IPV4_LOOKALIKE = re.compile(r"[0-9]+(\.[0-9]+){3}")

# two or three dot-separated numbers (decimal, octal or 0x hex parts), or four with a
# hex part: the inet_aton(3) forms that ipaddress does not read
_INET_ATON_SHORT = re.compile(r"(?:0[xX][0-9A-Fa-f]+|[0-9]+)(?:\.(?:0[xX][0-9A-Fa-f]+|[0-9]+)){1,3}")

SEGMENT_SYNTAX = (
    "a segment name is 1-63 letters, digits, '_', '.' or '-', "
    "starting with a letter or digit"
)


_ADDRESS_CHARS = re.compile(r"[0-9A-Fa-f.:/%]+")


def _is_address(text: str) -> bool:
    """True when ``text`` parses as an IP address or network."""
    if not _ADDRESS_CHARS.fullmatch(text):   # a letter beyond a-f: no address (fast path)
        return False
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return True


def segment_name_problem(text: object) -> str | None:
    """Why ``text`` is not a valid segment name, or ``None`` if it is."""
    if not isinstance(text, str):
        return f"a segment name must be a string, not {type(text).__name__}"
    return _name_problem(text)


@functools.lru_cache(maxsize=8192)
def _name_problem(text: str) -> str | None:
    """segment_name_problem of a string; names repeat across rules, so the answer is kept."""
    if text == "":
        return "a segment name must not be empty"
    if not SEGMENT_RE.fullmatch(text):
        return SEGMENT_SYNTAX
    if _is_address(text):
        return "it is an IP address, not a segment name"
    if _IPV4_LOOKALIKE.fullmatch(text):
        return "it looks like an IPv4 address but is not a valid one"
    if _INET_ATON_SHORT.fullmatch(text):
        return _short_form_problem(text)
    return None


def _short_form_problem(text: str) -> str:
    """Why a short IPv4 form (inet_aton(3): ``127.1``) is no segment name."""
    full = _inet_aton(text)
    if full is None:   # e.g. 10.300.1 (a part out of range): no address, but looks like one
        return "it looks like an IPv4 address in short form but is not a valid one"
    return f"it is the IPv4 address {full} in short form; write it in full"


def _inet_aton(text: str) -> str | None:
    """The dotted-quad address inet_aton(3) reads in ``text`` (2-4 parts, each decimal,
    0-octal or 0x-hex; the last fills the remaining bytes), or None. Pure (no socket)."""
    parts = text.split(".")
    values = []
    for part in parts:
        base = 16 if part[:2].lower() == "0x" else 8 if len(part) > 1 and part[0] == "0" else 10
        try:
            values.append(int(part[2:] if base == 16 else part, base))
        except ValueError:   # e.g. 09: no octal number
            return None
    last = 256 ** (5 - len(parts))
    if any(v > 255 for v in values[:-1]) or values[-1] >= last:
        return None
    number = values[-1]
    for i, v in enumerate(values[:-1]):
        number += v << (8 * (3 - i))
    return ".".join(str((number >> shift) & 255) for shift in (24, 16, 8, 0))


def is_segment_name(text: object) -> bool:
    """True when ``text`` is a valid segment name."""
    return segment_name_problem(text) is None


def check_segment_name(text: object, what: str = "segment") -> str:
    """Return ``text`` if it is a valid segment name, else raise PolicyError.

    ``what`` names the thing in the message, e.g. ``"default segment"``.
    """
    problem = segment_name_problem(text)
    if problem is not None:
        raise PolicyError(f"invalid {what} name '{shown(text)}': {problem}")
    return text  # type: ignore[return-value]
