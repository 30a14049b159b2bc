"""plugin.dns without the kernel: packets, answers, the store, the learner, nft text."""
import ipaddress
import struct

import dns.message
import dns.rrset
import pytest

from plugin.config import Settings
from plugin.dns import answers
from plugin.enforce.fqdn import Grant
from plugin.dns.learner import DnsLearner, Target
from plugin.dns.store import MAX_TTL, LearnedStore, settings_from_env
from plugin.dns.tcpstream import TcpStreams
from plugin.enforce.nftables import fqdn as nft
from segmentation.fqdn import Address
from segmentation.policymap import FqdnEntry

WEB = 257
RULE = "web->dns(api.example.test):tcp/443"
ENTRY = FqdnEntry(WEB, "api.example.test", "tcp", 443, 443, RULE)
WILD = FqdnEntry(WEB, "*.cdn.test", "any", 0, 0, "web->dns(*.cdn.test)")


def response(qname="api.example.test", qtype="A", records=(), rcode=0) -> bytes:
    msg = dns.message.make_response(dns.message.make_query(qname, qtype))
    for name, ttl, rtype, value in records:
        msg.answer.append(dns.rrset.from_text(name, ttl, "IN", rtype, value))
    msg.set_rcode(rcode)
    return msg.to_wire()


def ip4_udp(payload: bytes, src="10.228.0.53", dst="10.227.0.10", sport=53, dport=40000) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                      ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed)
    return hdr + udp


def ip6_tcp(payload: bytes, src="fd00:228::53", dst="fd00:227::10", seq=1, flags=0x18) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", 53, 40000, seq, 1, 5 << 4, flags, 1000, 0, 0) + payload
    hdr = struct.pack("!IHBB16s16s", 6 << 28, len(tcp), 6, 64, ipaddress.ip_address(src).packed,
                      ipaddress.ip_address(dst).packed)
    return hdr + tcp


# --- answers ---------------------------------------------------------------------

def test_udp_answer_with_cname_chain():
    wire = response("www.example.test", records=[("www.example.test.", 300, "CNAME", "e.cdn.test."),
                                                 ("e.cdn.test.", 30, "A", "10.229.0.7")])
    dgram = answers.datagram(ip4_udp(wire))
    assert (dgram.family, dgram.src, dgram.dst, dgram.sport) == (4, "10.228.0.53", "10.227.0.10", 53)
    (found,) = [a for m in answers.messages(dgram) for a in answers.addresses(m)]
    assert found == Address("10.229.0.7", 4, 30, ("www.example.test", "e.cdn.test"))


def test_tcp_answers_are_put_back_together_from_segments():
    wire = response(qtype="AAAA", records=[("api.example.test.", 60, "AAAA", "fd00:229::5")])
    stream = struct.pack("!H", len(wire)) + wire
    streams = TcpStreams()

    def feed(data, seq, flags=0x18):
        return streams.messages(answers.datagram(ip6_tcp(data, seq=seq, flags=flags)))

    assert feed(b"", 99, flags=0x12) == []                        # SYN-ACK: the stream starts at 100
    assert feed(stream[:10], 100) == []
    assert feed(stream[:10], 100) == []                           # a retransmission adds nothing
    assert feed(stream[5:20], 105) == []                          # ... nor does an overlap twice
    (done,) = feed(stream[20:] + stream[:3], 120)                 # the rest, and the next one begins
    assert [a.address for a in answers.addresses(done)] == ["fd00:229::5"]
    assert feed(stream[3:], 100 + len(stream) + 3) == [wire]
    assert feed(stream, 100 + 5 * len(stream)) == [] and len(streams) == 0   # a gap: forgotten
    assert feed(stream, 7) == []                                  # no SYN seen: not trusted
    feed(b"", 1, flags=0x12)
    feed(b"", 2, flags=0x11)                                      # FIN
    assert len(streams) == 0


def test_tcp_streams_are_bounded():
    streams = TcpStreams(max_streams=2)
    for port in range(3):
        packet = bytearray(ip6_tcp(b"", seq=1, flags=0x12))
        packet[42:44] = struct.pack("!H", 50000 + port)           # the client's port
        streams.messages(answers.datagram(bytes(packet)))
    assert len(streams) == 2


@pytest.mark.parametrize("wire", [
    dns.message.make_query("api.example.test", "A").to_wire(),                      # a query
    response(records=[("api.example.test.", 60, "A", "10.229.0.5")], rcode=3),     # NXDOMAIN
    b"\x00\x01garbage",
    response(records=[("other.test.", 60, "A", "10.229.0.5")]),                    # off the chain
], ids=["query", "nxdomain", "garbage", "off-chain"])   # fixed ids: the messages' ids are random
def test_non_answers_teach_nothing(wire):
    assert answers.addresses(wire) == []


