"""Text shared by the nftables tables' renderers: table names, set declarations, chains."""
from __future__ import annotations

from .drops import SETTING_KEY
from .elements import COUNTED_IN, HIT_SET_SIZE, HIT_SETS, POLICY_SETS, SCHEMAS
from .runner import TABLE_PREFIX

_TYPES = {"mark": "mark", "ip4": "ipv4_addr", "ip6": "ipv6_addr", "proto": "inet_proto",
          "port": "inet_service", "ifname": "ifname", "mac": "ether_addr"}
_BRIDGE_TYPEOF = {"na6": "typeof iifname . @th,64,128"}


def table_name(network_id: str) -> str:
    return TABLE_PREFIX + network_id[:12]


def set_declaration(name: str) -> str:
    family, key, value, interval = SCHEMAS[name]
    if name in _BRIDGE_TYPEOF:
        typ = _BRIDGE_TYPEOF[name]
    elif key == ("zero",):
        typ = f"typeof {SETTING_KEY}"
    else:
        typ = "type " + " . ".join(_TYPES[k] for k in key)
        if value:
            typ += " : " + " . ".join(_TYPES[k] for k in value)
    flags = " flags interval;" if interval else ""
    if name in HIT_SETS:   # filled by the datapath (``update``), each element with its counter
        flags = f" size {HIT_SET_SIZE}; flags dynamic;"
    counter = " counter;" if (name in POLICY_SETS and name not in COUNTED_IN) or name in HIT_SETS else ""
    kind = "map" if value else "set"
    return f"  {kind} {name} {{ {typ};{flags}{counter} }}"


def rules(name: str, *rules: str, hook: str = "") -> list:
    head = [f"  chain {name} {{"] + ([f"    {hook}"] if hook else [])
    return head + [f"    {r}" for r in rules] + ["  }"]
