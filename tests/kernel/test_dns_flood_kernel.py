"""Big DNS answers and answer floods through the lab's bridge, on every backend (U21-F3, F4).

The lab (``nsfixtures``) with a ``DnsRig`` (``dns_lab``): ``web`` learns
``*.big.test``, the ``ev`` members ``*.ev.test``; DNS to the server outside
is allowed. Answers to both are marked, budgeted per address and held in the
queue (``plugin.enforce.nftables.dnsmarks``, ``plugin.dns.queue``).

* An answer of ~6 KB (fragmented on the outside link, reassembled before
  the queue) and one of ~4.05 KB reach ``web`` and teach their addresses: the
  old reader (a 4,096-byte buffer) never gave such a bridged packet a verdict.
* 900 answers of 4.1 KB to each of five ``ev`` members (within each member's
  budget; 4,500 > the queue's MAX_LEN) all get a verdict; ``web``'s answer then
  passes (the old reader left them held for good: the queue stayed full).
* One ``ev`` member flooded past its budget: ``web`` still resolves every time,
  and the flooded member gets no more than its budget.

The floods are sent by a raw socket in the outside namespace from port 53 to
the flow each ``ev`` member opened (the reply direction of an allowed flow),
as a member's own server would. Cleanup: the rig stops, the lab goes.
"""
from __future__ import annotations

import json
import socket
import struct
import threading
import time

import dns.message
import pytest

from dns_lab import DNS4, DNS_RULES, DnsRig, connect, resolve
from nsfixtures import lab  # noqa: F401  (lab is a fixture)
from packets import ns_socket

pytestmark = pytest.mark.kernel

RULES = "web->dns(*.big.test):tcp/443 ev->dns(*.ev.test):tcp/443"
EVS = 5


@pytest.fixture
def flood_rig(lab):
    """(rig, web, evs): ``web`` and EVS members of segment ``ev``; the rig stops first."""
    web, *evs = lab.add(1 + EVS)
    lab.apply(f"{RULES} {DNS_RULES}", {web: "web", **{e: "ev" for e in evs}}, egress="deny")
    rig = DnsRig(lab, max_per_network=2048)
    rig.start()
    try:
        yield rig, web, evs
    finally:
        rig.close()


def _waiting(rig) -> int:
    """Packets of the rig's queue waiting for a verdict (/proc/net/netfilter/nfnetlink_queue)."""
    text = rig.lab.exec("cat", "/proc/net/netfilter/nfnetlink_queue").stdout
    rows = [row.split() for row in text.splitlines() if row.split()[:1] == ["5353"]]
    return int(rows[0][2]) if rows else 0


def _drained(rig, within: float) -> int:
    deadline = time.monotonic() + within
    while _waiting(rig) and time.monotonic() < deadline:
        time.sleep(0.1)
    return _waiting(rig)


def _open_flows(rig, evs) -> list:
    """A UDP flow from each ``ev`` member to the server (its query answered): (socket,
    (address, port) the server answers to: the host masquerades the flow)."""
    flows = []
    for ev in evs:
        s = ns_socket(ev.ns, socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, 33, 32 << 20)   # SO_RCVBUFFORCE: count all that arrive
        s.connect((DNS4, 53))
        s.send(dns.message.make_query("x.ev.test", "A").to_wire())
        s.settimeout(3)
        s.recv(4096)                                  # the NXDOMAIN answer: the flow is open
        flows.append((s, _reply_to(rig, ev.ip4, s.getsockname()[1])))
    return flows


def _reply_to(rig, src: str, sport: int) -> tuple:
    """The destination of the replies of the UDP flow ``src:sport`` -> DNS4:53 (conntrack)."""
    out = rig.lab.exec("conntrack", "-L", "-p", "udp", "--orig-src", src, "--orig-port-src",
                       str(sport), check=False).stdout
    (line,) = [row.split() for row in out.splitlines() if f"dst={DNS4}" in row]
    starts = [i for i, field in enumerate(line) if field.startswith("src=")]
    reply = dict(field.split("=", 1) for field in line[starts[1]:] if "=" in field)   # the 2nd tuple
    return reply["dst"], int(reply["dport"])


def _answer(dport: int, size: int) -> bytes:
    """A UDP header from port 53 (checksum 0: none, IPv4) and a DNS response of ``size``
    bytes that does not parse (a label of 255): cheap for the learner, teaches nothing."""
    body = struct.pack("!HHHHHH", 0x1234, 0x8180, 1, 0, 0, 0) + b"\xff" * (size - 12)
    return struct.pack("!HHHH", 53, dport, 8 + len(body), 0) + body


