"""The eBPF datapath: ``secnet.backend=ebpf`` (plugin.enforce.backend.Backend).

Kernel background. Two tc programs sit on the host side of each container's
veth (clsact, direct action; bpf/secnet.c): ``from_container`` judges what
a container sends, ``to_container`` what reaches it from outside the
network. They decide from BPF maps alone, pinned per network under
``<pin root>/<network-id[:12]>`` (pins.py), so they go on enforcing while the
daemon is down and a new daemon adopts them.

How a change becomes atomic. The policy-carrying maps (``policy``, ``cidrs``,
``restricted``) and ``settings`` hold two versions of their content, told
apart by the first byte of the key (or the array index); ``state`` says
which version is in force and counts generations. A change writes the new
content under the version *not* in force, then flips ``state`` in one
element update -- packets see the whole old or the whole new policy, never
a mix -- and then levels the other version, so that both agree at rest and
the next change again writes only its delta. A big levelling (half of the
writes) is left to a thread, which runs once the caller lets go of the lock;
a swap that finds it pending does it first. Every change bumps the
generation: a tracked flow whose entry is older is judged again on its next
packet and cut when the new state denies it.

NAT (published ports, masquerade) stays in nftables: with a ``nat`` object (the daemon
passes plugin.enforce.nftables.natonly.NatTable) this backend also writes the network's
NAT-only table in the same calls, so the reconciler treats both datapaths alike.
"""
from __future__ import annotations

import logging
import socket
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

from plugin.enforce.backend import BackendError, BackendUnavailable, Counters, DropEvent, NetworkSpec, Port
from segmentation.policymap import PolicyDelta, PolicyMap

from . import build, counters, fqdn, hooks, host, libbpf, maps, pins
from .groups import delta_changes as _delta_changes, group_index, regroup as _regroup
from .groups import touched_groups as _touched
from .events import DropReader, hairpin_target
from .host import host_problem

log = logging.getLogger(__name__)
SIZES: dict = {}   # map name -> max entries (defaults: lib/maps.h)
LEVEL_LATER = 512   # elements written and deleted: a levelling this big is left to a thread


@dataclass
class _Net:
    handle: pins.Handle
    spec: NetworkSpec
    policy: Optional[PolicyMap] = None
    index: dict = field(default_factory=dict)    # group_index(policy.entries)
    ports: dict = field(default_factory=dict)   # endpoint id -> (Port, ifindex)
    level: Optional[Callable] = None            # the pending write that levels the version not in force


_SPLIT = {"policy": maps.policy_unversioned, "cidrs": maps.cidr_unversioned,
          "restricted": maps.restricted_unversioned}
_KEY_SIZE = {"policy": maps.POLICY_KEY.size, "cidrs": maps.CIDR_KEY.size,
             "restricted": maps.RESTRICTED_KEY.size, "endpoints": 4, "members": maps.ADDR_KEY.size}
_VALUE_SIZE = {"policy": maps.POLICY_VAL.size, "cidrs": maps.CIDR_VAL_SIZE, "restricted": 1,
               "endpoints": maps.ENDPOINT.size, "members": maps.MEMBER.size}


