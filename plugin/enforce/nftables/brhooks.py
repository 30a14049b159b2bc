"""Bridge netfilter for a network's bridge: its own ``nf_call_iptables`` switches.

Kernel background. The ``inet`` table judges bridged IP traffic only because
br_netfilter passes each bridged IPv4/IPv6 packet through the inet hooks
(net/bridge/br_netfilter_hooks.c, ``br_nf_pre_routing``). It does so when the
namespace's ``net.bridge.bridge-nf-call-iptables`` (``-ip6tables``) sysctl is on *or*
the bridge's own option is (``IFLA_BR_NF_CALL_IPTABLES``/``IFLA_BR_NF_CALL_IP6TABLES``,
since Linux 4.4; ``ip link set BR type bridge nf_call_iptables 1``). The sysctl is the
host's to set, and hosts that turn it off exist: a network relying on it would then
let every east-west flow through unjudged. So each bridge of an nftables network gets
its own switches on -- in the ``link add`` that makes it (``MADE_ON``), else (a bridge
adopted or repaired) by :meth:`BridgeHooks.ensure` -- and the drift check reports a
bridge whose switches are off.
Without br_netfilter at all (a module not loaded: no ``/proc/sys/net/bridge``) the
backend refuses to run (:func:`available`).
"""
from __future__ import annotations

import os
from typing import Optional

from pyroute2.netlink.exceptions import NetlinkError

from plugin.enforce.backend import BackendError
from plugin.kernel.links import IPRoute

SWITCHES = ("IFLA_BR_NF_CALL_IPTABLES", "IFLA_BR_NF_CALL_IP6TABLES")
#: both switches on, as pyroute2 names them: in a new bridge's own ``link add``
#: (``Backend.bridge_options``; br_dev_newlink hands them to br_changelink, net/bridge/br_netlink.c)
MADE_ON = (("br_nf_call_iptables", 1), ("br_nf_call_ip6tables", 1))
PROC = "/proc/sys/net/bridge"


def available() -> Optional[str]:
    """None when br_netfilter is in the calling thread's namespace, else why not (one line)."""
    if os.path.isdir(PROC):
        return None
    return ("bridge netfilter is not loaded (no /proc/sys/net/bridge): run "
            "'modprobe br_netfilter' on the host, or use secnet.backend=ebpf")


class BridgeHooks:
    """Reads and sets a bridge's two switches over rtnetlink (pyroute2); the socket is
    opened on first use in the calling thread's network namespace (the backend's)."""

    def __init__(self):
        self._ipr: Optional[IPRoute] = None

    def _open(self) -> IPRoute:
        if self._ipr is None:
            self._ipr = IPRoute()
        return self._ipr

    def _read(self, bridge: str) -> dict:
        """``{switch: 0 or 1}`` of ``bridge``; {} when it does not exist."""
        try:
            (msg,) = self._open().link("get", ifname=bridge)
        except NetlinkError:
            return {}
        data = msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA")
        return {name: (data.get(name) if data is not None else None) for name in SWITCHES}

    def ensure(self, bridge: str) -> bool:
        """Both switches of ``bridge`` on; True if they were changed. A missing bridge is
        left alone (the link writer makes it). Raises BackendError when the kernel refuses."""
        now = self._read(bridge)
        if not now or all(v == 1 for v in now.values()):
            return False
        try:
            self._open().link("set", ifname=bridge, kind="bridge", **dict(MADE_ON))
        except NetlinkError as exc:
            raise BackendError(f"bridge {bridge}: cannot turn bridge netfilter on: {exc}") from None
        return True

    def problems(self, bridge: str) -> list:
        """One line per switch of ``bridge`` that is off (drift); [] when on or no bridge."""
        return [f"bridge {bridge}: {name[8:].lower()} off (its traffic would skip the inet table)"
                for name, value in self._read(bridge).items() if value != 1]

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None
