"""After a rule change, which flows that learned DNS addresses admitted go on (U7-F1).

Contract (Allow rules): when a rule change is in force, no flow the new state
does not allow goes on; (DNS names): flows opened while an address was allowed
go on after it expires. So a learned flow goes on only while a dns(...) rule that
taught its address is still there -- not merely some dns(...) rule of its segment
on the same service. Pure: the store, the conntrack judge, the eBPF conntrack scan.
"""
import pytest

from plugin.kernel.marks import LEARNED_FLOW_MARK
from plugin.dns.store import LearnedStore
from plugin.enforce.ebpf import fqdn as ebpf_fqdn
from plugin.enforce.ebpf.maps import CT_KEY, CT_VAL, addr16
from plugin.kernel.conntrack import Entry, Tuple, allowed_by, dns_rule_by, holders, judge
from segmentation.compiler import compile_policy
from segmentation.fqdn import Address
from segmentation.model import Member
from segmentation.options import parse_network_options

WEB4, WEB6 = "10.0.0.2", "fd00::2"
API, LONG, SHARED = "198.51.100.5", "198.51.100.16", "198.51.100.30"
R_API = "web->dns(api.example.test):tcp/443"
R_LONG = "web->dns(long.example.test):tcp/443"
TWO = f"{R_API} {R_LONG}"


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class P:  # a port as the reconciler has it
    def __init__(self, segment, ipv4, ipv6=None):
        self.segment, self.ipv4, self.ipv6, self.quarantine, self.published = segment, ipv4, ipv6, None, ()


HELD = holders([P("web", WEB4, WEB6)])


def compiled(rules: str):
    options = parse_network_options({"secnet.allow": rules, "secnet.egress": "deny"})
    return compile_policy(options, [Member("a", "web", WEB4, WEB6)])


def store_with(policy, taught: dict) -> LearnedStore:
    """A store that learned ``taught`` (rule -> [addresses]) for segment web."""
    store = LearnedStore(min_ttl=1, clock=Clock())
    by_rule = {f.rule: f for f in policy.fqdns}
    for rule, addresses in taught.items():
        pairs = [(by_rule[rule], Address(a, 4, 100, (rule,))) for a in addresses]
        store.commit(store.plan("n1", pairs))
    return store


def learned_flow(dst: str, port: int = 443) -> Entry:
    return Entry(4, Tuple("tcp", WEB4, dst, 40000, port), Tuple("tcp", dst, "192.0.2.1", port, 40000),
                 0, LEARNED_FLOW_MARK | 1)


def after(rules: str, store: LearnedStore, flow: Entry):
    """The judge after the policy became ``rules`` (the store told first, as the reconciler does)."""
    policy = compiled(rules)
    store.forget("n1", {(f.identity, f.rule) for f in policy.fqdns})
    learned = {("web", rule): addrs for (_identity, rule), addrs in store.current("n1").items()}
    return judge(flow, HELD, allowed_by(policy, learned), lambda a: False,
                 dns_rule_by(policy, store.admitted("n1")))


def test_the_store_remembers_what_taught_an_address_after_expiry_and_removal():
    policy = compiled(TWO)
    store = store_with(policy, {R_API: [API, SHARED], R_LONG: [LONG, SHARED]})
    web = policy.identities["web"]
    assert store.admitted("n1")[(web, SHARED)] == {(R_API, "tcp", 443, 443), (R_LONG, "tcp", 443, 443)}
    store.clock.now += 200                                  # every answer expired
    assert store.current("n1") == {}
    assert store.admitted("n1")[(web, LONG)] == {(R_LONG, "tcp", 443, 443)}
    store.forget("n1", {(web, R_API)})                      # a rule removed: still remembered
    assert (web, LONG) in store.admitted("n1")
    store.forget("n1")                                      # the network is gone: nothing
    assert store.admitted("n1") == {}


def test_the_memory_is_bounded_per_network_oldest_first():
    policy = compiled(R_LONG)
    store = LearnedStore(min_ttl=1, max_per_network=2, clock=Clock())
    (entry,) = policy.fqdns
    for i in range(4):
        store.commit(store.plan("n1", [(entry, Address(f"198.51.100.{i + 1}", 4, 1, ("x",)))]))
        store.clock.now += 2
    store.expire()
    assert {a for _i, a in store.admitted("n1")} == {"198.51.100.3", "198.51.100.4"}


@pytest.mark.parametrize("expired", [False, True])
def test_removing_one_of_two_rules_on_a_service_cuts_only_its_flows(expired):
    store = store_with(compiled(TWO), {R_API: [API, SHARED], R_LONG: [LONG, SHARED]})
    if expired:
        store.clock.now += 200
    assert after(R_API, store, learned_flow(LONG)) == "denied"    # only the removed rule taught it
    assert after(R_API, store, learned_flow(API)) is None         # its rule is there (expired or not)
    assert after(R_API, store, learned_flow(SHARED)) is None      # the remaining rule taught it too


