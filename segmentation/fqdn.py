"""DNS names in rules (``web->dns(api.example.com):tcp/443``) and in DNS answers.

A rule's name is a *pattern*: an exact name (``api.example.com``) or a
wildcard (``*.example.org``: any name *below* example.org, at any depth, not
example.org itself). Names are case-insensitive and stored lower-case,
without the root's trailing dot. Validation follows RFC 1035/1123 host names
as DNS sees them: labels of 1-63 letters, digits, ``-`` (not first or last)
or ``_``, the whole name at most 253 characters; internationalised names
are written in punycode (``xn--...``).

Matching an answer (contract, "DNS-name destinations"): every A/AAAA record
reached from the question's name through the answer's CNAME chain is an
address *of every name on that chain*; a pattern that matches any of them
learns the address, for the smallest TTL along the chain (never less than
the floor the daemon sets).
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Iterable, Mapping

MAX_NAME = 253
MAX_LABEL = 63
WILDCARD = "*."
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?")
MAX_CHAIN = 16   # CNAME links followed at most (loops end there too)


def pattern_problem(text: object) -> str | None:
    """Why ``text`` is not a valid ``dns(...)`` pattern, or None when it is."""
    if not isinstance(text, str):
        return f"a DNS name must be a string, not {type(text).__name__}"
    name = text[:-1] if text.endswith(".") and text != "." else text
    if name == "":
        return "the DNS name is empty"
    if not name.isascii():
        return _idna_hint(name)
    body = name[len(WILDCARD):] if name.startswith(WILDCARD) else name
    if "*" in body:
        return "'*' is only allowed as the whole first label ('*.example.org')"
    if body == "":
        return "a wildcard needs a name after '*.'"
    if len(name) > MAX_NAME:
        return f"the DNS name is {len(name)} characters long (at most {MAX_NAME})"
    if _is_address(body):
        return "it is an IP address, not a DNS name (write it as a CIDR destination)"
    for label in body.lower().split("."):
        problem = _label_problem(label)
        if problem is not None:
            return problem
    return None


def _label_problem(label: str) -> str | None:
    if label == "":
        return "empty label (two dots in a row, or a leading dot)"
    if len(label) > MAX_LABEL:
        return f"label '{label[:20]}...' is {len(label)} characters long (at most {MAX_LABEL})"
    if not _LABEL.fullmatch(label):
        return (f"label '{label}' has a character other than letters, digits, '-' and '_',"
                " or starts or ends with '-'")
    return None


def _idna_hint(name: str) -> str:
    try:
        puny = name.encode("idna").decode("ascii")
    except UnicodeError:
        return "non-ASCII characters: write internationalised names in punycode (xn--...)"
    return f"non-ASCII characters: write internationalised names in punycode ({puny})"


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return False
    return True


def normalize_pattern(text: str) -> str:
    """The canonical form of a valid pattern: lower-case, no trailing dot.

    Raises ValueError (the problem as its message) for an invalid one.
    """
    problem = pattern_problem(text)
    if problem is not None:
        raise ValueError(problem)
    name = text[:-1] if text.endswith(".") else text
    return name.lower()


def normalize_name(name: str) -> str:
    """An answer's owner name as patterns see it: lower-case, no trailing dot."""
    return name.rstrip(".").lower()


def matches(pattern: str, name: str) -> bool:
    """Does canonical ``pattern`` match DNS ``name`` (any case, trailing dot or not)?"""
    name = normalize_name(name)
    if pattern.startswith(WILDCARD):
        return name.endswith(pattern[1:]) and len(name) > len(pattern) - 1
    return name == pattern


@dataclass(frozen=True, order=True)
class Address:
    """One address an answer gave: the names leading to it, its family and TTL.

    ``names``: the chain from the question's name to the record's owner,
    canonical; ``ttl``: seconds, the smallest TTL along the chain.
    """

    address: str
    family: int
    ttl: int
    names: tuple = ()

    @property
    def name(self) -> str:
        """The question's name (first on the chain)."""
        return self.names[0] if self.names else ""


@dataclass(frozen=True)
class Learned:
    """An address in force for one (segment, rule): the DNS answer behind it.

    ``name``: the name the container asked for (the question); ``learned``
    and ``expires``: Unix times (seconds) of the answer and of the end of
    its TTL (floor included).
    """

    address: str
    name: str
    learned: float
    expires: float


def follow(qname: str, cnames: Mapping[str, tuple], addresses: Mapping[str, Iterable[tuple]]
           ) -> list:
    """The :class:`Address` values an answer gives for question ``qname``.

    ``cnames``: owner -> (target, ttl) of each CNAME record; ``addresses``:
    owner -> [(address, ttl), ...] of each A/AAAA record; owners and targets
    canonical (:func:`normalize_name`). Records not reached from ``qname``
    are ignored; a chain longer than MAX_CHAIN links (or a loop) stops there.
    """
    chain, ttl, name = [normalize_name(qname)], None, normalize_name(qname)
    seen = {name}
    while name in cnames and len(chain) <= MAX_CHAIN:
        target, link_ttl = cnames[name]
        ttl = link_ttl if ttl is None else min(ttl, link_ttl)
        if target in seen:
            break
        seen.add(target)
        chain.append(target)
        name = target
    out = []
    for address, rec_ttl in addresses.get(name, ()):
        ip = ipaddress.ip_address(address)
        out.append(Address(str(ip), ip.version, rec_ttl if ttl is None else min(ttl, rec_ttl),
                           tuple(chain)))
    return out


def learns(pattern: str, found: Address) -> bool:
    """Does a rule with ``pattern`` learn ``found`` (some name on its chain matches)?"""
    return any(matches(pattern, name) for name in found.names)


__all__ = ["Learned", "pattern_problem", "normalize_pattern", "normalize_name", "matches", "Address",
           "follow", "learns", "MAX_NAME", "MAX_LABEL", "WILDCARD"]