def _raw(rig) -> socket.socket:
    """A raw UDP socket in the outside namespace, sending from the server's address."""
    s = ns_socket(rig.lab.outside.ns, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
    s.bind((DNS4, 0))
    return s


def _received(sock) -> int:
    sock.setblocking(False)
    count = 0
    while True:
        try:
            sock.recv(65536)
        except BlockingIOError:
            return count
        count += 1


def test_answers_of_6_kb_and_4_kb_reach_the_client_and_are_learned(flood_rig):
    rig, web, _evs = flood_rig
    six = [f"10.238.{3 + i // 250}.{i % 250 + 1}" for i in range(375)]
    four = [f"10.238.6.{i + 1}" for i in range(250)]
    rig.server.add("six.big.test", "A", 300, *six)
    rig.server.add("four.big.test", "A", 300, *four)
    sizes = [len(rig.server.answer(dns.message.make_query(n, "A").to_wire()))
             for n in ("six.big.test", "four.big.test")]
    assert 6000 < sizes[0] < 6100 and 4050 - 28 < sizes[1] < 4100, sizes
    assert sorted(resolve(web, "six.big.test", timeout=5)) == sorted(six)
    assert sorted(resolve(web, "four.big.test", timeout=5)) == sorted(four)
    assert set(six) | set(four) <= {g.address for g in rig.learned()}
    assert connect(web, six[-1]) == "ok" and connect(web, four[0]) == "ok"
    assert _drained(rig, 2) == 0


def test_big_answers_past_the_queue_length_are_all_let_go_and_a_later_answer_passes(flood_rig):
    rig, web, evs = flood_rig
    rig.server.add("late.big.test", "A", 300, "10.238.7.1")
    flows = _open_flows(rig, evs)
    try:
        with _raw(rig) as raw:
            for _ in range(900):                 # within each member's burst of 1,000
                for _s, (addr, port) in flows:
                    raw.sendto(_answer(port, 4100), (addr, 0))
        assert _drained(rig, 60) == 0           # every answer got its verdict
        got = [_received(s) for s, _to in flows]
        assert sum(got) > 1000, got             # passed (the rest: the kernel's, queue full)
        assert resolve(web, "late.big.test") == ["10.238.7.1"]
        assert connect(web, "10.238.7.1") == "ok"
    finally:
        for s, _to in flows:
            s.close()


def test_a_flood_past_one_members_budget_does_not_stop_other_members_answers(flood_rig):
    rig, web, evs = flood_rig
    ((flood, (addr, port)),) = _open_flows(rig, evs[:1])
    stop, sent = threading.Event(), [0]

    def flooding():
        with _raw(rig) as raw:
            packet = _answer(port, 100)
            while not stop.is_set():
                raw.sendto(packet, (addr, 0))
                sent[0] += 1

    for i in range(30):
        rig.server.add(f"v{i}.big.test", "A", 300, f"10.238.8.{i + 1}")
    flooder = threading.Thread(target=flooding, daemon=True)
    start = time.monotonic()
    flooder.start()
    try:
        time.sleep(0.5)
        lost = []
        for i in range(30):
            try:
                assert resolve(web, f"v{i}.big.test", timeout=1.5) == [f"10.238.8.{i + 1}"]
            except Exception as exc:   # counted: the assertion below names them
                lost.append((i, repr(exc)))
            time.sleep(0.05)
    finally:
        stop.set()
        flooder.join(5)
        elapsed = time.monotonic() - start
    try:
        assert elapsed < 15 and not lost, (lost, sent[0], elapsed)
        got = _received(flood)
        drops = rig.service.call(lambda: rig.service.obj.marks.budget_drops())
        assert drops > 0
        listed = json.loads(rig.lab.nft("-j", "list", "counter", "inet", "secnet-dns", "budget").stdout)
        assert [o["counter"]["packets"] for o in listed["nftables"] if "counter" in o] == [drops]   # as nft reads it
        assert rig.service.call(lambda: rig.service.obj.status())["budget_drops"] == drops   # secnet status
        rig.service.repair()                                  # a reconcile pass rewrites the table
        assert rig.service.call(lambda: rig.service.obj.marks.budget_drops()) == drops
        assert sent[0] > 2 * (1000 + 500 * elapsed), (sent[0], elapsed)   # the flood was past it
        assert got <= 1000 + 500 * elapsed + 50, (got, sent[0], elapsed)  # ev got its budget only
        assert _drained(rig, 5) == 0
    finally:
        flood.close()


def test_a_repair_puts_the_table_back_and_keeps_the_budgets(flood_rig):
    """The reconciler's repair (every pass) rewrites the marking table: a flushed chain
    or a deleted table comes back, and a rewrite does not hand out new bursts."""
    rig, web, _evs = flood_rig
    budget = lambda: rig.lab.nft("list", "set", "inet", "secnet-dns", "budget4").stdout
    for i in range(3):
        rig.server.add(f"r{i}.big.test", "A", 300, f"10.238.9.{i + 1}")
    assert resolve(web, "r0.big.test") == ["10.238.9.1"]
    assert web.ip4 in budget()                               # web's answers have a budget
    rig.lab.nft("flush", "chain", "inet", "secnet-dns", "forward")
    rig.service.repair()
    assert web.ip4 in budget()                               # kept over the rewrite
    assert resolve(web, "r1.big.test") == ["10.238.9.2"] and connect(web, "10.238.9.2") == "ok"
    rig.lab.nft("delete", "table", "inet", "secnet-dns")
    rig.service.repair()
    assert resolve(web, "r2.big.test") == ["10.238.9.3"] and connect(web, "10.238.9.3") == "ok"
    assert rig.service.call(lambda: rig.service.obj.marks.budget_drops()) == 0
