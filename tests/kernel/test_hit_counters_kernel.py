"""``pol_port``'s elements carry no counter: the one-port rules are counted in the dynamic
set ``hit_port`` (``elements.COUNTED_IN``), which the datapath fills with a rule's first
matching packet. A policy edit then adds and deletes plain elements (a per-element counter
was a per-CPU allocation in the kernel for each, ~35 % of a 10,000-rule ``policy set``'s
transaction), and the counters still name the rule: a rule counts what it allowed, a rule
removed and added again counts from zero, and tables of the format before (FORMAT 15:
``pol_port`` with counters, no ``hit_port``) are counted from their own elements until a
repair rewrites them in this format. Every test here is ``[nftables]`` only."""
from __future__ import annotations

import pytest

from nsfixtures import NET_ID, InNamespace, lab, only  # noqa: F401  (lab is a fixture)
from packets import probe_tcp
from plugin.enforce.nftables import NftBackend
from segmentation.policymap import PolicyEntry

pytestmark = [pytest.mark.kernel, only("nftables")]
RULE = "web->api:tcp/8080"


def _ids(lab) -> tuple:
    ids = lab.allocator.identities(NET_ID)
    return ids["web"], ids["api"]


def _allowed(lab, port: int) -> int:
    """Packets the counters give rule ``web->api:tcp/PORT``."""
    w, a = _ids(lab)
    key = PolicyEntry(w, a, "tcp", port, port, f"web->api:tcp/{port}").key
    return lab.counters().allowed.get(key, (0, 0))[0]


def _set(lab, name: str) -> str:
    return lab.nft("list", "set", "inet", lab.table, name).stdout


def test_one_port_rules_are_counted_in_the_hit_set_only_once_they_see_traffic(lab):
    web, api = lab.add(2)
    lab.apply(" ".join(f"web->api:tcp/{p}" for p in (8080, 9000, 9001)), {web: "web", api: "api"},
              intra="deny")
    assert "counter" not in _set(lab, "pol_port")            # plain elements: no counter each
    assert "elements" not in _set(lab, "hit_port")           # nothing matched yet
    assert [probe_tcp(web, api.ip4, 8080) for _ in range(2)] == ["ok", "ok"]
    assert probe_tcp(web, api.ip4, 5432) == "timeout"
    hits = _set(lab, "hit_port")
    assert "8080 counter packets" in hits and "9000" not in hits, hits
    assert _allowed(lab, 8080) >= 2 and _allowed(lab, 9000) == 0
    assert lab.drift() == []                                  # the hit set is the datapath's


def test_a_rule_removed_and_added_again_counts_from_zero(lab):
    web, api = lab.add(2)
    lab.apply(RULE, {web: "web", api: "api"}, intra="deny")
    assert [probe_tcp(web, api.ip4, 8080) for _ in range(2)] == ["ok", "ok"]
    assert _allowed(lab, 8080) >= 2
    lab.update("web->api:tcp/9000")                            # its hit goes with its element
    assert "8080" not in _set(lab, "hit_port")
    assert probe_tcp(web, api.ip4, 8080) == "timeout"
    lab.update(f"{RULE} web->api:tcp/9000")
    assert _allowed(lab, 8080) == 0
    assert probe_tcp(web, api.ip4, 8080) == "ok"
    assert _allowed(lab, 8080) >= 1
    assert lab.drift() == []


def test_a_hit_left_behind_is_deleted_when_its_rule_comes_back(lab):
    """A hit made after the edit's read of the hit set (here: put there by hand) by a rule
    the edit removes stays until the next edit of the set; one that adds the rule again
    deletes it first, so the rule still counts from zero."""
    web, api = lab.add(2)
    lab.apply("web->api:tcp/9000", {web: "web", api: "api"}, intra="deny")
    w, a = _ids(lab)
    lab.nft("add", "element", "inet", lab.table, "hit_port", f"{{ {w:#x} . {a:#x} . tcp . 8080 }}")
    assert _allowed(lab, 8080) == 0                            # not in force: not reported
    lab.update(f"{RULE} web->api:tcp/9000")
    assert "8080" not in _set(lab, "hit_port")
    assert probe_tcp(web, api.ip4, 8080) == "ok"
    assert _allowed(lab, 8080) >= 1


