"""plugin.kernel.ctindex without a kernel: conntrack messages built by hand as the
kernel lays them out (linux/netfilter/nfnetlink_conntrack.h), an event socket
and a dump played by fakes. The kernel tier runs it against real events."""
from __future__ import annotations

import errno
import socket
import struct
import time

import pytest

from plugin.kernel import ctindex
from plugin.kernel.conntrack import Flows
from plugin.kernel.ctindex import FlowIndex, parse


def nla(kind: int, payload: bytes, nested: bool = False) -> bytes:
    head = struct.pack("=HH", 4 + len(payload), kind | (0x8000 if nested else 0))
    return head + payload + b"\0" * (-len(payload) % 4)


def tuple_attr(kind, src, dst, proto, sport=None, dport=None, icmp=None) -> bytes:
    fam = socket.AF_INET6 if ":" in src else socket.AF_INET
    base = 3 if fam == socket.AF_INET6 else 1
    ip = nla(base, socket.inet_pton(fam, src)) + nla(base + 1, socket.inet_pton(fam, dst))
    pr = nla(1, bytes([proto]))
    if sport is not None:
        pr += nla(2, struct.pack("!H", sport)) + nla(3, struct.pack("!H", dport))
    if icmp is not None:   # (id, type, code), IPv4 attribute numbers
        pr += nla(4, struct.pack("!H", icmp[0])) + nla(5, bytes([icmp[1]])) + nla(6, bytes([icmp[2]]))
    return nla(kind, nla(1, ip, True) + nla(2, pr, True), True)


def message(kind: str, src, dst, proto=6, sport=40000, dport=80, reply_src=None, status=8, mark=0,
            icmp=None) -> bytes:
    fam = socket.AF_INET6 if ":" in src else socket.AF_INET
    body = struct.pack("=BBH", fam, 0, 0)
    body += tuple_attr(1, src, dst, proto, sport, dport, icmp)
    body += tuple_attr(2, reply_src or dst, src, proto, dport, sport, icmp)
    body += nla(3, struct.pack("!I", status)) + nla(8, struct.pack("!I", mark))
    mtype = {"new": 0x100, "destroy": 0x102}[kind]
    return struct.pack("=IHHII", 16 + len(body), mtype, 0, 0, 0) + body


DONE = struct.pack("=IHHII", 20, 3, 2, 1, 0) + b"\0" * 4


def test_parse_reads_both_tuples_status_mark_and_the_delete_key():
    data = message("new", "10.236.0.2", "10.236.0.1", sport=40001, dport=38417, reply_src="10.236.0.10",
                   status=0x20 | 8, mark=0x4000)
    data += message("destroy", "fd00:236::a", "fd00:236::b", proto=17, sport=5, dport=53) + DONE
    (k1, e1), (k2, e2), (k3, e3) = parse(data)
    assert (k1, k2, k3, e3) == ("new", "destroy", "done", None)
    assert (e1.family, e1.orig.proto, e1.orig.src, e1.orig.dst, e1.orig.sport, e1.orig.dport) == \
        (4, "tcp", "10.236.0.2", "10.236.0.1", 40001, 38417)
    assert (e1.reply.src, e1.reply.sport, e1.status, e1.mark, e1.dnat) == ("10.236.0.10", 38417, 0x28, 0x4000, True)
    assert e1.key == (socket.AF_INET, 6, "10.236.0.2", "10.236.0.1", 40001, 38417, None, None, None)
    assert (e2.family, e2.orig.proto, e2.reply.src) == (6, "udp", "fd00:236::b")


def test_parse_icmp_has_no_ports_and_keys_by_id_type_code():
    (_, e), = parse(message("new", "10.236.0.2", "10.236.0.3", proto=1, sport=None, dport=None, icmp=(77, 8, 0)))
    assert (e.orig.proto, e.orig.sport, e.orig.dport, e.port) == ("icmp", None, None, None)
    assert e.key[-3:] == (77, 8, 0)


def test_a_truncated_message_ends_the_datagram():
    data = message("new", "10.236.0.2", "10.236.0.3")
    assert list(parse(data[:-8])) == []


class FakeEvents:
    """An event socket: queued datagrams, or an error, for non-blocking reads."""

    def __init__(self):
        self.queue = []

    def recv(self, _size):
        if not self.queue:
            raise BlockingIOError
        item = self.queue.pop(0)
        if isinstance(item, OSError):
            raise item
        return item

    def fileno(self):
        return self._r

    def close(self):
        pass


