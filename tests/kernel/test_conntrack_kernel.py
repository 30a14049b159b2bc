"""The conntrack writer against a real kernel (ctnetlink),
in the lab's own namespace: entries it deletes are gone, others stay, and a
flow that a policy edit no longer allows stops with its next packet. Each
test runs twice: reading the table by dumping it, and from the flow index
that conntrack's events keep (plugin.kernel.ctindex) -- then without a dump."""
from __future__ import annotations

import socket
import time

import pytest

from nsfixtures import BRIDGE, GATEWAY4, GATEWAY6, NET_ID, NsKernel, lab, only  # noqa: F401  (fixture)
from packets import UDP_PORT, netns, ns_socket
from plugin.driver.state import EndpointRecord, NetworkRecord, State
from plugin.enforce.reconciler import Reconciler
from plugin.kernel.conntrack import Flows
from plugin.kernel.ctindex import FlowIndex
from segmentation.options import NetworkOptions
from segmentation.rules import parse_rules

pytestmark = pytest.mark.kernel


@pytest.fixture(params=["dump", "index"])
def flows(request, lab):
    """``flows()``: a Flows on the lab's conntrack table, read by dumps or from an index
    started in the lab's namespace (then every read must come from the index)."""
    made = []

    def make(reads_dump: bool = False):
        """``reads_dump``: reads of this one may dump the table (an index answers only
        for addresses in the subnets it watches)."""
        index = None
        if request.param == "index":
            with netns(lab.host):
                index = FlowIndex().start()
            made.append(index)
            deadline = time.monotonic() + 5
            while not index.complete:
                assert time.monotonic() < deadline, "the flow index was not seeded within 5 s"
                time.sleep(0.01)
        found = Flows(NsKernel(lab.host), index=index)
        made.append((found, reads_dump))
        return found
    yield make
    for thing in made:
        if isinstance(thing, tuple):
            found, reads_dump = thing
            assert request.param == "dump" or reads_dump or found.dumps == 0, "a read dumped the table"
        else:
            thing.stop()


def conntrack(lab, *args: str) -> str:
    return lab.exec("conntrack", *args, check=False).stdout


def insert(lab, proto, src, dst, sport, dport, rsrc=None, rdst=None, rsport=None) -> None:
    state = ["--state", "ESTABLISHED"] if proto == "tcp" else []
    lab.exec("conntrack", "-I", "-p", proto, *state, "-s", src, "-d", dst, "--sport", str(sport),
             "--dport", str(dport), "-r", rsrc or dst, "-q", rdst or src,
             "--reply-port-src", str(rsport or dport), "--reply-port-dst", str(sport), "-t", "120")


def listed(lab) -> str:
    return conntrack(lab, "-L") + conntrack(lab, "-L", "-f", "ipv6")


@only("nftables")   # the conntrack writer itself: the backend plays no part
def test_forget_deletes_entries_naming_an_address_in_either_tuple(lab, flows):
    insert(lab, "udp", "127.0.0.1", "127.0.0.1", 40001, 38417, rsrc="10.236.0.10", rdst="10.236.0.1",
           rsport=5353)                                                   # published: reply tuple only
    insert(lab, "tcp", "fd00:236::a", "fd00:236::b", 40002, 8080)           # IPv6, original tuple
    insert(lab, "udp", "10.236.0.11", "10.236.0.12", 40003, 53)            # another endpoint's
    assert flows().forget(["10.236.0.10/24", "fd00:236::a/64"]) == 2
    left = listed(lab)
    assert "sport=40003" in left and "sport=40001" not in left and "sport=40002" not in left


@only("nftables")   # the conntrack writer itself: the backend plays no part
def test_claim_deletes_flows_that_would_miss_the_new_holder(lab, flows):
    insert(lab, "udp", "127.0.0.1", "127.0.0.1", 40001, 38417)                            # to the host
    insert(lab, "udp", "127.0.0.1", "127.0.0.1", 40002, 38417, rsrc="10.236.0.10", rdst="10.236.0.1",
           rsport=5353)                                                                   # to the old one
    insert(lab, "udp", "127.0.0.1", "127.0.0.1", 40003, 38417, rsrc="10.236.0.11", rdst="10.236.0.1",
           rsport=5353)                                                                   # to the new one
    insert(lab, "udp", "127.0.0.1", "127.0.0.1", 40004, 38418)                            # another port
    found = flows(reads_dump=True)
    insert(lab, "udp", "127.0.0.1", "127.0.0.1", 40005, 38417, rsrc="10.236.0.12", rdst="10.236.0.1",
           rsport=5353)                                                 # after the index was seeded
    found.watch(["10.236.0.0/24"])   # as the daemon's index: flows to the host are not kept, so a claim dumps
    assert found.claim([("udp", "", 38417, 5353)], "10.236.0.11", None) == 3
    assert found.dumps == 1
    left = listed(lab)
    assert "sport=40003" in left and "sport=40004" in left
    assert "sport=40001" not in left and "sport=40002" not in left and "sport=40005" not in left


