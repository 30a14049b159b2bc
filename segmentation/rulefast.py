"""The fast path of rule parsing: the common form without a regex per rule.

Segment or ``*`` on both sides, a lower-case protocol, a port or a range
(``web->api:tcp/8080``): the rule is cut at ``->`` and ``:`` and its three
parts are looked up in tables of parts already seen (segment names and
services repeat across a policy), so that endpoint and service values are
shared between rules. Anything else, or anything this path finds wrong, is
left to the general parser of :mod:`segmentation.rules`, which words the
error.
"""

from __future__ import annotations

import re

from .names import segment_name_problem
from .rulevalues import (_SET_DST, _SET_SEGMENTS, _SET_SERVICE, _SET_SRC, _SET_STAR, _SET_TEXT, ANY,
                         PORT_PROTOCOLS, Endpoint, Rule, Service)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}|\*")
_SERVICE = re.compile(r"(tcp|udp|icmp|any)(?:/([0-9]{1,5})(?:-([0-9]{1,5}))?)?")
_BOUND = 4096      # entries per table of parts seen; a table that grows past it starts again
_ENDPOINTS: dict = {}   # text -> Endpoint, or None when not a plain name
_SERVICES: dict = {}   # text after ':' -> (Service, ":" + its text, whether that is ":" + the text), or _NONE
_NONE = (None, None, False)
_ANY = (ANY, "", True)   # no ':': the rule is any
_NEW = object.__new__


def fast_rule(text: str) -> Rule | None:
    """``text`` as a Rule when it is in the common form and valid, else None.

    The rule is made without its checks and formatting (the parts are checked here):
    each slot set by its own setter, the canonical text ``text`` itself when the service
    was written canonically (a policy set of 10,000 rules makes 10,000: ~0.3 µs apiece
    less than a constructor call and a formatted text)."""
    src, arrow, rest = text.partition("->")
    dst, colon, svc = rest.partition(":")
    src_end = _ENDPOINTS.get(src, False)
    if src_end is False:
        src_end = _endpoint(src)
    dst_end = _ENDPOINTS.get(dst, False)
    if dst_end is False:
        dst_end = _endpoint(dst)
    if colon:
        found = _SERVICES.get(svc) if svc else _NONE
        if found is None:
            found = _service(svc)
    else:
        found = _ANY
    service = found[0]
    if src_end is None or dst_end is None or service is None or not arrow:
        return None
    rule = _NEW(Rule)
    _SET_SRC(rule, src_end)
    _SET_DST(rule, dst_end)
    _SET_SERVICE(rule, service)
    _SET_TEXT(rule, text if found[2] else f"{src}->{dst}{found[1]}")
    if src_end.kind == "segment" and dst_end.kind == "segment":
        _SET_SEGMENTS(rule, None)   # both ends segments: read from them (``Rule.segments``), no tuple kept
        _SET_STAR(rule, False)
    else:   # a '*' at one end at least
        segments = tuple(e.value for e in (src_end, dst_end) if e.kind == "segment")
        _SET_SEGMENTS(rule, segments)
        _SET_STAR(rule, True)
    return rule


def fast_rules(texts) -> list:
    """:func:`fast_rule` of each of ``texts`` (a list; None where it is not in the common form)."""
    return list(map(fast_rule, texts))


def _endpoint(text: str):
    """``*`` or a valid segment name as an Endpoint (shared), else None; remembered."""
    if _NAME.fullmatch(text) is None:
        found = None
    elif text == "*":
        found = Endpoint("all", "*")
    else:
        found = Endpoint("segment", text) if segment_name_problem(text) is None else None
    if len(_ENDPOINTS) >= _BOUND:
        _ENDPOINTS.clear()
    _ENDPOINTS[text] = found
    return found


def _service(text: str) -> tuple:
    """``(Service, ":" + its text, whether that is ":" + text)`` of the text after ``:``
    (e.g. ``tcp/80-90``); ``_NONE`` when it is not in the common form or not valid; remembered."""
    match = _SERVICE.fullmatch(text)
    service, suffix = (None, None) if match is None else _simple_service(*match.groups())
    found = _NONE if service is None else (service, suffix, suffix == ":" + text)
    if len(_SERVICES) >= _BOUND:
        _SERVICES.clear()
    _SERVICES[text] = found
    return found


def _simple_service(proto, lo, hi) -> tuple:
    """``(Service, ":" + its text)`` of ``proto`` and port texts (None: no ports);
    ``(ANY, "")`` for ``any``; ``(None, None)`` when not valid."""
    if proto == "any" and lo is None:
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
