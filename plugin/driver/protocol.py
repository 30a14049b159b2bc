"""Typed requests of the libnetwork remote-driver protocol.

Each ``from_wire`` takes the decoded JSON body Docker sent and either returns
a frozen request object or raises BadRequest naming what was wrong. Nothing
here touches the kernel or the state: validation runs completely before any
change is made.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from plugin.errors import BadRequest
from segmentation.options import DOCKER_MTU_KEY as DOCKER_MTU

_ID_RE = re.compile(r"^[0-9a-fA-F]{12,64}$")
_MAC_RE = re.compile(r"^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$")

GENERIC = "com.docker.network.generic"
ENABLE_IPV6 = "com.docker.network.enable_ipv6"
INTERNAL = "com.docker.network.internal"
EXPOSED = "com.docker.network.endpoint.exposedports"


def _obj(body: Any, what: str = "request body") -> dict:
    if not isinstance(body, dict):
        raise BadRequest(f"{what} must be a JSON object")
    return body


def _id(body: dict, key: str) -> str:
    value = body.get(key)
    if value is None or value == "":
        raise BadRequest(f"missing field {key}")
    if not isinstance(value, str):
        raise BadRequest(f"invalid {key}: expected a hex id string, got {type(value).__name__}")
    if not _ID_RE.match(value):
        raise BadRequest(f"invalid {key} {value!r}: expected a hex id")
    return value.lower()


def _bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", ""):
        return value.lower() in ("true", "1")
    if value is None:
        return False
    raise BadRequest(f"invalid {key} {value!r}: expected a boolean")


def _iface(text: Any, key: str, family: int) -> Optional[ipaddress._BaseAddress]:
    """Parse an address in CIDR form ("10.0.0.2/24"); empty means none."""
    if text in (None, ""):
        return None
    if not isinstance(text, str):
        raise BadRequest(f"invalid {key} {text!r}: expected an address in CIDR form")
    try:
        iface = ipaddress.ip_interface(text if "/" in text else text + ("/32" if family == 4 else "/128"))
    except ValueError:
        raise BadRequest(f"invalid {key} {text!r}: expected an address in CIDR form") from None
    if iface.version != family:
        raise BadRequest(f"invalid {key} {text!r}: expected an IPv{family} address")
    return iface


@dataclass(frozen=True)
class PoolData:
    pool: str
    gateway: Optional[str]  # CIDR form, e.g. "10.200.0.1/24"

    @classmethod
    def from_wire(cls, item: Any, family: int) -> "PoolData":
        key = "IPv4Data" if family == 4 else "IPv6Data"
        item = _obj(item, key + " entry")
        pool = item.get("Pool")
        try:
            net = ipaddress.ip_network(pool, strict=False)
        except (TypeError, ValueError):
            raise BadRequest(f"invalid {key} Pool {pool!r}: expected a CIDR") from None
        if net.version != family:
            raise BadRequest(f"invalid {key} Pool {pool!r}: expected an IPv{family} CIDR")
        gw = _iface(item.get("Gateway"), key + " Gateway", family)
        gateway = None
        if gw is not None:
            # Docker sends the gateway with the pool's prefix length.
            gateway = f"{gw.ip}/{net.prefixlen}" if gw.network.prefixlen in (32, 128) else str(gw)
        return cls(pool=str(net), gateway=gateway)


@dataclass(frozen=True)
class CreateNetworkRequest:
    network_id: str
    generic: dict
    ipv6: bool
    internal: bool
    docker_mtu: Optional[str]
    ipv4_data: tuple
    ipv6_data: tuple

    @classmethod
    def from_wire(cls, body: Any) -> "CreateNetworkRequest":
        body = _obj(body)
        nid = _id(body, "NetworkID")
        opts = body.get("Options") or {}
        opts = _obj(opts, "Options")
        generic = opts.get(GENERIC) or {}
        generic = _obj(generic, "Options." + GENERIC)
        for k, v in generic.items():
            if not isinstance(v, str):
                raise BadRequest(f"invalid value {v!r} for option {k}: expected a string")
        v4 = tuple(PoolData.from_wire(i, 4) for i in (body.get("IPv4Data") or []))
        v6 = tuple(PoolData.from_wire(i, 6) for i in (body.get("IPv6Data") or []))
        mtu = generic.get(DOCKER_MTU, opts.get(DOCKER_MTU))
        return cls(network_id=nid, generic=dict(generic), ipv6=_bool(opts.get(ENABLE_IPV6), ENABLE_IPV6),
                   internal=_bool(opts.get(INTERNAL), INTERNAL),
                   docker_mtu=None if mtu in (None, "") else str(mtu), ipv4_data=v4, ipv6_data=v6)


@dataclass(frozen=True)
class NetworkRequest:
    network_id: str

    @classmethod
    def from_wire(cls, body: Any) -> "NetworkRequest":
        return cls(network_id=_id(_obj(body), "NetworkID"))


@dataclass(frozen=True)
class EndpointRequest:
    network_id: str
    endpoint_id: str
    options: dict = field(default_factory=dict)
    sandbox_key: str = ""

    @classmethod
    def from_wire(cls, body: Any) -> "EndpointRequest":
        body = _obj(body)
        opts = body.get("Options") or {}
        opts = _obj(opts, "Options")
        sandbox = body.get("SandboxKey") or ""
        if not isinstance(sandbox, str):
            raise BadRequest(f"invalid SandboxKey {sandbox!r}: expected a path")
        return cls(network_id=_id(body, "NetworkID"), endpoint_id=_id(body, "EndpointID"),
                   options=dict(opts), sandbox_key=sandbox)


@dataclass(frozen=True)
class CreateEndpointRequest:
    network_id: str
    endpoint_id: str
    ipv4: Optional[str]  # CIDR form
    ipv6: Optional[str]
    mac: Optional[str]
    options: dict

    @classmethod
    def from_wire(cls, body: Any) -> "CreateEndpointRequest":
        body = _obj(body)
        nid, eid = _id(body, "NetworkID"), _id(body, "EndpointID")
        iface = _obj(body.get("Interface") or {}, "Interface")
        v4 = _iface(iface.get("Address"), "Interface.Address", 4)
        v6 = _iface(iface.get("AddressIPv6"), "Interface.AddressIPv6", 6)
        mac = iface.get("MacAddress") or None
        if mac is not None and (not isinstance(mac, str) or not _MAC_RE.match(mac)):
            raise BadRequest(f"invalid Interface.MacAddress {mac!r}: expected xx:xx:xx:xx:xx:xx")
        opts = _obj(body.get("Options") or {}, "Options")
        return cls(network_id=nid, endpoint_id=eid, ipv4=str(v4) if v4 else None,
                   ipv6=str(v6) if v6 else None, mac=mac.lower() if mac else None, options=dict(opts))
