"""Random but reproducible cases for the differential kernel test
(``test_differential_kernel.py``): pure data, no kernel.

A case is drawn from one integer seed with ``random.Random(seed)`` alone, so
that the seed replays it exactly (``SECNET_DIFFUZZ_SEEDS=SEED``):

* 2-5 segments with members (1-2 containers each, at most 6), sometimes a
  pending container (no segment yet) and a quarantined one;
* 0-6 rules in the contract's grammar ("Allow rules"): segment to segment
  (named, ``*``, segments nobody is in, ``default``), segment to a CIDR
  (egress) and CIDR to segment (ingress), IPv4 and IPv6, with no service,
  ``any``, ``icmp``, tcp/udp with no port, a port or a range whose ends sit
  on and next to the probed ports; random separators;
* ``secnet.intra`` and ``secnet.egress``, sometimes ``--internal`` (then no
  CIDR rules: create refuses them) and audit mode;
* one live edit: a new policy (some rules kept, some added, intra/egress
  flipped), a member moved to another known segment, a member quarantined, a
  pending or quarantined member joining a segment, or a mode switch.

Probe cells are ``(src, dst, proto, port, family)``; an end is ``c<i>`` (the
i-th container), ``host`` (the host's namespace as a source: it sends from
the bridge's gateway address), ``gw`` (the gateway address as a destination:
the host), ``uplink`` (the host's address towards the outside host) or
``outside`` (another host, routed through this one).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Optional

from segmentation.errors import PolicyError
from segmentation.options import parse_network_options

#: segment names a case draws from: "default" is the network's default segment
SEGMENTS = ("web", "api", "db", "default", "mon", "x.y-1")
#: what is probed; the lab's responder listens on every one but CLOSED
SERVICES = (("tcp", 8080), ("tcp", 5432), ("tcp", 9999), ("tcp", 7000), ("udp", 53), ("udp", 5353),
            ("icmp", None))
CLOSED = frozenset({("tcp", 7000), ("udp", 5353)})
#: ends of rule port ranges: on, below and above the probed ports
PORT_MARKS = (1, 52, 53, 54, 5000, 5353, 5431, 5432, 5433, 6999, 7000, 8079, 8080, 8081, 9999,
              10000, 65535)
#: CIDRs of rules: the outside host, the host (gateway, uplink), the network's own
#: subnet (whose members are never "outside"), everything, and nothing the lab has
CIDRS = {4: ("10.237.0.0/24", "10.237.0.2", "10.237.0.1/32", "10.236.0.1", "10.236.0.0/24", "0.0.0.0/0",
             "10.238.0.0/16", "10.236.0.0/16"),
         6: ("[fd00:237::/64]", "[fd00:237::2]", "[fd00:237::1/128]", "[fd00:236::1]", "[fd00:236::/64]",
             "[::/0]", "[fd00:238::/64]")}
QUARANTINE_REASON = "label value 'bad name!' is not a valid segment name"
#: (dst, proto, port) a probe cannot judge: the host's responder answers UDP from the
#: address its route to the container picks (the gateway), not from the uplink
#: address asked, so the prober's connected socket ignores the echo (seen without any
#: backend). A closed UDP port there is fine: the ICMP error quotes the datagram.
UNPROBEABLE = frozenset({("uplink", "udp", 53)})
SOURCES_OUT = ("host", "outside")
DESTS_OUT = ("gw", "uplink", "outside")


@dataclass(frozen=True)
class Place:
    """Where a container is: a segment, pending (None) or quarantined (a reason)."""

    segment: Optional[str] = None
    quarantine: Optional[str] = None

    def text(self) -> str:
        return "quarantined" if self.quarantine else self.segment or "pending"


@dataclass(frozen=True)
class Policy:
    rules: str
    intra: str = "allow"
    egress: str = "allow"
    mode: str = "enforce"

    def text(self) -> str:
        return f"rules={self.rules!r} intra={self.intra} egress={self.egress} mode={self.mode}"


@dataclass(frozen=True)
class Edit:
    """The live edit: ``policy`` (a new Policy), ``move``/``quarantine``/``join``
    (container ``index`` to ``place``), ``mode`` (``policy`` has the new mode)."""

    kind: str
    index: Optional[int] = None
    place: Optional[Place] = None
    policy: Optional[Policy] = None

    def text(self) -> str:
        if self.kind in ("policy", "mode"):
            return f"{self.kind}: {self.policy.text()}"
        return f"{self.kind}: c{self.index} -> {self.place.text()}"


@dataclass(frozen=True)
class Case:
    seed: int
    places: tuple
    policy: Policy
    internal: bool
    edit: Edit

    def after(self) -> tuple:
        """(places, policy) once the edit is in force."""
        if self.edit.kind in ("policy", "mode"):
            return self.places, self.edit.policy
        places = list(self.places)
        places[self.edit.index] = self.edit.place
        return tuple(places), self.policy

    def describe(self) -> str:
        members = ", ".join(f"c{i}={p.text()}" for i, p in enumerate(self.places))
        return (f"seed {self.seed} (replay: SECNET_DIFFUZZ_SEEDS={self.seed})\n"
                f"  policy: {self.policy.text()} internal={self.internal}\n"
                f"  members: {members}\n  edit: {self.edit.text()}")


# --- drawing a case -----------------------------------------------------------------------

def make_case(seed: int) -> Case:
    """The case of ``seed`` (deterministic: the same seed, the same case)."""
    rng = random.Random(seed)
    places = _places(rng)
    internal = rng.random() < 0.08
    live = sorted({p.segment for p in places if p.segment})
    policy = Policy(_rules(rng, live, internal), rng.choice(("allow", "deny")), rng.choice(("allow", "deny")),
                    "audit" if rng.random() < 0.1 else "enforce")
    return Case(seed, places, policy, internal, _edit(rng, places, policy, internal, live))


def _places(rng: random.Random) -> tuple:
    segments = rng.sample(SEGMENTS, rng.randint(2, 5))
    places = [Place(s) for s in segments for _ in range(rng.choice((1, 1, 2)))][:6]
    rng.shuffle(places)
    if rng.random() < 0.15:
        places.append(Place(None))
    if rng.random() < 0.15:
        places.append(Place(None, QUARANTINE_REASON))
    return tuple(places)


def _rules(rng: random.Random, live: list, internal: bool, keep: tuple = ()) -> str:
    """0-6 valid rules (and ``keep``), joined by random separators."""
    for _ in range(50):
        rules = list(keep) + [_rule(rng, live, internal) for _ in range(rng.choice((0, 1, 2, 2, 3, 3, 4, 5, 6)))]
        sep = rng.choice((" ", ",", ";", ", ", " ; "))
        text = sep.join(rules)
        try:
            parse_network_options({"secnet.allow": text}, internal=internal)
        except PolicyError:
            continue
        return text
    raise AssertionError(f"no valid rule set drawn for {live}")


def _rule(rng: random.Random, live: list, internal: bool) -> str:
    kind = "ew" if internal else rng.choices(("ew", "egress", "ingress"), (70, 15, 15))[0]
    cidr = rng.choice(CIDRS[rng.choice((4, 6))])
    src = cidr if kind == "ingress" else _segment_end(rng, live)
    dst = cidr if kind == "egress" else _segment_end(rng, live)
    return f"{src}->{dst}{_service(rng)}"


def _segment_end(rng: random.Random, live: list) -> str:
    r = rng.random()
    if r < 0.7:
        return rng.choice(live)
    if r < 0.85:
        return "*"
    return rng.choice([s for s in SEGMENTS if s not in live] or live)


def _service(rng: random.Random) -> str:
    proto = rng.choices(("", "any", "icmp", "tcp", "udp"), (10, 5, 15, 35, 35))[0]
    if proto in ("", "any", "icmp"):
        return f":{proto}" if proto else ""
    r = rng.random()
    if r < 0.15:
        return f":{proto}"
    if r < 0.6:
        return f":{proto}/{rng.choice(PORT_MARKS)}"
    lo, hi = sorted(rng.sample(PORT_MARKS, 2))
    return f":{proto}/{lo}-{hi}"


def _edit(rng: random.Random, places: tuple, policy: Policy, internal: bool, live: list) -> Edit:
    waiting = [i for i, p in enumerate(places) if not p.segment]
    active = [i for i, p in enumerate(places) if p.segment]
    kind = rng.choice(("policy",) * 4 + ("move",) * 3 + ("quarantine",) * 2 + ("mode",)
                      + ("join",) * (3 if waiting else 0))
    if kind == "policy":
        kept = tuple(r for r in _split(policy.rules) if rng.random() < 0.6)
        new = replace(policy, rules=_rules(rng, live, internal, kept),
                      intra=_flip(rng, policy.intra, ("allow", "deny")),
                      egress=_flip(rng, policy.egress, ("allow", "deny")))
        return Edit("policy", policy=new)
    if kind == "mode":
        return Edit("mode", policy=replace(policy, mode="audit" if policy.mode == "enforce" else "enforce"))
    if kind == "quarantine":
        return Edit("quarantine", rng.choice(active), Place(None, QUARANTINE_REASON))
    known = sorted(set(live) | _named(policy.rules) | {"default"})
    index = rng.choice(waiting if kind == "join" else active)
    target = rng.choice([s for s in known if s != places[index].segment])
    return Edit(kind, index, Place(target))


def _flip(rng: random.Random, value: str, choices: tuple) -> str:
    return rng.choice([c for c in choices if c != value]) if rng.random() < 0.3 else value


def _split(rules: str) -> list:
    return [r for r in rules.replace(",", " ").replace(";", " ").split() if r]


def _named(rules: str) -> set:
    options = parse_network_options({"secnet.allow": rules})
    return set(options.named_segments())


# --- probe cells ------------------------------------------------------------------------------

def pairs(places: tuple) -> list:
    """Every ordered (src, dst) the lab can probe: container to container (not to
    itself), container to the host and the outside host, those to a container."""
    boxes = [f"c{i}" for i in range(len(places))]
    return ([(s, d) for s in boxes for d in boxes if s != d] + [(s, d) for s in boxes for d in DESTS_OUT]
            + [(s, d) for s in SOURCES_OUT for d in boxes])


def cells(case: Case, phase: int, budget: int) -> list:
    """About ``budget`` cells (at least 2 per pair), drawn for ``phase`` (0: before the
    edit, 1: after) from the seed alone."""
    rng = random.Random(case.seed * 1009 + phase)
    every = pairs(case.places)
    each = max(2, budget // len(every))
    services = [(proto, port, fam) for proto, port in SERVICES for fam in (4, 6)]
    return [(s, d, *svc) for s, d in every
            for svc in rng.sample([v for v in services if (d, *v[:2]) not in UNPROBEABLE], each)]


def outcome(passes: bool, proto: str, port) -> str:
    """What a probe sees: a passing flow to a listener echoes ('ok'), to a closed
    port it is refused (TCP RST; ICMP port unreachable for UDP); a dropped one times out."""
    if not passes:
        return "timeout"
    return "refused" if (proto, port) in CLOSED else "ok"


def show(cell) -> str:
    src, dst, proto, port, fam = cell
    return f"{src}->{dst} {proto}/{port or '-'} v{fam}"
