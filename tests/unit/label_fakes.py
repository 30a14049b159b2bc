"""Fakes for the tests of plugin.driver.labels: a Docker client answering from dicts,
an event stream, a state and a driver that record what the resolver asked."""
import re
import threading
import time

from plugin.driver.labels import LabelResolver
from plugin.driver.state import EndpointRecord, NetworkRecord
from segmentation.options import NetworkOptions

NID = "n" * 64
EID = "e" * 64
CID = "c" * 64


def network(**opts):
    return NetworkRecord(id=NID, bridge="sn-test", mtu=1500,
                         options=NetworkOptions(**opts).to_dict(), ipv4=(("10.230.0.0/24", None),))


def endpoint(eid=EID, **kw):
    return EndpointRecord(id=eid, network_id=NID, veth_host="h", veth_peer="p", mac="02:00:00:00:00:01",
                          ipv4="10.230.0.2/24", **kw)


class FakeClient:
    """What LabelResolver uses of docker.APIClient, answering from dicts."""

    def __init__(self, containers=(), members=None, events=None, fail=None, networks=(NID,)):
        self.rows = list(containers)           # /containers/json rows
        self.network_ids = list(networks)      # /networks: the engine's networks
        self.members = members or {}           # /networks/{id} "Containers"
        self.events_script = events or []      # one item per events() call: list or exception
        self.fail = fail                       # exception raised by every call
        self.timeout = None
        self.calls = []
        self.timeouts = []
        self.closed = threading.Event()

    def _call(self, name, *args):
        self.calls.append((name,) + args)
        self.timeouts.append(self.timeout)
        if self.fail:
            raise self.fail

    def inspect_network(self, nid):
        self._call("inspect_network", nid)
        return {"Id": nid, "Containers": dict(self.members)}

    def networks(self):
        self._call("networks", None)
        return [{"Id": nid} for nid in self.network_ids]

    def containers(self, all=False, filters=None):
        self._call("containers", filters)
        assert all is True
        if not filters or "network" in filters:
            return list(self.rows)
        if "id" in filters:
            return [r for r in self.rows if r["Id"].startswith(filters["id"][0])]
        (pattern,) = filters["name"]
        return [r for r in self.rows if any(re.search(pattern, n) for n in r["Names"])]  # as dockerd

    def inspect_container(self, *args, **_k):
        self.calls.append(("inspect_container",) + args)  # recorded: the resolver swallows errors
        raise AssertionError("inspect_container blocks on a starting container: never call it")

    def events(self, since=None, filters=None, decode=None):
        self._call("events", filters)
        item = self.events_script.pop(0) if self.events_script else StopAfter()
        if isinstance(item, BaseException):
            raise item
        return Stream(item) if type(item) is list else item  # else a stream object of the test


class Stream(list):
    def close(self):
        pass


class StopAfter:
    """A stream that blocks until closed (the idle engine)."""

    def __init__(self):
        self.done = threading.Event()

    def __iter__(self):
        self.done.wait(5)
        return iter(())

    def close(self):
        self.done.set()


def row(name, labels, cid=CID):
    return {"Id": cid, "Names": [f"/{name}"], "Labels": labels, "State": "created"}


def joining(name="web-1", eid=EID):
    return {f"ep-{eid}": {"Name": name, "EndpointID": eid}}


def resolver(client, **kw):
    return LabelResolver(client_factory=lambda timeout: client, **kw)


class FakeState:
    def __init__(self, net, eps):
        self.net = net
        self.eps = {ep.id: ep for ep in eps}

    def get_network(self, nid):
        return self.net if nid == self.net.id else None

    def endpoints(self, nid=None):
        return [ep for ep in self.eps.values() if nid in (None, ep.network_id)]

    def networks(self):
        return [self.net] if self.net is not None else []


class FakeDriver:
    def __init__(self, net, eps=()):
        self.state = FakeState(net, eps)
        self.applied = []
        self.renamed = []
        self.deleted = []
        self.deleted_networks = []
        self.created_since_start = set()
        self.applied_event = threading.Event()

    def apply_resolution(self, endpoint_id, container, container_id, segment, quarantine):
        self.applied.append((endpoint_id, container, container_id, segment, quarantine))
        ep = self.state.eps[endpoint_id]
        self.state.eps[endpoint_id] = ep.evolve(container=container, container_id=container_id,
                                                segment=segment, quarantine=quarantine)
        self.applied_event.set()

    def delete_endpoint(self, req):
        self.deleted.append(req.endpoint_id)
        self.state.eps.pop(req.endpoint_id, None)

    def delete_network(self, req):
        self.deleted_networks.append(req.network_id)
        self.state.net = None

    def rename_containers(self, names):
        self.renamed.append(dict(names))
        for eid, ep in list(self.state.eps.items()):
            if ep.container_id in names:
                self.state.eps[eid] = ep.evolve(container=names[ep.container_id])
        return len(names)


def connect_event(cid=CID, nid=NID):
    return {"Type": "network", "Action": "connect", "time": 1,
            "Actor": {"ID": nid, "Attributes": {"container": cid, "name": "net", "type": "secnet"}}}


def run_watcher(res, driver, until, timeout=5.0):
    res.start(driver)
    try:
        deadline = time.monotonic() + timeout
        while not until() and time.monotonic() < deadline:
            time.sleep(0.005)
    finally:
        res.stop()
    assert until()


def rename_event(name, cid=CID, old="/web-1"):
    return {"Type": "container", "Action": "rename", "id": cid,
            "Actor": {"ID": cid, "Attributes": {"name": name, "oldName": old, "image": "x"}}}