@pytest.fixture
def rig(tmp_path, monkeypatch):
    """A started FlowIndex on fakes; ``rig.table`` is what a dump returns."""
    sysctl = tmp_path / "events"
    sysctl.write_text("2\n")
    monkeypatch.setattr(ctindex, "EVENTS_SYSCTL", str(sysctl))
    events = FakeEvents()
    import os
    events._r, w = os.pipe()   # select() needs a descriptor: never readable
    table = []

    class Rig:
        pass
    rig = Rig()
    rig.events, rig.table, rig.sysctl = events, table, sysctl
    rig.index = FlowIndex(reseed=0.05, opener=lambda: events, dumper=lambda: [e for k, e in parse(b"".join(table)) if k == "new"])
    rig.index.start()
    wait_for(lambda: rig.index.complete)
    yield rig
    rig.index.stop()
    os.close(events._r)
    os.close(w)


def wait_for(cond, timeout=5.0):
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def origs(entries) -> set:
    return {(e.orig.src, e.orig.dst, e.orig.sport) for e in entries}


def test_events_are_applied_when_read_and_addresses_select(rig):
    idx = rig.index
    assert idx.entries() == []
    rig.events.queue += [message("new", "10.236.0.2", "10.236.0.3", sport=1),
                         message("new", "10.236.0.4", "10.236.0.5", sport=2),
                         message("new", "10.236.0.2", "10.236.0.9", sport=3)]
    assert origs(idx.entries({"10.236.0.2"})) == {("10.236.0.2", "10.236.0.3", 1), ("10.236.0.2", "10.236.0.9", 3)}
    assert origs(idx.entries({"10.236.0.5"})) == {("10.236.0.4", "10.236.0.5", 2)}   # the reply tuple's too
    rig.events.queue.append(message("destroy", "10.236.0.2", "10.236.0.3", sport=1))
    assert origs(idx.entries()) == {("10.236.0.4", "10.236.0.5", 2), ("10.236.0.2", "10.236.0.9", 3)}
    idx.discard(idx.entries({"10.236.0.9"}))
    assert origs(idx.entries()) == {("10.236.0.4", "10.236.0.5", 2)}


def test_a_seed_is_the_dump_then_the_messages_queued_meanwhile(rig):
    rig.table[:] = [message("new", "10.236.0.2", "10.236.0.3", sport=1),
                    message("new", "10.236.0.2", "10.236.0.3", sport=2), DONE]
    rig.events.queue += [message("destroy", "10.236.0.2", "10.236.0.3", sport=2),
                         message("new", "10.236.0.2", "10.236.0.3", sport=3)]
    seeds = rig.index.seeds
    rig.index._give_up("test")
    wait_for(lambda: rig.index.seeds > seeds and rig.index.complete)
    assert origs(rig.index.entries()) == {("10.236.0.2", "10.236.0.3", 1), ("10.236.0.2", "10.236.0.3", 3)}


def test_a_lost_message_makes_it_answer_none_until_seeded_again(rig):
    rig.events.queue += [message("new", "10.236.0.2", "10.236.0.3", sport=1),
                         OSError(errno.ENOBUFS, "No buffer space available")]
    rig.table[:] = [message("new", "10.236.0.2", "10.236.0.3", sport=7), DONE]
    assert rig.index.entries() is None            # fail closed: the caller dumps the table
    wait_for(lambda: rig.index.complete)          # the thread seeds it again
    assert origs(rig.index.entries()) == {("10.236.0.2", "10.236.0.3", 7)}


def test_events_switched_off_or_too_many_entries_answer_none(rig):
    rig.sysctl.write_text("0\n")
    assert rig.index.entries() is None
    rig.sysctl.write_text("1\n")
    wait_for(lambda: rig.index.complete)
    rig.index.limit = 2
    rig.events.queue += [message("new", "10.236.0.2", "10.236.0.3", sport=p) for p in (1, 2, 3)]
    assert rig.index.entries() is None


class CountingKernel:
    def __init__(self, table):
        self.table, self.deleted, self.dumps = table, [], 0

    def entries(self, addresses=None):
        self.dumps += 1
        return list(self.table)

    def delete(self, entries):
        self.deleted += entries
        return len(entries)