def _format_15(lab) -> None:
    """The network's inet table as FORMAT 15 had it: ``pol_port`` with a counter per
    element, looked up by one rule, and no ``hit_port``."""
    listing = lab.nft("-a", "list", "chain", "inet", lab.table, "east_west").stdout
    handles = [line.rsplit("# handle ", 1)[1].strip() for line in listing.splitlines() if "@pol_port" in line]
    held = _set(lab, "pol_port")
    elements = held[held.index("elements = {") + len("elements = {"):held.index("}", held.index("elements"))]
    for handle in handles:
        lab.nft("delete", "rule", "inet", lab.table, "east_west", "handle", handle)
    for name in ("pol_port", "hit_port"):
        lab.nft("delete", "set", "inet", lab.table, name)
    lab.nft("add", "set", "inet", lab.table, "pol_port",
            "{ type mark . mark . inet_proto . inet_service; counter; }")
    lab.nft("add", "element", "inet", lab.table, "pol_port", "{", elements.strip(), "}")
    lab.nft("insert", "rule", "inet", lab.table, "east_west",
            "meta", "mark", ".", "ct", "mark", ".", "meta", "l4proto", ".", "th", "dport", "@pol_port",
            "goto", "pass")


def test_tables_of_the_format_before_are_counted_then_rewritten(lab):
    web, api = lab.add(2)
    lab.apply(RULE, {web: "web", api: "api"}, intra="deny")
    _format_15(lab)
    assert "counter" in _set(lab, "pol_port")
    lab.backend.shutdown()                                      # a restart: this build's daemon
    lab.backend = InNamespace(lab.host, NftBackend)
    problems = lab.drift()
    assert any("east_west" in p or "hit_port" in p or "pol_port" in p for p in problems), problems
    lab.backend.apply_network(lab.net, lab.policy, lab.ports())  # the first pass: not adopted
    assert lab.drift() == []
    assert "counter" not in _set(lab, "pol_port")
    assert [probe_tcp(web, api.ip4, p) for p in (8080, 5432)] == ["ok", "timeout"]
    assert _allowed(lab, 8080) >= 1


def test_an_older_table_counts_from_its_own_elements_until_rewritten(lab):
    """Before the repair (e.g. the daemon's first pass failed), counters read ``pol_port``'s
    own counters, and an edit goes through as a delta (no hit set to clean)."""
    web, api = lab.add(2)
    lab.apply(RULE, {web: "web", api: "api"}, intra="deny")
    _format_15(lab)
    assert probe_tcp(web, api.ip4, 8080) == "ok"
    assert _allowed(lab, 8080) >= 1
    lab.update(f"{RULE} web->api:tcp/5432")
    assert [probe_tcp(web, api.ip4, p) for p in (5432, 9000)] == ["ok", "timeout"]
    assert _allowed(lab, 5432) >= 1


def test_a_full_hit_set_passes_what_the_rules_allow_uncounted(lab, monkeypatch):
    from plugin.enforce.nftables import nfttext   # noqa: PLC0415
    monkeypatch.setattr(nfttext, "HIT_SET_SIZE", 1)
    web, api = lab.add(2)
    lab.apply(f"{RULE} web->api:tcp/5432", {web: "web", api: "api"}, intra="deny")
    assert "size 1" in _set(lab, "hit_port")
    assert [probe_tcp(web, api.ip4, p) for p in (8080, 5432, 9000)] == ["ok", "ok", "timeout"]
    assert _allowed(lab, 8080) >= 1 and _allowed(lab, 5432) == 0


def test_a_set_that_keeps_a_few_rules_flushes_and_their_counts_go_on(lab):
    """Most of pol_port replaced, one rule kept: the set is flushed and the kept element
    added back in the same transaction (``ElementDelta.kept``); the kept rule keeps its
    count (its hit is not touched), the replaced ones are out of force."""
    web, api = lab.add(2)
    old = [f"web->api:tcp/{p}" for p in range(9000, 9008)]
    lab.apply(" ".join([RULE] + old), {web: "web", api: "api"}, intra="deny")
    assert [probe_tcp(web, api.ip4, p) for p in (8080, 9000)] == ["ok", "refused"]   # (both allowed)
    counted = _allowed(lab, 8080)
    assert counted >= 1 and _allowed(lab, 9000) >= 1
    calls = []
    real = lab.backend.obj.writer.apply
    lab.backend.obj.writer.apply = lambda table, delta: (calls.append(delta), real(table, delta))[1]
    lab.update(" ".join([RULE, "web->api:tcp/5432"]))
    assert len(calls) == 1 and calls[0].flush == {"pol_port"}, calls
    held = _set(lab, "pol_port")
    assert "8080" in held and "5432" in held and "9000" not in held, held
    hits = _set(lab, "hit_port")   # (more than backend.FEW_HITS elements: found by a dump)
    assert "8080" in hits and "9000" not in hits, hits
    assert lab.drift() == []
    assert _allowed(lab, 8080) == counted
    assert [probe_tcp(web, api.ip4, p) for p in (8080, 5432, 9001)] == ["ok", "ok", "timeout"]
    assert _allowed(lab, 8080) > counted
