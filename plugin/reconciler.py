"""The one writer of kernel policy: desired state from records, applied to nftables.

The driver tells the reconciler what changed (a network, an endpoint); the
reconciler works out the desired tables from the saved records and the
network's options, and applies either a set-element delta (a join, a leave,
a segment that became known) or, when the shape of the policy changes (a
new segment, a policy edit), a whole-network rebuild. Both are one nft
transaction each.

A periodic pass (and the one at start) compares the kernel's tables with the
desired ones and rebuilds what drifted, logging what it repaired. It wakes
on a timer of tens of seconds, not a tight poll.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Optional

from segmentation.backends import nftables as nft
from segmentation.backends.nft_verdicts import LOG_SETS

from . import conntrack
from segmentation.compiler import CompiledPolicy, compile_policy
from segmentation.model import Member
from segmentation.options import NetworkOptions

log = logging.getLogger(__name__)


def _plain(cidr: Optional[str]) -> Optional[str]:
    return cidr.split("/")[0] if cidr else None


def port_of(ep) -> nft.Port:
    return nft.Port(endpoint_id=ep.id, name=ep.veth_host, mac=ep.mac, ipv4=_plain(ep.ipv4),
                    ipv6=_plain(ep.ipv6), segment=ep.segment, quarantine=ep.quarantine,
                    published=tuple(tuple(p) for p in ep.ports))


def subnets_of(net) -> list:
    return [pool for pool, _gw in net.ipv4 + net.ipv6]


def member_of(port: nft.Port) -> Member:
    return Member(endpoint_id=port.endpoint_id, segment=port.segment, ipv4=port.ipv4,
                  ipv6=port.ipv6, quarantine=port.quarantine)


@dataclass
class Realized:
    """What is in the kernel for one network, as last applied."""

    compiled: CompiledPolicy
    ports: dict = field(default_factory=dict)  # endpoint id -> Port


class Reconciler:
    def __init__(self, state, runner=None, interval: float = 60.0, lock=None, flows=None):
        self.state = state
        self.runner = runner or nft.NftRunner()
        self.flows = flows or conntrack.Flows()  # the one writer of conntrack
        self.interval = interval
        self.repairs = 0
        self._realized: dict = {}
        # The driver's lock when given: a periodic pass must never judge the
        # kernel in the middle of a verb (kernel written, state not yet).
        self._lock = lock or threading.RLock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # --- what the driver calls -------------------------------------------
    def network_added(self, net, endpoints=()) -> None:
        with self._lock:
            ports = {ep.id: port_of(ep) for ep in (endpoints or self.state.endpoints(net.id))}
            self._rebuild(net, ports)

    def network_removed(self, net) -> None:
        with self._lock:
            self.runner.apply(nft.render_delete_network(net.id))
            real = self._realized.pop(net.id, None)
            if real is not None and real.ports:  # endpoints Docker never deleted (a gone network)
                self.flows.forget([a for p in real.ports.values() for a in (p.ipv4, p.ipv6)])

    def endpoint_changed(self, net, ep) -> None:
        with self._lock:
            new = port_of(ep)
            old = self._apply_port(net, new)
            self._flows_after(net, old, new)

    def _apply_port(self, net, new: nft.Port) -> Optional[nft.Port]:
        """Put ``new`` into the kernel; returns the port as it was before."""
        real = self._realized.get(net.id)
        if real is None:
            ports = {e.id: port_of(e) for e in self.state.endpoints(net.id)}
            ports[new.endpoint_id] = new
            self._rebuild(net, ports)
            return None
        old = real.ports.get(new.endpoint_id)
        if new.active and new.segment not in real.compiled.segments:
            ports = dict(real.ports)
            ports[new.endpoint_id] = new
            self._rebuild(net, ports)  # a new segment changes the rules
            return old
        self.runner.apply(nft.render_port_change(net.id, old, new))
        real.ports[new.endpoint_id] = new
        return old

    def _flows_after(self, net, old: Optional[nft.Port], new: nft.Port) -> None:
        """Conntrack after a port change: flows to ports it just published must
        reach it; flows it had (segment, quarantine, published ports) are judged again."""
        fresh = set(new.published) if new.active else set()
        fresh -= set(old.published) if old is not None and old.active else set()
        if fresh:
            self.flows.claim(sorted(fresh), new.ipv4, new.ipv6)
        if old is not None and old.active and (
                (old.segment, old.quarantine) != (new.segment, new.quarantine)
                or set(old.published) - set(new.published)):
            self.cut_flows(net, only={a for a in (old.ipv4, old.ipv6) if a})

    def endpoint_removed(self, net, ep) -> None:
        with self._lock:
            real = self._realized.get(net.id)
            old = real.ports.pop(ep.id, None) if real else None
            self.runner.apply(nft.render_port_change(net.id, old or port_of(ep), None))
            # Before DeleteEndpoint returns: Docker may give the address to the
            # next container only then, and no entry of this one may be left.
            port = port_of(ep)
            self.flows.forget([port.ipv4, port.ipv6])

    def cut_flows(self, net, only: Optional[set] = None) -> int:
        """End the flows of ``net`` that its realized policy and members do not
        allow (``only``: just those naming these addresses). Every change of
        what is allowed calls this once it is in the kernel."""
        with self._lock:
            real = self._realized.get(net.id)
            if real is None:
                return 0
            compiled, ports = real.compiled, list(real.ports.values())
        return self.flows.enforce_policy(compiled, ports, only)

    def policy_changed(self, net) -> None:
        """Options (rules) of ``net`` changed: rebuild its tables atomically, then
        end the flows the new rules do not allow (published and NAT'd ones too)."""
        with self._lock:
            real = self._realized.get(net.id)
            ports = dict(real.ports) if real else {e.id: port_of(e) for e in self.state.endpoints(net.id)}
            self._rebuild(net, ports)
            self.cut_flows(net)

    # --- reads -----------------------------------------------------------
    def compiled(self, net) -> CompiledPolicy:
        with self._lock:
            real = self._realized.get(net.id)
            if real is not None:
                return real.compiled
            ports = [port_of(e) for e in self.state.endpoints(net.id)]
            return compile_policy(NetworkOptions.from_dict(net.options), [member_of(p) for p in ports])

    # --- internals -------------------------------------------------------
    def _rebuild(self, net, ports: dict) -> None:
        options = NetworkOptions.from_dict(net.options)
        compiled = compile_policy(options, [member_of(p) for p in ports.values()])
        self.runner.apply(nft.render_network(net.id, net.bridge, compiled, ports.values(),
                                             subnets_of(net)))
        self._realized[net.id] = Realized(compiled, dict(ports))

    def drift(self, net) -> list:
        """What differs between the kernel and the desired tables of ``net``:
        set and map elements, and the number of rules in every chain."""
        want_ports = {e.id: port_of(e) for e in self.state.endpoints(net.id)}
        options = NetworkOptions.from_dict(net.options)
        compiled = compile_policy(options, [member_of(p) for p in want_ports.values()])
        want = _desired_elements(net.id, compiled, want_ports.values())
        script = nft.render_network(net.id, net.bridge, compiled, want_ports.values(), subnets_of(net))
        try:
            have, counts = _kernel_state(self.runner, net.id)
        except nft.NftError as exc:
            return [f"tables missing ({exc})"]
        problems = [f"missing element {k}" for k in sorted(want - have)[:5]]
        problems += [f"unexpected element {k}" for k in sorted(have - want)[:5]]
        want_counts = rule_counts(script)
        problems += [f"chain {f} {c} has {counts.get((f, c), 0)} rules, not {n}"
                     for (f, c), n in sorted(want_counts.items()) if counts.get((f, c), 0) != n][:5]
        return problems

    def reconcile(self, full: bool = True) -> int:
        """Repair every network whose kernel state drifted; returns how many.

        ``full`` also removes secnet tables no network owns (at start; the
        periodic pass skips it: listing every table of the host is costly).
        """
        repaired = 0
        with self._lock:
            # Networks realized by this process count as owned even before their
            # state row is written (create_network persists after the kernel work).
            owned = {nft.table_name(nid) for nid in self._realized}
            for net in self.state.networks():
                owned.add(nft.table_name(net.id))
                problems = self.drift(net)
                if problems or net.id not in self._realized:
                    if problems:
                        log.warning("network %s drifted (%s); rebuilding", net.id[:12], "; ".join(problems))
                        repaired += 1
                    ports = {e.id: port_of(e) for e in self.state.endpoints(net.id)}
                    self._rebuild(net, ports)
                    if problems:  # what the drifted tables let through must not go on
                        self.cut_flows(net)
            for family, table in self.runner.tables() if full else ():
                if table not in owned:
                    self.runner.apply(f"delete table {family} {table}\n")
                    log.warning("removed orphan table %s %s", family, table)
                    repaired += 1
        self.repairs += repaired
        return repaired

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="secnet-reconciler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.reconcile(full=False)
            except Exception:
                log.exception("reconcile pass failed")


def _desired_elements(network_id: str, compiled: CompiledPolicy, ports) -> set:
    out = set()
    for port in ports:
        if port.active and port.segment not in compiled.segments:
            continue
        for fam, target, elem in nft.port_elements(network_id, port):
            out.add((fam, target.split()[1], _norm(elem)))
    return out


def _norm(elem: str) -> str:
    return elem.replace('"', "").replace(" ", "")


def _kernel_state(runner, network_id: str):
    """(elements, rules per chain) of a network's two tables, as the kernel has them."""
    table = nft.table_name(network_id)
    elements, counts = set(), {}
    for family in ("inet", "bridge"):
        for obj in runner.list_json("table", family, table).get("nftables", []):
            if "rule" in obj:
                key = (family, obj["rule"]["chain"])
                counts[key] = counts.get(key, 0) + 1
            s = obj.get("set") or obj.get("map")
            if not s or s["name"] in LOG_SETS:  # the drop log's flow sets: filled by the kernel
                continue
            for elem in s.get("elem", []):
                elements.add((family, s["name"], _norm(_elem_text(elem, s))))
    return elements, counts


def rule_counts(script: str) -> dict:
    """Rules per (family, chain) in a script render_network() wrote (one rule a line)."""
    counts, family, chain = {}, None, None
    for line in script.splitlines():
        words = line.split()
        if not words:
            continue
        if words[0] == "table" and len(words) >= 3 and words[-1] == "{":
            family = words[1]
        elif words[0] == "chain" and words[-1] == "{":
            chain = words[1]
            counts.setdefault((family, chain), 0)
        elif words[0] == "}":
            chain = None
        elif chain is not None and words[0] != "type":
            counts[(family, chain)] += 1
    return counts


def _elem_text(elem, s) -> str:
    """nft's JSON element back to the text form port_elements() renders."""
    if isinstance(elem, dict) and "elem" in elem:
        elem = elem["elem"]["val"]
    if isinstance(elem, list):  # map: [key, value]
        key, value = elem
        if isinstance(value, dict) and len(value) == 1 and next(iter(value)) in ("jump", "goto"):
            (kind, target), = value.items()
            return f"{_key_text(key, s)} : {kind} {target['target']}"
        return f"{_key_text(key, s)} : {_key_text(value, s)}"
    return _key_text(elem, s)


def _key_text(key, s) -> str:
    if isinstance(key, dict) and "concat" in key:
        parts = key["concat"]
        if s["name"] == "na6":
            return f"{parts[0]} . {hex(_as_int(parts[1]))}"
        return " . ".join(_key_text(p, s) for p in parts)
    if isinstance(key, dict) and "prefix" in key:
        return f"{key['prefix']['addr']}/{key['prefix']['len']}"
    return str(key)


def _as_int(value) -> int:
    """nft prints raw payload keys as numbers or as hex strings."""
    if isinstance(value, str):
        return int(value, 16) if value.lower().startswith("0x") else int(value)
    return int(value)
