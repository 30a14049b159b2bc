"""A backend-neutral harness over the kernel-tier lab (nsfixtures.Lab).

``BackendLab`` drives any ``plugin.enforce.backend.Backend`` inside the lab's
host namespace: every call runs on one thread that entered the namespace
(tc, netlink and if_nametoindex act on the current thread's namespace). It
speaks the backend's neutral terms -- rules compile to a PolicyMap over
identities from a MemoryAllocator, containers become backend Ports -- so
the same test body judges every datapath. ``backend_lab`` is the fixture;
parametrize it over backend names (``BACKENDS``) to run a test on each.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from nsfixtures import BRIDGE, NET_ID, Lab
from plugin.enforce.backend import NetworkSpec, Port
from segmentation.identities import PENDING, QUARANTINED, MemoryAllocator
from segmentation.options import NetworkOptions
from segmentation.policymap import compile_policy_map
from segmentation.rules import parse_rules

CLONE_NEWNET = 0x40000000
SUBNETS = ("10.236.0.0/24", "fd00:236::/64")
_libc = ctypes.CDLL(None, use_errno=True)


def _enter(ns: str) -> None:
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {ns}")
    finally:
        os.close(fd)


def make_ebpf(pin_root: str):
    from plugin.enforce.ebpf.backend import EbpfBackend   # noqa: PLC0415
    return EbpfBackend(pin_root=pin_root)


def make_nft(pin_root: str):
    from plugin.enforce.nftables.backend import NftBackend   # noqa: PLC0415
    return NftBackend()


#: backend name -> factory(pin_root) building it (inside the lab's host namespace)
BACKENDS = {"nftables": make_nft, "ebpf": make_ebpf}


def needs(blab, what: str) -> None:
    """Skip unless the backend has ``what`` ("drop reports" or "audit mode")."""
    backend = blab.backend
    if what == "drop reports" and not getattr(backend, "reports_drops", True):
        pytest.skip(f"{backend.name} reports no drops here")
    if what == "audit mode" and "audit" not in getattr(backend, "modes", ("enforce", "audit")):
        pytest.skip(f"{backend.name} has no audit mode")
    if what == "flow cutting" and backend.name == "nftables":
        pytest.skip("nftables leaves established flows to the reconciler's conntrack pruning "
                    "(plugin.kernel.conntrack, tested in the e2e and conntrack tiers)")


class BackendLab:
    """One network on the lab's bridge, enforced by one backend."""

    def __init__(self, lab: Lab, factory, pin_root: str):
        self.lab = lab
        self.pin_root = pin_root
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="backend-lab", initializer=_enter,
                                        initargs=(lab.host,))
        self.backend = self.call(factory, pin_root)
        self.ids = MemoryAllocator()
        self.net = NetworkSpec(id=NET_ID, bridge=BRIDGE, subnets=SUBNETS)
        self.policy = None
        self.options = None
        self.gateways: tuple = ()
        self.published: dict = {}      # container index -> Port.published

    def call(self, fn, *args, **kw):
        """``fn(*args)`` on the thread inside the lab's host namespace."""
        return self._pool.submit(fn, *args, **kw).result()

    # --- neutral data ----------------------------------------------------------
    def port(self, c, segment=None, quarantine=None) -> Port:
        if quarantine is not None:
            identity = QUARANTINED
        elif segment is None:
            identity = PENDING
        else:
            identity = self.ids.identities(NET_ID)[segment]
        return Port(endpoint_id=f"ep{c.index:02d}", name=c.veth, mac=c.mac, ipv4=c.ip4, ipv6=c.ip6,
                    identity=identity, segment=segment, quarantine=quarantine,
                    published=self.published.get(c.index, ()))

    def compile(self, rules: str, segments, **options):
        self.options = NetworkOptions(rules=parse_rules(rules), **options)
        named = {e.value for r in self.options.rules for e in (r.src, r.dst) if e.kind == "segment"}
        identities = self.ids.allocate(NET_ID, set(segments) | named)
        return compile_policy_map(self.options, identities)

    # --- backend calls ------------------------------------------------------------
    def apply(self, rules: str, members: dict, intra: str = "allow", extra_ports=(), mode="enforce",
              **options):
        """Compile ``rules`` over ``members`` (container -> segment) and apply the network."""
        self.policy = self.compile(rules, set(members.values()), intra=intra, **options)
        self.net = NetworkSpec(id=NET_ID, bridge=BRIDGE, subnets=SUBNETS, mode=mode,
                               internal=self.options.internal, gateways=self.gateways)
        ports = [self.port(c, seg) for c, seg in members.items()] + list(extra_ports)
        self.call(self.backend.apply_network, self.net, self.policy, ports)
        return self.policy

    def edit(self, rules: str, mode=None, **options):
        """A live policy edit (and/or mode switch) as one delta."""
        opts = dict(intra=self.options.intra, egress=self.options.egress, internal=self.options.internal)
        opts.update(options)
        new = self.compile(rules, self.ids.identities(NET_ID), **opts)
        if mode is not None:
            self.net = NetworkSpec(id=NET_ID, bridge=BRIDGE, subnets=SUBNETS, mode=mode,
                                   internal=self.options.internal, gateways=self.gateways)
        self.call(self.backend.apply_policy, self.net, self.policy.delta(new))
        self.policy = new
        return new

    def change_ports(self, *changes) -> None:
        self.call(self.backend.apply_ports, self.net, list(changes))

    def counters(self):
        return self.call(self.backend.counters, self.net)

    def dropped(self, reason: str) -> int:
        return self.counters().reasons.get(reason, (0, 0))[0]

    def close(self) -> None:
        try:
            self.call(self.backend.remove_network, NET_ID)
            self.call(self.backend.close)
        finally:
            self._pool.shutdown(wait=True)
            shutil.rmtree(self.pin_root, ignore_errors=True)


@pytest.fixture(params=sorted(BACKENDS))
def backend_lab(request, lab):
    """A BackendLab on ``lab`` for each backend of BACKENDS."""
    root = f"/sys/fs/bpf/secnet-test-{uuid.uuid4().hex[:8]}"
    blab = BackendLab(lab, BACKENDS[request.param], root)
    try:
        yield blab
    finally:
        blab.close()