class EbpfBackend(fqdn.FqdnMethods):
    """tc programs and pinned BPF maps per network (see the module docstring)."""

    name = "ebpf"
    attaches_to_links = True    # a port's veth must exist before apply_ports (see Reconciler.link_first)
    bridge_options = ()   # no br_netfilter switches: they would only send its traffic through iptables

    def __init__(self, pin_root: str = pins.DEFAULT_ROOT, obj_path: Optional[str] = None,
                 sizes: Optional[dict] = None, nat=None, mount_bpffs: bool = True):
        self.root, self.mount_bpffs = pin_root, mount_bpffs   # False: bpffs must be mounted (managed plugin)
        self.nat = nat   # the network's NAT (published ports, masquerade): apply(spec, ports), remove(id)
        self.obj_path, self.sizes = obj_path, dict(SIZES, **(sizes or {}))
        self._nets, self._lock = {}, threading.RLock()
        self.foreign_seen: set = set()   # ifindexes where drift saw foreign tc filters (hooks.py)
        self._reader: Optional[DropReader] = None
        self._host_ok = False
        self.later: Callable = lambda fn: threading.Thread(target=fn, name="secnet-ebpf-level", daemon=True).start()
        self.fqdn = fqdn.FqdnMaps(self._fqdn_fd, self._lock)   # DNS-name rules (plugin.dns)

    # --- host ---------------------------------------------------------------
    def check_host(self) -> None:
        """Raise BackendUnavailable naming ``secnet.backend`` unless this host can
        compile (or has) the datapath object, mount bpffs and load the programs."""
        if self._host_ok:
            return
        problem = host_problem()
        if problem:
            raise BackendUnavailable(f"secnet.backend=ebpf is not available on this host: {problem}")
        try:
            obj = self._object()
            pins.ensure_bpffs(self.root, mount=self.mount_bpffs)
            probe = libbpf.BpfObject(obj)
            try:
                probe.load()
            finally:
                probe.close()
        except (build.BuildError, OSError) as exc:
            raise BackendUnavailable(f"secnet.backend=ebpf is not available on this host: {exc}") from None
        self._host_ok = True

    def _object(self) -> str:
        return self.obj_path or str(build.build())

    # --- handles --------------------------------------------------------------
    def _load(self, net: NetworkSpec) -> _Net:
        key = net.id[:12]
        old = self._nets.pop(key, None)
        if old is not None:
            old.handle.close()
        pins.ensure_bpffs(self.root, mount=self.mount_bpffs)
        try:
            handle = pins.load_network(self.root, net.id, self._object(), self.sizes)
        except libbpf.LibbpfError as exc:
            raise BackendError(f"eBPF network {key}: cannot load the datapath: {exc}") from None
        state = self._nets[key] = _Net(handle, net)
        if self._reader is not None:
            self._reader.reopen()            # the buffer may be new (first network)
        return state

    def _net(self, net: NetworkSpec) -> _Net:
        """The network's state, adopting its pins when this process has none."""
        key = net.id[:12]
        state = self._nets.get(key)
        if state is None:
            try:
                handle = pins.open_network(self.root, net.id)
            except libbpf.LibbpfError as exc:
                raise BackendError(f"eBPF network {key} has no pinned datapath: {exc}") from None
            state = self._nets[key] = _Net(handle, net)
        state.spec = net
        return state

    # --- the swap -----------------------------------------------------------------
    def _state(self, h: pins.Handle) -> tuple:
        raw = libbpf.lookup(h.maps["state"], maps.U32.pack(0), maps.STATE.size)
        return maps.STATE.unpack(raw)

    def _dump(self, h: pins.Handle, name: str, version: int) -> dict:
        fd, split = h.maps[name], _SPLIT[name]
        out = {}
        for key in list(libbpf.keys(fd, _KEY_SIZE[name])):
            ver, rest = split(key)
            if ver == version:
                out[rest] = libbpf.lookup(fd, key, _VALUE_SIZE[name])
        return out

    def _write_version(self, h, name: str, version: int, diff: tuple) -> None:
        """Write ``diff`` (content_diff's removed keys, written items) under ``version``:
        the updates in one batch, then the deletions in one (keys and values as arrays)."""
        removed, written = diff
        fd = h.maps[name]
        if written:
            rests, values = zip(*written)
            libbpf.update_batch(fd, len(rests), maps.versioned_keys(name, rests, version), b"".join(values))
        if removed:
            libbpf.delete_batch(fd, len(removed), maps.versioned_keys(name, removed, version))

    def _swap(self, st: _Net, new: PolicyMap, changes: dict) -> None:
        """Make ``new`` the policy in force in one flip. ``changes``: map name ->
        (content in force and mirrored in both versions, or None to read each
        version back from the kernel; the wanted content). A known content's diff
        is computed once and written to both versions: to the one not in force, then
        the flip; the other one's (``st.level``) is left to ``later`` (a thread), or to
        the next swap, which does it first. Raises LibbpfError, EncodeError."""
        h = st.handle
        self._level(st)   # one still pending: the version written now must hold ``before``
        version, generation, _tag = self._state(h)
        nxt = 1 - (version & 1)
        loose = host.tcp_loose()   # the host's conntrack setting now (also on repair: drift)
        settings = maps.settings_value(new, st.spec.mode, st.spec.internal, loose)
        diffs = {name: maps.content_diff(before, after)
                 for name, (before, after) in changes.items() if before is not None}

        def write(target: int, policy: PolicyMap, known: bool = True) -> None:
            """``policy`` into version ``target``: by the diffs when it holds ``before``
            (``known``), else by what a dump of it says (the whole content)."""
            for name, (before, after) in (changes if known else maps.full_changes(policy)).items():
                self._write_version(h, name, target, diffs[name] if before is not None and name in diffs
                                    else maps.content_diff(self._dump(h, name, target), after))
            libbpf.update(h.maps["settings"], maps.U32.pack(target), maps.settings_value(
                policy, st.spec.mode, st.spec.internal, loose) if not known else settings)
        old = st.policy
        try:
            write(nxt, new)
        except (maps.EncodeError, libbpf.LibbpfError):
            if old is not None:   # half written: levelled to the policy in force from a dump first
                st.level = lambda known=False: write(nxt, old, known=False)
            raise
        self._flip(h, nxt, generation + 1, st.spec.id)
        st.policy, st.level = new, (lambda known=True: write(1 - nxt, new, known))
        if len(diffs) < len(changes) or sum(len(r) + len(w) for r, w in diffs.values()) > LEVEL_LATER:
            self.later(lambda: self._level_later(st))
        else:   # small: a thread would cost more (its start, the GIL's hand-over)
            self._level_later(st)   # now; the new policy is in force whatever it meets

    def _level(self, st: _Net) -> None:
        """Do ``st``'s pending levelling; if it fails, the next try reads that version back."""
        level, st.level = st.level, None
        if level is None:
            return
        try:
            level()
        except (maps.EncodeError, libbpf.LibbpfError):
            st.level = lambda known=False: level(known=False)
            raise

    def _level_later(self, st: _Net) -> None:
        """``_level`` under the lock, if ``st`` is still the network's state (a failure is
        logged: the next swap tries again, reading that version back)."""
        with self._lock:
            if self._nets.get(st.spec.id[:12]) is not st:   # removed, reloaded or closed since
                return
            try:
                self._level(st)
            except (maps.EncodeError, libbpf.LibbpfError) as exc:
                log.warning("eBPF network %s: other version not levelled (%s)", st.spec.id[:12], exc)

    def _flip(self, h, version: int, generation: int, network_id: str) -> None:
        value = maps.STATE.pack(version, generation & 0xFFFFFFFF, maps.network_tag(network_id))
        libbpf.update(h.maps["state"], maps.U32.pack(0), value)

    def _bump(self, st: _Net) -> None:
        version, generation, _tag = self._state(st.handle)
        self._flip(st.handle, version, generation + 1, st.spec.id)

    # --- ports -----------------------------------------------------------------------
    def _ifindex(self, port: Port) -> int:
        try:
            return socket.if_nametoindex(port.name)
        except OSError:
            raise BackendError(f"eBPF: no link {port.name!r} for endpoint {port.endpoint_id[:12]}") from None

    def _attach(self, st: _Net, ifindex: int) -> None:
        try:
            libbpf.tc_attach(ifindex, libbpf.BPF_TC_INGRESS, st.handle.progs["from_container"])
            libbpf.tc_attach(ifindex, libbpf.BPF_TC_EGRESS, st.handle.progs["to_container"])
        except libbpf.LibbpfError as exc:
            raise BackendError(f"eBPF: cannot attach to ifindex {ifindex}: {exc}") from None

    def _put_port(self, st: _Net, old: Optional[Port], new: Optional[Port], attach: bool = True) -> None:
        """``new``'s entries (and, if ``attach``, our programs on its veth), then ``old``'s go."""
        h = st.handle
        before = st.ports.pop(old.endpoint_id, None) if old else None
        if old is not None and before is None:      # adopted: find its veth by name
            try:
                before = (old, socket.if_nametoindex(old.name))
            except OSError:
                before = None
        old_members = maps.member_entries(old, 0) if old else {}
        old_pub = maps.published_entries(old) if old else {}
        new_members, new_pub = {}, {}
        if new is not None:
            ifindex = self._ifindex(new)
            libbpf.update(h.maps["endpoints"], maps.U32.pack(ifindex), maps.endpoint_value(new))
            new_members, new_pub = maps.member_entries(new, ifindex), maps.published_entries(new)
            for name, entries in (("members", new_members), ("published", new_pub)):
                for key, value in entries.items():
                    libbpf.update(h.maps[name], key, value)
            if attach:
                self._attach(st, ifindex)
            st.ports[new.endpoint_id] = (new, ifindex)
        for key in old_members.keys() - new_members.keys():
            libbpf.delete(h.maps["members"], key)
        for key in old_pub.keys() - new_pub.keys():
            libbpf.delete(h.maps["published"], key)
        if before and (new is None or st.ports[new.endpoint_id][1] != before[1]):
            libbpf.delete(h.maps["endpoints"], maps.U32.pack(before[1]))

    def _sync_ports(self, st: _Net, ports: Iterable[Port]) -> None:
        """Make endpoints, members, subnets, published exactly ``ports`` (and the gateways),
        *then* attach our programs: with maps made anew (pins._drop_other_shapes) a program
        attached earlier would take a member not written yet for the outside (fail open).
        Foreign filters that drift saw before ours go first (hooks.clear)."""
        h, st.ports = st.handle, {}
        for port in ports:
            self._put_port(st, None, port, attach=False)
        libbpf.make_exactly(h.maps["endpoints"], 4,
                      {maps.U32.pack(ifx): maps.endpoint_value(p) for p, ifx in st.ports.values()})
        members = maps.gateway_entries(st.spec.gateways)
        for key, value in members.items():
            libbpf.update(h.maps["members"], key, value)
        for port, ifx in st.ports.values():
            members.update(maps.member_entries(port, ifx))
        for key in list(libbpf.keys(h.maps["members"], maps.ADDR_KEY.size)):
            if key not in members:
                libbpf.delete(h.maps["members"], key)
        libbpf.make_exactly(h.maps["subnets"], maps.SUBNET_KEY.size, maps.subnet_entries(st.spec.subnets))
        libbpf.make_exactly(h.maps["published"], maps.PUB_KEY.size,
                      {k: v for port, _ifx in st.ports.values() for k, v in maps.published_entries(port).items()})
        hooks.clear(self.foreign_seen, [ifx for _port, ifx in st.ports.values()])
        for _port, ifx in st.ports.values():
            self._attach(st, ifx)

    # --- the Backend protocol -----------------------------------------------------
    def apply_network(self, net: NetworkSpec, policy: PolicyMap, ports: Iterable[Port], bridge_made: bool = False) -> None:
        """Load (or reload) the datapath of ``net``, reusing its pinned maps, and make every map
        exactly what ``policy`` and ``ports`` say (``bridge_made``: no matter). Raises BackendError."""
        ports = list(ports)
        with self._lock:
            for port in ports:          # every link exists, or nothing is touched
                self._ifindex(port)
            try:
                changes = maps.full_changes(policy)
                st = self._load(net)
                self._swap(st, policy, changes)
                st.index = group_index(policy.entries)
                self._sync_ports(st, ports)
                self._bump(st)
            except (maps.EncodeError, libbpf.LibbpfError) as exc:
                raise BackendError(f"eBPF network {net.id[:12]}: {exc}") from None
            self._apply_nat(st)

    def _apply_nat(self, st: _Net) -> None:
        """(Re)write the network's NAT-only nft table from its ports' published mappings."""
        if self.nat is not None:
            self.nat.apply(st.spec, [port for port, _ifx in st.ports.values()])

    def apply_ports(self, net: NetworkSpec, changes: Iterable[tuple], grouped: bool = False) -> None:
        """Endpoint changes ``(old, new)``; each new port's link must exist (BackendError
        before anything is written otherwise). The generation bump cuts what they deny."""
        changes = list(changes)
        with self._lock:
            for _old, new in changes:
                if new is not None:
                    self._ifindex(new)
            st = self._net(net)
            try:
                for old, new in changes:
                    self._put_port(st, old, new)
                self._bump(st)
            except libbpf.LibbpfError as exc:
                raise BackendError(f"eBPF network {net.id[:12]}: {exc}") from None
            if any(_published(old) != _published(new) for old, new in changes):
                self._apply_nat(st)

    def apply_policy(self, net: NetworkSpec, delta: PolicyDelta, changes: Iterable[tuple] = (),
                     policy: Optional[PolicyMap] = None, grouped: bool = False) -> None:
        """Apply ``delta`` in one flip (a mode switch: ``net.mode`` changed), then endpoint ``changes``
        as :meth:`apply_ports`; ``policy``: the map after ``delta`` if known. Raises BackendError."""
        with self._lock:
            st = self._net(net)
            if st.policy is None:
                raise BackendError(f"eBPF network {net.id[:12]}: apply_network first (no policy known)")
            try:
                new = st.policy.apply(delta) if policy is None else policy
                touched = _touched(st.policy, delta, st.index)
                wanted = _delta_changes(st.policy, new, delta, touched=touched)
                self._swap(st, new, wanted)
                _regroup(st.index, touched[0], touched[2])
            except (maps.EncodeError, libbpf.LibbpfError) as exc:
                raise BackendError(f"eBPF network {net.id[:12]}: {exc}") from None
            if delta.entries_removed or delta.cidrs_removed:   # in force already: a counter
                try:                                            # left behind fails nothing
                    counters.forget_removed(st.handle, wanted)
                except libbpf.LibbpfError as exc:
                    log.warning("eBPF network %s: removed rules' counters kept: %s", net.id[:12], exc)
            if changes:
                self.apply_ports(net, changes, grouped)

    def remove_network(self, network_id: str) -> None:
        with self._lock:
            key = network_id[:12]
            st = self._nets.pop(key, None)
            if st is None:
                try:
                    st = _Net(pins.open_network(self.root, network_id, partial=True), NetworkSpec(network_id, ""))
                except libbpf.LibbpfError:
                    st = None
            if st is not None:
                hooks.detach_all(st.handle)
                st.handle.close()
            pins.remove_pins(self.root, network_id)
            self.fqdn.forget(network_id)
            if self.nat is not None:
                self.nat.remove(network_id)
            if not pins.pinned_networks(self.root) and pins.remove_events(self.root):
                if self._reader is not None:
                    self._reader.reopen()    # the next network makes a new buffer

    def reattach(self, network_id: str, links: Iterable[int]) -> list:
        """Our programs back on those of ``links`` (ifindexes) that are the network's ports, after
        the foreign filters at our priority (hooks.py; returned): no reload, no map write."""
        with self._lock:
            st = self._nets.get(network_id[:12])
            mine = sorted({ifx for _port, ifx in st.ports.values()} & set(links)) if st else []
            gone = hooks.remove_all_foreign(mine)
            for ifindex in mine:
                self._attach(st, ifindex)
            return gone

    def networks(self) -> set:
        return pins.pinned_networks(self.root)

    def drift(self, net: NetworkSpec, policy: PolicyMap, ports: Iterable[Port]) -> list:
        from .drift import drift   # noqa: PLC0415 (read-only, rarely used)
        with self._lock:
            try:
                st = self._net(net)
            except BackendError as exc:
                return [str(exc)]
            return drift(self, st, policy, list(ports))

    def counters(self, net: NetworkSpec) -> Counters:
        """Packets and bytes: ``allowed`` per policy-map key (the packets that opened
        flows), ``dropped`` per (src, dst identity) and ``reasons`` of real drops
        (audit mode's would-drops are in :meth:`would_drop`); counters.read."""
        with self._lock:
            st = self._net(net)
            return counters.read(st.handle, st.policy.cidrs if st.policy else (), st.index)

    def would_drop(self, net: NetworkSpec) -> Counters:
        """What audit mode let through that enforce mode would have dropped, in the
        shapes of :meth:`counters` (``allowed`` empty). Not in the Backend protocol (yet)."""
        with self._lock:
            return counters.would_drop(self._net(net).handle)

    def watch_drops(self, callback: Callable[[DropEvent], None]) -> None:
        with self._lock:
            if self._reader is not None:
                self._reader.stop()
            self._reader = DropReader(self.root, lambda event: callback(self._as_judged(event)))
            self._reader.start()

    def _as_judged(self, event: DropEvent) -> DropEvent:
        """A hairpin flow's drop names the member behind the published port (events.hairpin_target)."""
        if (st := self._nets.get(event.network)) is None:
            return event
        return hairpin_target(event, st.spec.gateways, [port for port, _ifx in list(st.ports.values())])

    def close(self) -> None:
        self.fqdn.close()
        with self._lock:
            if self._reader is not None:
                self._reader.stop()
                self._reader = None
            for st in self._nets.values():
                st.handle.close()
            self._nets.clear()


def _published(port: Optional[Port]) -> tuple:
    return port.published if port is not None and port.active else ()

