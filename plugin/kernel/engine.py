"""The Docker engine secnet runs under, and how secnet passes its forward filter.

Docker's firewall decides whether bridged traffic of *another* driver's
bridge is forwarded at all, and that changed between releases (sources in
docs/engines.md):

* 20.10 to 28.x, iptables backend: Docker sets the iptables FORWARD policy
  to DROP and jumps from FORWARD to ``DOCKER-USER`` first (28.x moved its
  own rules into DOCKER-FORWARD, but the jump to DOCKER-USER still comes
  first). secnet accepts its bridges' marked traffic in DOCKER-USER.
* 29.x with ``--firewall-backend=nftables`` (and 28.x with the prototype's
  ``DOCKER_FIREWALL_BACKEND=nftables``): Docker writes the tables ``ip/ip6
  docker-bridges``, whose forward chain only touches Docker's own bridges,
  never sets a FORWARD DROP, and has no DOCKER-USER. Its docs say to use a
  table of one's own instead: secnet keeps ``inet secnet-guard``.

This module is pure: :func:`facts_from` reads the ``/version`` and ``/info``
answers into :class:`EngineFacts`, :func:`decide` turns facts into a
:class:`Strategy`. :func:`detect` is the one function that talks to the
engine; it runs in the Docker watcher thread, never inside a driver request.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

IPTABLES = "iptables"          # DOCKER-USER accepts what secnet's chains marked
NFTABLES = "nftables"          # a table of secnet's own at a later forward priority
UNSUPPORTED = "unsupported"    # no way to pass the engine's forward filter: refuse
UNKNOWN = "unknown"            # not detected yet: act as with iptables (fail closed)

MIN_VERSION = (20, 10)         # the oldest engine secnet is tested with
KNOWN_BACKENDS = ("iptables", "nftables")


@dataclass(frozen=True)
class EngineFacts:
    """What the engine says about itself.

    ``version`` as reported (``"28.0.1"``, ``"29.0.0-rc.1"``); ``major`` and
    ``minor`` parsed from it (0 when it does not parse); ``api_version`` like
    ``"1.48"``; ``firewall_backend`` is ``/info``'s ``FirewallBackend.Driver``
    (``"iptables"``, ``"iptables+firewalld"``, ``"nftables"``, ...; empty when
    the engine does not report it: before 28.1 / API 1.49); ``firewall_info``
    its label/value pairs (``ReloadedAt``, ...).
    """

    version: str = ""
    api_version: str = ""
    major: int = 0
    minor: int = 0
    firewall_backend: str = ""
    firewall_info: tuple = field(default_factory=tuple)

    @property
    def firewall(self) -> str:
        """The backend without ``+firewalld``: iptables, nftables, or empty."""
        return self.firewall_backend.split("+", 1)[0]

    @property
    def firewalld(self) -> bool:
        return self.firewall_backend.endswith("+firewalld")


@dataclass(frozen=True)
class Strategy:
    """How secnet lets its bridges' traffic past the engine's forward filter.

    ``mode`` is one of IPTABLES, NFTABLES, UNSUPPORTED, UNKNOWN; ``reason``
    says why (for UNSUPPORTED a one-line message naming the engine feature,
    shown by ``docker network create`` and ``secnet status``).
    """

    mode: str
    reason: str = ""

    @property
    def usable(self) -> bool:
        return self.mode != UNSUPPORTED


def parse_version(text: str) -> tuple:
    """``"28.0.1"`` -> (28, 0); Debian's ``"20.10.24+dfsg1"`` -> (20, 10); else (0, 0)."""
    m = re.match(r"^\s*v?(\d+)\.(\d+)", text or "")
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def facts_from(version: Optional[dict], info: Optional[dict]) -> EngineFacts:
    """EngineFacts from the engine's ``GET /version`` and ``GET /info`` bodies.

    Missing or odd fields give empty values, never an exception.
    """
    version, info = version or {}, info or {}
    text = str(version.get("Version") or info.get("ServerVersion") or "")
    major, minor = parse_version(text)
    fw = info.get("FirewallBackend") or {}
    if not isinstance(fw, dict):
        fw = {}
    pairs = tuple(tuple(p) for p in (fw.get("Info") or ()) if isinstance(p, (list, tuple)) and len(p) == 2)
    return EngineFacts(version=text, api_version=str(version.get("ApiVersion") or ""),
                       major=major, minor=minor, firewall_backend=str(fw.get("Driver") or ""),
                       firewall_info=pairs)


def decide(facts: Optional[EngineFacts]) -> Strategy:
    """The forward-filter strategy for an engine (None: not detected yet)."""
    if facts is None or not facts.version:
        return Strategy(UNKNOWN, "engine not detected yet: DOCKER-USER rules (fail closed)")
    if (facts.major, facts.minor) < MIN_VERSION:
        return Strategy(UNSUPPORTED, f"Docker {facts.version} is older than 20.10, the oldest "
                                     "engine secnet supports")
    backend = facts.firewall
    if backend == "nftables":
        return Strategy(NFTABLES, f"Docker {facts.version} firewall backend nftables has no "
                                  "DOCKER-USER chain: secnet's own table inet secnet-guard")
    if backend in ("", "iptables"):
        jumped = "FORWARD -> DOCKER-USER (before DOCKER-FORWARD)" if facts.major >= 28 else \
            "FORWARD -> DOCKER-USER"
        return Strategy(IPTABLES, f"Docker {facts.version} firewall backend iptables: {jumped}")
    return Strategy(UNSUPPORTED, f"Docker {facts.version} firewall backend {backend!r} is "
                                 f"not one secnet knows ({', '.join(KNOWN_BACKENDS)})")


def as_dict(facts: Optional[EngineFacts], strategy: Strategy) -> dict:
    """The engine part of ``secnet status --json``."""
    facts = facts or EngineFacts()
    return {"version": facts.version, "api_version": facts.api_version,
            "firewall_backend": facts.firewall_backend, "firewalld": facts.firewalld,
            "firewall_info": [list(p) for p in facts.firewall_info],
            "forward_filter": strategy.mode, "reason": strategy.reason}


def detect(client) -> EngineFacts:
    """Ask the engine (docker-py ``APIClient`` with ``version="auto"``, so that
    ``/info`` is read at the engine's own API version and carries
    ``FirewallBackend`` from API 1.49 on). Raises what the client raises."""
    return facts_from(client.version(), client.info())