def test_fragments_and_other_protocols_are_not_parsed():
    packet = bytearray(ip4_udp(b"x"))
    packet[6] = 0x20                                                   # more fragments
    assert answers.datagram(bytes(packet)) is None
    packet = bytearray(ip4_udp(b"x"))
    packet[9] = 1                                                      # icmp
    assert answers.datagram(bytes(packet)) is None
    assert answers.datagram(b"") is None


# --- the store -------------------------------------------------------------------

class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def found(address="10.229.0.5", ttl=300, names=("api.example.test",)):
    return Address(address, 6 if ":" in address else 4, ttl, names)


def learn(store, *pairs, network="n1"):
    plan = store.plan(network, pairs)
    store.commit(plan)
    return plan


def test_ttl_floor_and_cap():
    clock = Clock()
    store = LearnedStore(min_ttl=60, clock=clock)
    plan = learn(store, (ENTRY, found(ttl=5)), (ENTRY, found("10.229.0.6", ttl=10 ** 9)))
    assert sorted(g.expires - clock.now for g in plan.grants) == [60, MAX_TTL]
    assert store.current("n1")[(WEB, RULE)]["10.229.0.5"].expires == clock.now + 60


def test_refresh_only_writes_when_it_extends_and_expiry_drops_entries():
    clock = Clock()
    store = LearnedStore(min_ttl=1, clock=clock)
    assert len(learn(store, (ENTRY, found(ttl=100))).grants) == 1
    assert learn(store, (ENTRY, found(ttl=50))).grants == []          # the element outlives it
    assert store.current("n1")[(WEB, RULE)]["10.229.0.5"].expires == clock.now + 100   # never shortened
    clock.now += 10
    assert len(learn(store, (ENTRY, found(ttl=100))).grants) == 1
    clock.now += 101
    assert store.current("n1") == {} and len(store) == 0


def test_bounds_per_network_and_in_total_refuse_new_but_refresh_old():
    store = LearnedStore(max_per_network=2, max_total=3, clock=Clock())
    learn(store, (ENTRY, found("10.229.0.1")), (ENTRY, found("10.229.0.2")))
    plan = learn(store, (ENTRY, found("10.229.0.3")), (ENTRY, found("10.229.0.1", ttl=900)))
    assert plan.refused == [(RULE, "10.229.0.3")] and len(plan.grants) == 1
    learn(store, (ENTRY, found("10.229.0.9")), network="n2")
    assert learn(store, (ENTRY, found("10.229.0.8")), network="n3").refused == [(RULE, "10.229.0.8")]
    assert store.refused_total == 2 and len(store) == 3


def test_one_segment_uses_only_its_share_of_the_networks_bound():
    """U21-F5: a segment whose server answers with many addresses is refused at its own
    share; another segment of the network still learns, and the share comes back as the
    first segment's entries expire."""
    api = FqdnEntry(WEB + 1, "*.cdn.test", "any", 0, 0, "api->dns(*.cdn.test)")
    clock = Clock()
    store = LearnedStore(min_ttl=1, max_per_segment=2, max_per_network=10, clock=clock)
    assert store.max_per_segment == 2
    plan = learn(store, (WILD, found("10.229.0.1", ttl=10)), (WILD, found("10.229.0.2", ttl=100)),
                 (WILD, found("10.229.0.3")))
    assert plan.refused == [(WILD.rule, "10.229.0.3")]
    assert learn(store, (WILD, found("10.229.0.4"))).refused == [(WILD.rule, "10.229.0.4")]
    assert learn(store, (WILD, found("10.229.0.1", ttl=50))).refused == []    # refreshed
    assert learn(store, (api, found("10.229.0.4")), (api, found("10.229.0.5"))).refused == []
    assert store.count("n1") == 4
    clock.now += 60                                    # 10.229.0.1 (50 s) expired
    assert learn(store, (WILD, found("10.229.0.6"))).refused == []
    store.forget("n1")
    assert learn(store, (WILD, found("10.229.0.7")), (WILD, found("10.229.0.8"))).refused == []
    assert LearnedStore(max_per_network=3).max_per_segment == 3      # never above the network's
    assert settings_from_env({"SECNET_DNS_MAX_PER_SEGMENT": "7"})["max_per_segment"] == 7
    with pytest.raises(ValueError, match="SECNET_DNS_MAX_PER_SEGMENT"):
        settings_from_env({"SECNET_DNS_MAX_PER_SEGMENT": "0"})