def test_an_unrelated_edit_keeps_every_learned_flow_and_removing_all_cuts_them():
    store = store_with(compiled(TWO), {R_API: [API], R_LONG: [LONG]})
    store.clock.now += 200
    assert after(f"{TWO} web->8.8.8.8:udp/53", store, learned_flow(LONG)) is None
    assert after("web->8.8.8.8:udp/53", store, learned_flow(API)) == "denied"


def test_a_readded_rule_keeps_nothing_it_did_not_teach_again_and_other_services_stay_apart():
    store = store_with(compiled(TWO), {R_LONG: [LONG]})
    assert after(R_API, store, learned_flow(LONG)) == "denied"
    store = store_with(compiled(TWO), {R_LONG: [LONG]})
    # a flow on another port than the rules name is no rule's to keep
    assert after(TWO, store, learned_flow(LONG, port=80)) == "denied"


def test_without_a_record_any_dns_rule_of_the_service_keeps_the_flow():
    """A restarted daemon knows only the answers still in force: the old rule."""
    store = LearnedStore(min_ttl=1, clock=Clock())
    assert after(R_API, store, learned_flow(LONG)) is None
    assert after("web->dns(api.example.test):tcp/80", store, learned_flow(LONG)) == "denied"


# --- eBPF: the program's own conntrack ----------------------------------------------------
def ct(src, dst, sport, dport, flags, kind=ebpf_fqdn.KIND_EGRESS, proto=6):
    key = CT_KEY.pack(addr16(src), addr16(dst), sport, dport, proto, 6 if ":" in src else 4, 0)
    return key, CT_VAL.pack(1, 7, flags, kind, 0, 0, 0, 0, b"\0" * 6, b"\0" * 6)


def test_ebpf_ends_the_learned_flows_no_rule_keeps_in_both_directions():
    policy = compiled(R_API)
    store = store_with(compiled(TWO), {R_API: [API], R_LONG: [LONG]})
    store.forget("n1", {(f.identity, f.rule) for f in policy.fqdns})
    fq = ebpf_fqdn.CT_FQDN
    entries = [ct(WEB4, LONG, 40000, 443, fq), ct(LONG, WEB4, 443, 40000, fq | ebpf_fqdn.CT_REPLY),
               ct(WEB4, API, 40001, 443, fq), ct(WEB4, LONG, 40002, 443, 0),      # not learned
               ct("10.0.0.9", LONG, 40003, 443, fq)]                              # no member
    doomed = ebpf_fqdn.learned_flows_to_end(entries, {WEB4: "web"}, allowed_by(policy),
                                            dns_rule_by(policy, store.admitted("n1")))
    assert doomed == [(entries[0][0], entries[1][0])]


def test_ebpf_reads_its_conntrack_only_when_a_removed_rule_taught_an_address():
    two, one = compiled(TWO), compiled(R_API)
    store = store_with(two, {R_API: [API, SHARED], R_LONG: [LONG, SHARED]})
    web = two.identities["web"]
    assert ebpf_fqdn.taught_by_removed(two, store.admitted("n1")) == set()      # an unrelated edit
    assert ebpf_fqdn.taught_by_removed(one, store.admitted("n1")) == {(web, LONG), (web, SHARED)}
    assert ebpf_fqdn.taught_by_removed(one, None) == set()                      # nothing known
    fq = ebpf_fqdn.CT_FQDN
    entries = [ct(WEB4, LONG, 40000, 443, fq), ct(WEB4, "198.51.100.99", 40001, 443, fq)]
    everything = ebpf_fqdn.learned_flows_to_end(entries, {WEB4: "web"}, allowed_by(one),
                                                dns_rule_by(one, store.admitted("n1")))
    assert [k for k, _r in everything] == [entries[0][0]]   # .99: no record, kept (any rule on 443)
    only = ebpf_fqdn.learned_flows_to_end(entries, {WEB4: "web"}, lambda *a: False, lambda *a: False,
                                          suspects={("web", SHARED)})
    assert only == []                                        # not a suspect: not judged


def test_once_their_flows_ended_what_removed_rules_taught_is_forgotten():
    two, one = compiled(TWO), compiled(R_API)
    store = store_with(two, {R_API: [API], R_LONG: [LONG]})
    store.clock.now += 200
    store.forget("n1", {(f.identity, f.rule) for f in one.fqdns})
    store.settle("n1", {(f.identity, f.rule) for f in one.fqdns})
    web = one.identities["web"]
    assert store.admitted("n1") == {(web, API): {(R_API, "tcp", 443, 443)}}   # expired, rule still there
    assert ebpf_fqdn.taught_by_removed(one, store.admitted("n1")) == set()    # later edits read nothing
