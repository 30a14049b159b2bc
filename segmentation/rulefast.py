"""The fast path of rule parsing: the common form in one regex.

Segment or ``*`` on both sides, a lower-case protocol, a port or a range
(``web->api:tcp/8080``): parsed by one regex match, with endpoint and service
values shared between rules. Anything else, or anything this path finds
wrong, is left to the general parser of :mod:`segmentation.rules`, which
words the error.
"""

from __future__ import annotations

import functools
import re

from .names import segment_name_problem
from .rulevalues import ANY, PORT_PROTOCOLS, Endpoint, Rule, Service

_NAME = r"([A-Za-z0-9][A-Za-z0-9_.-]{0,62}|\*)"
_SIMPLE = re.compile(_NAME + "->" + _NAME + r"(?::(tcp|udp|icmp|any)(?:/([0-9]{1,5})(?:-([0-9]{1,5}))?)?)?")


def fast_rule(text: str) -> Rule | None:
    """``text`` as a Rule when it is in the common form and valid, else None."""
    found = _SIMPLE.fullmatch(text)
    if found is None:
        return None
    src, dst, proto, lo, hi = found.groups()
    src_end, dst_end = _named_endpoint(src), _named_endpoint(dst)
    if src_end is None or dst_end is None:
        return None
    service, suffix = _simple_service(proto, lo, hi)
    if service is None:
        return None
    return Rule.of_checked(src_end, dst_end, service, f"{src}->{dst}{suffix}")


@functools.lru_cache(maxsize=4096)
def _named_endpoint(text: str):
    """``*`` or a valid segment name as an Endpoint (shared), else None."""
    if text == "*":
        return Endpoint("all", "*")
    return Endpoint("segment", text) if segment_name_problem(text) is None else None


@functools.lru_cache(maxsize=4096)
def _simple_service(proto, lo, hi) -> tuple:
    """``(Service, ":" + its text)`` of ``proto`` (None: any) and port texts (None: no
    ports); ``(ANY, "")``; ``(None, None)`` when not valid."""
    if proto is None or (proto == "any" and lo is None):
        return ANY, ""
    if lo is None:
        service = Service(proto)
    else:
        first = int(lo)
        last = first if hi is None else int(hi)
        if proto not in PORT_PROTOCOLS or not 1 <= first <= last <= 65535:
            return None, None
        service = Service(proto, first, last)
    return service, ":" + service.text()
