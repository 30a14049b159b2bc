"""Persisted networks and endpoints.

SQLite in WAL mode with synchronous=FULL: a verb answers success only after
its row is on disk, so a crash (kill -9, power loss) loses nothing Docker was
told about. Rows hold JSON documents; the schema stays trivial so that a
restart can always read what an older daemon wrote.
"""
from __future__ import annotations

import ipaddress
import json
import os
import sqlite3
import threading
from dataclasses import asdict, dataclass, field, replace
from typing import Iterator, Optional


@dataclass(frozen=True)
class NetworkRecord:
    id: str
    bridge: str
    mtu: int
    options: dict                     # segmentation NetworkOptions.to_dict()
    ipv4: tuple = ()                  # ((pool, gateway-cidr-or-None), ...)
    ipv6: tuple = ()
    internal: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "NetworkRecord":
        d = json.loads(text)
        d["ipv4"] = tuple(tuple(x) for x in d.get("ipv4", ()))
        d["ipv6"] = tuple(tuple(x) for x in d.get("ipv6", ()))
        return cls(**d)

    def gateways(self) -> list:
        """Gateway addresses in CIDR form, both families, every subnet."""
        return [gw for _, gw in self.ipv4 + self.ipv6 if gw]

    def gateway_for(self, address: Optional[str]) -> Optional[str]:
        """The gateway (plain address) of the subnet ``address`` (CIDR form) is
        in: a network may have several subnets per family. None when none."""
        if not address:
            return None
        ip = ipaddress.ip_interface(address).ip
        for pool, gw in self.ipv4 + self.ipv6:
            if gw and ip in ipaddress.ip_network(pool):
                return str(ipaddress.ip_interface(gw).ip)
        return None


@dataclass(frozen=True)
class EndpointRecord:
    id: str
    network_id: str
    veth_host: str
    veth_peer: str
    mac: str
    ipv4: Optional[str] = None        # CIDR form
    ipv6: Optional[str] = None
    segment_opt: Optional[str] = None  # the driver-opt, which wins over the label
    segment: Optional[str] = None      # resolved segment (None: not known yet)
    quarantine: Optional[str] = None   # reason, when quarantined
    container: Optional[str] = None    # container name
    container_id: Optional[str] = None
    sandbox_key: Optional[str] = None
    joined: bool = False
    ports: tuple = ()                  # published ports (portmap), later issue
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "EndpointRecord":
        d = json.loads(text)
        d["ports"] = tuple(tuple(p) if isinstance(p, list) else p for p in d.get("ports", ()))
        return cls(**d)

    def evolve(self, **changes) -> "EndpointRecord":
        return replace(self, **changes)


class State:
    """The one store of networks and endpoints; safe to share between threads."""

    def __init__(self, state_dir: str):
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        self.path = os.path.join(state_dir, "state.db")
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS networks (id TEXT PRIMARY KEY, doc TEXT NOT NULL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS endpoints (id TEXT PRIMARY KEY,"
                         " network_id TEXT NOT NULL, doc TEXT NOT NULL)")
        self._db.execute("CREATE INDEX IF NOT EXISTS ep_net ON endpoints(network_id)")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # networks
    def put_network(self, rec: NetworkRecord) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO networks VALUES (?, ?)", (rec.id, rec.to_json()))

    def get_network(self, nid: str) -> Optional[NetworkRecord]:
        with self._lock:
            row = self._db.execute("SELECT doc FROM networks WHERE id=?", (nid,)).fetchone()
        return NetworkRecord.from_json(row[0]) if row else None

    def networks(self) -> list:
        with self._lock:
            rows = self._db.execute("SELECT doc FROM networks ORDER BY id").fetchall()
        return [NetworkRecord.from_json(r[0]) for r in rows]

    def delete_network(self, nid: str) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM endpoints WHERE network_id=?", (nid,))
            self._db.execute("DELETE FROM networks WHERE id=?", (nid,))
            self._db.execute("COMMIT")

    # endpoints
    def put_endpoint(self, rec: EndpointRecord) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO endpoints VALUES (?, ?, ?)",
                             (rec.id, rec.network_id, rec.to_json()))

    def put_endpoints(self, recs) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            for rec in recs:
                self._db.execute("INSERT OR REPLACE INTO endpoints VALUES (?, ?, ?)",
                                 (rec.id, rec.network_id, rec.to_json()))
            self._db.execute("COMMIT")

    def get_endpoint(self, eid: str) -> Optional[EndpointRecord]:
        with self._lock:
            row = self._db.execute("SELECT doc FROM endpoints WHERE id=?", (eid,)).fetchone()
        return EndpointRecord.from_json(row[0]) if row else None

    def endpoints(self, nid: Optional[str] = None) -> list:
        with self._lock:
            if nid is None:
                rows = self._db.execute("SELECT doc FROM endpoints ORDER BY id").fetchall()
            else:
                rows = self._db.execute("SELECT doc FROM endpoints WHERE network_id=? ORDER BY id",
                                        (nid,)).fetchall()
        return [EndpointRecord.from_json(r[0]) for r in rows]

    def iter_endpoints(self) -> Iterator[EndpointRecord]:
        yield from self.endpoints()

    def delete_endpoint(self, eid: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM endpoints WHERE id=?", (eid,))