def test_one_element_for_two_rules_lives_as_long_as_the_longest():
    other = FqdnEntry(WEB, "*.example.test", "tcp", 443, 443, "web->dns(*.example.test):tcp/443")
    clock = Clock()
    store = LearnedStore(min_ttl=1, clock=clock)
    learn(store, (ENTRY, found(ttl=100)), (other, found(ttl=100)))
    learn(store, (other, found(ttl=500)))
    revoke, regrant = store.forget("n1", {(WEB, RULE)})                # the wildcard rule is gone
    assert revoke == [] and [g.expires - clock.now for g in regrant] == [100]
    revoke, regrant = store.forget("n1", set())
    assert revoke == [(WEB, "10.229.0.5", "tcp", 443, 443)] and regrant == []
    assert len(store) == 0


def test_an_element_is_written_with_the_tag_of_the_rules_that_taught_it():
    """U11-F3: the tag names the teaching rules; a second rule teaching the element writes
    it again under a new tag (also when the expiry does not grow), a removed one too."""
    other = FqdnEntry(WEB, "*.example.test", "tcp", 443, 443, "web->dns(*.example.test):tcp/443")
    store = LearnedStore(min_ttl=1, clock=Clock())
    (one,) = learn(store, (ENTRY, found(ttl=100))).grants
    (both,) = learn(store, (other, found(ttl=50))).grants
    assert both.expires == one.expires, "the element keeps the longer expiry"
    tags = store.tags("n1")
    teacher = (WEB, "tcp", 443, 443)
    assert tags[one.tag] == {teacher + (RULE,)} and tags[both.tag] == {teacher + (RULE,), teacher + (other.rule,)}
    assert learn(store, (ENTRY, found(ttl=10)), (other, found(ttl=10))).grants == []   # nothing new
    assert learn(store, (ENTRY, found("10.229.0.6")), network="n2").grants[0].tag == 1   # per network
    _revoke, (regrant,) = store.forget("n1", {(WEB, RULE)})
    assert regrant.tag == one.tag, "the wildcard rule is gone: its tag goes from the element"
    assert [g.tag for g in store.grants("n1")] == [one.tag]
    store.forget("n1")
    assert store.tags("n1") == {}


def test_restore_adopts_the_kernels_tags():
    clock = Clock()
    store = LearnedStore(min_ttl=1, clock=clock)
    grant = Grant(WEB, "10.229.0.5", 4, "tcp", 443, 443, clock.now + 30, "api.example.test", tag=7)
    assert store.restore("n1", [grant], [ENTRY, WILD]) == 1
    assert store.tags("n1") == {7: {(WEB, "tcp", 443, 443, RULE)}}
    assert learn(store, (ENTRY, found(ttl=10))).grants == [], "the element holds that tag already"
    (new,) = learn(store, (ENTRY, found("10.229.0.6"))).grants
    assert new.tag == 7, "the same teachers, the same tag"


def test_restore_attributes_elements_by_service_and_name():
    clock = Clock()
    store = LearnedStore(clock=clock)
    grants = [Grant(WEB, "10.229.0.5", 4, "tcp", 443, 443, clock.now + 30, "api.example.test"),
              Grant(WEB, "10.229.0.7", 4, "any", 0, 0, clock.now + 30, "e.cdn.test"),
              Grant(WEB, "10.229.0.8", 4, "any", 0, 0, clock.now - 1, "x.cdn.test")]
    assert store.restore("n1", grants, [ENTRY, WILD]) == 2
    assert set(store.current("n1")) == {(WEB, RULE), (WEB, WILD.rule)}


def test_settings_from_env():
    assert settings_from_env({"SECNET_DNS_MIN_TTL": "2"})["min_ttl"] == 2
    assert settings_from_env({})["min_ttl"] == 60
    assert settings_from_env({"SECNET_DNS_MAX_TOTAL": " 100 "})["max_total"] == 100


@pytest.mark.parametrize("name,value", [
    ("SECNET_DNS_QUEUE", "five"), ("SECNET_DNS_QUEUE", "65536"), ("SECNET_DNS_QUEUE", "-1"),
    ("SECNET_DNS_QUEUE", "5353.0"), ("SECNET_DNS_MIN_TTL", "0"), ("SECNET_DNS_MIN_TTL", "1s"),
    ("SECNET_DNS_MAX_PER_NETWORK", "0"), ("SECNET_DNS_MAX_TOTAL", "lots"), ("SECNET_DNS", "maybe")])