def endpoint(c, segment) -> EndpointRecord:
    return EndpointRecord(id=f"ep{c.index:02d}", network_id=NET_ID, veth_host=c.veth,
                          veth_peer="eth0", mac=c.mac, ipv4=f"{c.ip4}/24", ipv6=f"{c.ip6}/64",
                          segment=segment, container=f"c{c.index}", joined=True)


def network(rules: str, backend: str) -> NetworkRecord:
    options = NetworkOptions(rules=parse_rules(rules), intra="deny", ipv6=True, backend=backend)
    return NetworkRecord(id=NET_ID, bridge=BRIDGE, mtu=1500, options=options,
                         ipv4=(("10.236.0.0/24", f"{GATEWAY4}/24"),),
                         ipv6=(("fd00:236::/64", f"{GATEWAY6}/64"),))


def exchange(s) -> bool:
    try:
        s.send(b"ping")
        return s.recv(100) == b"ping"
    except OSError:
        return False


def test_a_policy_edit_stops_established_flows_in_both_families(lab, tmp_path, flows):
    web, api = lab.add(2)
    state = State(str(tmp_path / "state"))
    try:
        state.put_endpoints([endpoint(web, "web"), endpoint(api, "api")])
        rec = Reconciler(state, {lab.backend_name: lab.backend}, flows=flows())
        b = lab.backend_name
        state.put_network(network(f"web->api:udp/{UDP_PORT}", b))
        rec.network_added(network(f"web->api:udp/{UDP_PORT}", b))
        streams = []
        for fam in (4, 6):
            s = ns_socket(web.ns, socket.AF_INET if fam == 4 else socket.AF_INET6, socket.SOCK_DGRAM)
            s.settimeout(0.5)
            s.connect((api.ip(fam), UDP_PORT))
            streams.append(s)
        assert [exchange(s) for s in streams] == [True, True]
        rec.policy_changed(network("web->api:tcp/8080", b))
        assert [exchange(s) for s in streams] == [False, False]   # the next datagram: a new, denied flow
        rec.policy_changed(network(f"web->api:udp/{UDP_PORT}", b))
        assert [exchange(s) for s in streams] == [True, True]
        for s in streams:
            s.close()
    finally:
        state.close()


@only("nftables")   # the conntrack writer itself: the backend plays no part
def test_with_conntrack_events_off_the_index_answers_nothing_and_reads_dump(lab):
    """Fail closed: without events the index cannot know the table; every read dumps it."""
    lab.exec("sysctl", "-qw", "net.netfilter.nf_conntrack_events=0")
    with netns(lab.host):
        index = FlowIndex(reseed=0.05).start()
    try:
        time.sleep(0.3)                                   # a few seeds that cannot take
        assert not index.complete and index.entries({"10.236.0.10"}) is None
        insert(lab, "udp", "10.236.0.10", "10.236.0.11", 40001, 53)
        found = Flows(NsKernel(lab.host), index=index)
        assert found.forget(["10.236.0.10/24"]) == 1 and found.dumps == 1
        assert "sport=40001" not in listed(lab)
    finally:
        index.stop()
        lab.exec("sysctl", "-qw", "net.netfilter.nf_conntrack_events=2")


@only("nftables")   # the conntrack writer itself: the backend plays no part
def test_delete_removes_entries_of_every_family_and_protocol_and_counts_only_its_own(lab):
    """Kernel.delete encodes each entry's original tuple itself (ports, ICMP id/type/code,
    both families) and sends the requests in batches of 256: every entry it was given is
    gone, the one it was not given stays, and one that ended before the call is not counted."""
    insert(lab, "tcp", "10.236.0.2", "10.236.0.3", 41000, 80)
    insert(lab, "udp", "fd00:236::2", "fd00:236::3", 41001, 53)
    lab.exec("conntrack", "-I", "-p", "icmp", "-s", "10.236.0.2", "-d", "10.236.0.3", "--icmp-type", "8",
             "--icmp-code", "0", "--icmp-id", "4242", "-t", "120")
    lab.exec("conntrack", "-I", "-p", "icmpv6", "-s", "fd00:236::2", "-d", "fd00:236::3",
             "--icmpv6-type", "128", "--icmpv6-code", "0", "--icmpv6-id", "4343", "-t", "120")
    for port in range(42000, 42300):                       # more than one batch
        insert(lab, "udp", "10.236.0.4", "10.236.0.5", port, 5000)
    insert(lab, "udp", "10.236.0.9", "10.236.0.8", 41999, 53)   # not given: stays
    kernel = NsKernel(lab.host)
    doomed = kernel.entries(["10.236.0.2", "fd00:236::2", "10.236.0.4"])
    assert len(doomed) == 304
    ended = next(e for e in doomed if e.orig.sport == 42299)
    conntrack(lab, "-D", "-p", "udp", "-s", "10.236.0.4", "--sport", "42299")
    assert kernel.delete(doomed) == 303
    assert kernel.entries(["10.236.0.2", "fd00:236::2", "10.236.0.4"]) == []
    assert [e.orig.sport for e in kernel.entries(["10.236.0.9"])] == [41999]
    assert kernel.delete([ended]) == 0