def test_flows_read_the_index_while_complete_and_dump_otherwise(rig):
    rig.events.queue.append(message("new", "10.236.0.2", "10.236.0.3", sport=1))
    dumped = [e for _, e in parse(message("new", "10.236.0.2", "10.236.0.3", sport=9))]
    kernel = CountingKernel(dumped)
    flows = Flows(kernel, index=rig.index)
    assert flows.forget(["10.236.0.2/24"]) == 1
    assert (kernel.dumps, origs(kernel.deleted)) == (0, {("10.236.0.2", "10.236.0.3", 1)})
    assert rig.index.entries() == []               # deleted: out of the index at once
    rig.events.queue.append(OSError(errno.ENOBUFS, "No buffer space available"))
    assert flows.forget(["10.236.0.2"]) == 1       # the index gave up: a dump answered
    assert kernel.dumps == 1 and origs(kernel.deleted[1:]) == {("10.236.0.2", "10.236.0.3", 9)}


def test_subnets_cover_their_addresses_in_both_families():
    subnets = ctindex.Subnets(["10.236.0.0/24", "fd00:236::/64", "10.237.0.0/16"])
    assert subnets.covers("10.236.0.200") and subnets.covers("10.237.9.9") and subnets.covers("fd00:236::a")
    assert not subnets.covers("10.236.1.1") and not subnets.covers("fd00:237::a")
    assert not subnets.covers("127.0.0.1") and not subnets.covers("not an address")
    assert ctindex.Subnets(["10.236.0.0/24"]).within(subnets) and not subnets.within(ctindex.Subnets([]))


def test_a_watched_index_keeps_and_answers_only_its_subnets(rig):
    idx = rig.index
    rig.events.queue.append(message("new", "10.9.0.2", "10.9.0.3", sport=9))    # kept while all are
    assert len(idx.entries()) == 1
    idx.watch(["10.236.0.0/24"])                       # narrower than everything: no new seed
    assert idx.complete and idx._by_key == {}         # ... but what it no longer keeps is dropped
    rig.events.queue += [message("new", "10.236.0.2", "10.9.0.3", sport=1),      # a member's: kept
                         message("new", "10.9.0.2", "10.9.0.3", sport=2),        # nobody's: not kept
                         message("new", "127.0.0.1", "127.0.0.1", sport=3, reply_src="10.236.0.7")]
    assert origs(idx.entries({"10.236.0.2", "10.236.0.7"})) == {("10.236.0.2", "10.9.0.3", 1),
                                                                 ("127.0.0.1", "127.0.0.1", 3)}
    assert len(idx._by_key) == 2
    assert idx.entries({"10.9.0.3"}) is None           # not a watched address: the caller dumps
    assert idx.entries() is None                       # "every entry": not kept, the caller dumps
    seeds = idx.seeds
    rig.table[:] = [message("new", "10.238.0.2", "10.238.0.3", sport=4), DONE]
    idx.watch(["10.236.0.0/24", "10.238.0.0/24"])      # wider: entries it never kept; seeded again
    assert idx.entries({"10.236.0.2"}) is None
    wait_for(lambda: idx.seeds > seeds and idx.complete)
    assert origs(idx.entries({"10.238.0.2"})) == {("10.238.0.2", "10.238.0.3", 4)}


def test_entries_a_dump_found_are_discarded_by_their_pyroute2_tuple(rig):
    """claim() reads every entry: a dump, whose keys are pyroute2's tuples, not the index's."""
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple
    from plugin.kernel.conntrack import Entry, Tuple
    rig.events.queue.append(message("new", "10.236.0.2", "10.236.0.3", sport=1))
    kept = rig.index.entries({"10.236.0.2"})
    assert len(kept) == 1
    raw = kept[0].key
    dumped = Entry(4, Tuple("tcp", "10.236.0.2", "10.236.0.3", 1, 80), Tuple("tcp", "10.236.0.3", "10.236.0.2", 80, 1),
                   key=NFCTAttrTuple(**dict(zip(("family", "proto", "saddr", "daddr", "sport", "dport",
                                                 "icmp_id", "icmp_type", "icmp_code"), raw))))
    Flows(CountingKernel([dumped]), index=rig.index)._delete([dumped])
    assert rig.index.entries({"10.236.0.2"}) == []


def test_entries_are_discarded_only_when_every_deletion_succeeded(rig):
    """One that failed may still be in the kernel: it stays until its DESTROY message."""
    rig.events.queue += [message("new", "10.236.0.2", "10.236.0.3", sport=p) for p in (1, 2)]
    both = rig.index.entries({"10.236.0.2"})

    class HalfKernel(CountingKernel):
        def delete(self, entries):
            return len(entries) - 1
    Flows(HalfKernel([]), index=rig.index)._delete(both)
    assert len(rig.index.entries({"10.236.0.2"})) == 2