def test_a_bad_dns_setting_stops_the_start_with_one_line_naming_it(name, value):
    with pytest.raises(ValueError) as err:
        Settings.from_env({name: value})
    message = str(err.value)
    assert name in message and repr(value) in message and "\n" not in message


def test_the_cli_says_which_setting_is_bad_in_one_line(monkeypatch, capsys):
    from plugin.cli.main import main
    monkeypatch.setenv("SECNET_DNS_QUEUE", "abc")
    assert main(["status"]) == 1
    assert capsys.readouterr().err == "secnet: invalid SECNET_DNS_QUEUE 'abc': allowed a whole number 0..65535\n"


def test_dns_settings_are_read_once_dns_is_on():
    assert Settings.from_env({"SECNET_DNS_QUEUE": "7"}).dns_queue == 7
    assert Settings.from_env({}).dns_queue == 5353
    # with DNS learning off its store settings are not used, so not checked
    assert Settings.from_env({"SECNET_DNS": "0", "SECNET_DNS_MIN_TTL": "x"}).dns is False


# --- the learner -------------------------------------------------------------------

class FakeTargets:
    def target(self, outdev, address):
        return {"10.227.0.10": Target("n1", WEB, (ENTRY, WILD)), "10.227.0.11": Target("n1", 258)}.get(address)


class FakeDatapath:
    def __init__(self, fail=False):
        self.calls, self.fail = [], fail

    def allow(self, network_id, grants):
        if self.fail:
            raise OSError("kernel said no")
        self.calls.append((network_id, list(grants)))


def test_learner_allows_before_returning_and_ignores_the_uninterested():
    datapath, store = FakeDatapath(), LearnedStore(clock=Clock())
    learner = DnsLearner(FakeTargets(), datapath, store)
    wire = response(records=[("api.example.test.", 60, "A", "10.229.0.5")])
    learner.on_packet(ip4_udp(wire, dst="10.227.0.11"))              # segment without DNS rules
    learner.on_packet(ip4_udp(wire, sport=5353))                     # not from port 53
    assert datapath.calls == []
    learner.on_packet(ip4_udp(wire))
    ((net, grants),) = datapath.calls
    assert net == "n1" and [(g.address, g.proto, g.lo) for g in grants] == [("10.229.0.5", "tcp", 443)]
    assert learner.learned == 1


def test_learner_failure_teaches_nothing_and_does_not_raise():
    store = LearnedStore(clock=Clock())
    learner = DnsLearner(FakeTargets(), FakeDatapath(fail=True), store)
    learner.on_packet(ip4_udp(response(records=[("api.example.test.", 60, "A", "10.229.0.5")])))
    assert learner.failures == 1 and store.current("n1") == {}


# --- nft text ----------------------------------------------------------------------

@pytest.mark.parametrize("grant, target, text", [
    (Grant(WEB, "fd00:229::5", 6, "icmp", 0, 0, 1060.4, 'we"ird.test'), "fqdn6_proto",
     '257 . fd00:229::5 . 58 timeout 61s comment "we?ird.test" : 0'),
    (Grant(WEB, "10.229.0.5", 4, "tcp", 443, 443, 1001.0, "a.test", tag=7), "fqdn4_port",
     '257 . 10.229.0.5 . 6 . 443 timeout 1s comment "a.test" : 7'),
    (Grant(WEB, "10.229.0.5", 4, "tcp", 0, 65535, 1001.0, "a.test"), "fqdn4_proto",
     '257 . 10.229.0.5 . 6 timeout 1s comment "a.test" : 0'),
    (Grant(WEB, "10.229.0.5", 4, "any", 0, 0, 1001.0, "a.test"), "fqdn4_any",
     '257 . 10.229.0.5 timeout 1s comment "a.test" : 0'),
    (Grant(WEB, "10.229.0.5", 4, "udp", 1000, 2000, 1000.5, "A.test"), "fqdn4_range",
     '257 . 10.229.0.5 . 17-17 . 1000-2000 timeout 1s comment "a.test" : 0'),
])
def test_element_text_per_set_kind(grant, target, text):
    assert nft._target("t", grant) == f"inet t {target}"
    assert nft.element(grant, 1000.0) == text


