"""What the nftables backend reads back from the kernel: drift against the desired
state, counters, the reference shape of fresh tables. A mixin of
:class:`plugin.enforce.nftables.backend.NftBackend` (it uses the backend's ``runner``,
``writer``, ``_lock``, ``_nets``, ``_references``, ``groups`` and ``hooks``); reads
take the backend's lock, as its writes do."""
from __future__ import annotations

import logging
from typing import Iterable, Optional

from plugin.enforce.backend import Counters, NetworkSpec
from segmentation.policymap import PolicyMap

from . import counting, fqdn, kernel, ruleset
from .drops import INACTIVE_PAIR_SETS, PAIR_SETS, PORT_PAIR_SETS
from .elements import COUNTED_IN, PolicyElements, ports_elements, setting_elements
from .netlink import identifier
from .nftdump import decode_pair, decode_port_address, decode_port_key
from .runner import NftError, in_scratch_namespace

log = logging.getLogger(__name__)


class ReadbackMethods:
    """Drift, counters and reference shapes of the networks an NftBackend realized."""

    def _hits(self, table: str, name: str) -> list:
        """The elements of hit set ``name`` as the kernel holds them."""
        if self.writer is None:
            return list(kernel.read_elements(self.runner, table, (name,)).get(name, {}))
        return [decode_port_key(key) for key, _end, _data in self.writer.dump(table, name)]

    def drift(self, net: NetworkSpec, policy: PolicyMap, ports: Iterable) -> list:
        """Elements and rules that differ from the desired state; one line each (at most 10)."""
        with self._lock:
            ports = list(ports)
            want = self._desired(net, policy, ports)
            table = ruleset.table_name(net.id)
            try:
                rules = self._shapes(table)
                problems = self._element_problems(table, want)
            except (NftError, OSError) as exc:
                return [f"tables missing ({str(exc).splitlines()[0][:120]})"]
            reference = self._reference(net)
            if reference is None:
                problems.append("rules cannot be checked (no reference)")
            else:
                problems += kernel.compare_rules(reference, rules)
            problems += self.groups.strays(net.bridge, [p.name for p in ports])   # (a repair sets them)
            problems += self.hooks.problems(net.bridge)
            return problems[:10]

    def _element_problems(self, table: str, want: dict) -> list:
        if self.writer is None:
            return kernel.element_problems(want, kernel.read_elements(self.runner, table, want))
        problems = []
        for name in sorted(want):
            have = self.writer.dump(table, name)
            parts = identifier(name)
            wanted = {parts(e, v): (e, v) for e, v in want[name].items()}
            problems += [f"set {name}: missing element {ruleset.element_text(name, e, v)}"
                         for key, (e, v) in list(wanted.items()) if key not in have][:3]
            problems += [f"set {name}: unexpected element {key[0].hex()}"
                         for key in have if key not in wanted][:3]
        return problems

    def counters(self, net: NetworkSpec) -> Counters:
        """Per-entry allowed counters, per-pair drop counters, per-reason drop counters."""
        with self._lock:
            real = self._nets.get(net.id)
            attribution = real.policy_elements.attribution() if real else {}
            table = ruleset.table_name(net.id)
            try:
                counts = self._set_counters(table, attribution)
            except (NftError, OSError):
                return Counters()
            by_rule = self._rule_counters(table)
            learned = fqdn.tag_counters(self.runner, table)
        return counting.assemble(counts, by_rule, learned, attribution,
                                 real.ports if real else {}, real.port_sets if real else {})

    def _rule_counters(self, table: str) -> dict:
        if self.writer is None:
            return kernel.rule_counters(self.runner, table)
        out: dict = {}
        for family in ("inet", "bridge"):
            try:
                for comment, (packets, size) in self.writer.rule_counters(family, table).items():
                    total = out.setdefault(comment, [0, 0])
                    total[0] += packets
                    total[1] += size
            except OSError:   # a missing table counts nothing; drift() reports it
                continue
        return out

    def _set_counters(self, table: str, attribution: dict) -> dict:
        """``{set: {element: (packets, bytes)}}`` of the policy sets in ``attribution``,
        and of the pair sets keyed by ``(src, dst)`` identities (the bridge table's by
        ``(src, port name)``; missing in a table of an older FORMAT: empty)."""
        names = tuple(attribution) + PAIR_SETS + PORT_PAIR_SETS + INACTIVE_PAIR_SETS
        if self.writer is None:
            have = kernel.read_elements(self.runner, table, names + tuple(COUNTED_IN.values()))
            for name, hits in COUNTED_IN.items():   # (a table of an older FORMAT: the set's own)
                if hits in have:
                    have[name] = have.pop(hits)
            return {n: {e: c for e, (_v, c) in els.items() if c} for n, els in have.items()}
        out = {}
        for name in names:
            try:
                dumped = self.writer.dump(table, COUNTED_IN.get(name, name))
            except OSError:
                if name in COUNTED_IN:   # no hit set: a table of an older FORMAT, elements count
                    dumped = self.writer.dump(table, name)
                elif name not in PORT_PAIR_SETS + INACTIVE_PAIR_SETS:
                    raise
                else:
                    dumped = {}
            if name in PAIR_SETS + PORT_PAIR_SETS + INACTIVE_PAIR_SETS:
                decode = decode_port_address if name in INACTIVE_PAIR_SETS else decode_pair
                out[name] = {decode(k[0]): c for k, c in dumped.items() if c}
            else:
                parts = identifier(name)
                out[name] = {e: dumped.get(parts(e)) for e in attribution[name]}
        return out

    def _reference(self, net: NetworkSpec) -> Optional[dict]:
        """The shape of freshly written tables of ``net``: written (without elements)
        in a scratch namespace, read back there; else read from the kernel now (not kept:
        ``_adopt`` then writes the tables, which may be an older build's)."""
        cached = self._references.get(net.id)
        if cached is not None and cached[0] == net:
            return cached[1]
        table = ruleset.table_name(net.id)

        def fresh():
            scratch = type(self)(netlink=self.writer is not None)
            scratch.runner.apply(ruleset.skeleton_script(net.id, net))
            try:
                return scratch._shapes(table)
            finally:
                scratch.close()
        try:
            shapes = in_scratch_namespace(fresh)
        except (NftError, OSError, TimeoutError) as exc:
            log.debug("no scratch namespace (%s): reference read from the kernel (not kept)", exc)
            try:
                return self._shapes(table)
            except (NftError, OSError):
                return None
        self._references[net.id] = (net, shapes)
        return shapes

    def _shapes(self, table: str) -> dict:
        """Rules (per chain), chains and set declarations of both tables, comparable
        (as digests: ``kernel.digested``)."""
        if self.writer is None:
            return kernel.digested(kernel.read_rules(self.runner, table))
        out = {}
        for family in ("inet", "bridge"):
            for (kind, name), shapes in self.writer.shapes(family, table).items():
                out[(family, f"{kind} {name}")] = shapes
        return kernel.digested(out)

    def _desired(self, net: NetworkSpec, policy: PolicyMap, ports: list) -> dict:
        real = self._nets.get(net.id)
        if real is not None and real.policy == policy and real.spec.mode == net.mode and \
                real.ports == {p.endpoint_id: p for p in ports}:
            elements, port_sets, settings = real.policy_elements, real.port_sets, real.settings
        else:
            elements = PolicyElements.of(policy.entries | policy.cidrs)
            port_sets, settings = ports_elements(ports), setting_elements(policy, net.mode, elements)
        want = {**elements.flat(), **settings}
        for name in kernel.desired_sets():
            want.setdefault(name, {})
        for name, els in port_sets.items():
            want[name] = els
        return want