@pytest.mark.parametrize("kind, fields, proto, lo, hi", [
    ("port", [257, "10.229.0.5", "tcp", 443], "tcp", 443, 443),
    ("range", [257, "10.229.0.5", {"range": [17, 17]}, {"range": [1, 2]}], "udp", 1, 2),
    ("proto", [257, "10.229.0.5", "tcp"], "tcp", 0, 65535),
    ("proto", [257, "10.229.0.5", 58], "icmp", 0, 0),
    ("any", [257, "10.229.0.5"], "any", 0, 0),
])
def test_listed_elements_parse_back(kind, fields, proto, lo, hi):
    elem = {"elem": {"val": {"concat": fields}, "timeout": 60, "expires": 30, "comment": "a.test"}}
    g = nft._parse_elem(4, kind, elem, 1000.0)
    assert (g.identity, g.proto, g.lo, g.hi, g.expires, g.name) == (257, proto, lo, hi, 1030.0, "a.test")
    assert g.learned == 970.0
    assert nft._parse_elem(4, kind, {"elem": {"val": {"concat": fields[:1]}}}, 1000.0) is None
    assert g.tag == 0 and nft._parse_elem(4, kind, [elem, 9], 1000.0).tag == 9   # a map's [key, tag]


# --- the store against a model ---------------------------------------------------------

from hypothesis import given, settings, strategies as st  # noqa: E402

RULES = [FqdnEntry(WEB, "a.test", "tcp", 443, 443, "r1"), FqdnEntry(WEB, "a.test", "tcp", 443, 443, "r2"),
         FqdnEntry(258, "a.test", "any", 0, 0, "r3")]
STEPS = st.one_of(
    st.tuples(st.just("learn"), st.sampled_from(RULES), st.sampled_from(["10.229.0.1", "10.229.0.2", "fd00::1"]),
              st.integers(0, 200)),
    st.tuples(st.just("wait"), st.integers(0, 150)),
    st.tuples(st.just("forget"), st.sets(st.sampled_from([(r.identity, r.rule) for r in RULES]))),
)


@settings(max_examples=200)
@given(st.lists(STEPS, max_size=30))
def test_store_matches_a_model_and_its_elements_outlive_no_entry(steps):
    clock = Clock()
    store = LearnedStore(min_ttl=60, max_per_network=4, max_total=4, clock=clock)
    model: dict = {}            # (identity, rule, address) -> expires
    kernel: dict = {}           # element key -> expires (what the datapath holds)
    for step in steps:
        if step[0] == "learn":
            _, entry, address, ttl = step
            plan = store.plan("n", [(entry, found(address, ttl))])
            for g in plan.grants:
                kernel[g.key] = g.expires
            store.commit(plan)
            key = (entry.identity, entry.rule, address)
            live = {k for k, e in model.items() if e > clock.now}
            if key in live:
                model[key] = max(model[key], clock.now + max(ttl, 60))
            elif len(live) < 4:
                model[key] = clock.now + max(ttl, 60)
        elif step[0] == "wait":
            clock.now += step[1]
        else:
            revoke, regrant = store.forget("n", step[1])
            for k in revoke:
                kernel.pop(k, None)
            for g in regrant:
                kernel[g.key] = g.expires
            model = {k: e for k, e in model.items() if (k[0], k[1]) in step[1]}
        live = {k: e for k, e in model.items() if e > clock.now}
        current = store.current("n")
        assert {(i, r, a): l.expires for (i, r), addrs in current.items() for a, l in addrs.items()} == live
        for (identity, rule, address), expires in live.items():    # the kernel allows every live entry
            entry = next(e for e in RULES if e.rule == rule)
            element = (identity, address, entry.proto, entry.lo, entry.hi)
            assert kernel.get(element, 0) >= expires
        held = {(i, a, e.proto, e.lo, e.hi) for (i, r, a) in live for e in RULES if e.rule == r}
        assert {k for k, e in kernel.items() if e > clock.now} <= held   # nothing outlives its entries


def test_grants_give_one_element_each_with_its_longest_expiry():
    other = FqdnEntry(WEB, "*.example.test", "tcp", 443, 443, "web->dns(*.example.test):tcp/443")
    clock = Clock()
    store = LearnedStore(min_ttl=1, clock=clock)
    learn(store, (ENTRY, found(ttl=100)), (other, found(ttl=300)), (WILD, found("10.229.0.7", ttl=50)))
    assert sorted((g.address, g.expires - clock.now) for g in store.grants("n1")) == [
        ("10.229.0.5", 300), ("10.229.0.7", 50)]
    clock.now += 60
    assert [g.address for g in store.grants("n1")] == ["10.229.0.5"]
