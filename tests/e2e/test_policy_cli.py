"""`secnet policy`, `status` and `show` against the running daemon, with real
packets: live edits are in force when the command returns, bad rules change
nothing, and the policy survives a kill -9 of the daemon."""
from __future__ import annotations

import pytest

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import helpers as h
import seg_helpers as s
from nsprocs import nsprocs  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("backend")  # every test on every datapath

FAMILIES = (4, 6)


def policy_lines(net, ref=None) -> list:
    res = s.secnet("policy", ref or net.name)
    assert res.returncode == 0, res.stderr
    return res.stdout.splitlines()


def edit(net, action, *rules) -> None:
    res = s.secnet("policy", net.name, action, *rules)
    assert res.returncode == 0, f"secnet policy {action} {rules}: {res.returncode} {res.stderr.strip()}"
    assert not res.stderr.strip(), res.stderr


def single_probe(src, dst, port, fam) -> bool:
    """ONE connection attempt (1 s), no retry: for "in force when the command returns"."""
    return s.reached(s.one(src, dst, "tcp", port, fam))


def single_probes(src, dst, port) -> dict:
    """family -> reached: ONE connection attempt (1 s) per family, no retry, the two side
    by side in one prober (as :func:`single_probe` makes each)."""
    res = s.probe(src, [{"id": str(fam), "proto": "tcp", "dst": s.addr_of(dst, fam), "port": port}
                        for fam in FAMILIES])
    return {fam: s.reached(res[str(fam)]) for fam in FAMILIES}


def assert_flow(src, dst, port, allowed, when):
    got = single_probes(src, dst, port)
    want = {fam: allowed for fam in FAMILIES}
    assert got == want, (f"{when}: {src.name} -> {dst.name} tcp/{port} observed {got} "
                         f"(IPv4/IPv6), expected {'allowed' if allowed else 'blocked'}")


def assert_flows(checks, when):
    """assert_flow for every (src, dst, port, allowed) of ``checks``, side by side: each is
    still ONE attempt per family right after the command, and a blocked one's wait (1 s)
    is not added to the next one's."""
    with ThreadPoolExecutor(max_workers=len(checks)) as pool:
        for future in [pool.submit(assert_flow, *check, when) for check in checks]:
            future.result()


def show_text_members(text: str) -> dict:
    """container name -> (segment, first address) from the text of `secnet show`."""
    out, seg, inside = {}, None, False
    for line in text.splitlines():
        if line.strip() == "segments:":
            inside = True
            continue
        if inside and line and not line.startswith(" "):
            break
        m = re.match(r"^  (\S+): \d+ member", line)
        if inside and m:
            seg = m.group(1)
        elif inside and seg and line.startswith("    ") and line.split():
            fields = line.split()
            out[fields[0]] = (seg, fields[1] if len(fields) > 1 else None)
    return out


def setup_net(make_network, run_container, nsprocs, ipv6=True):
    net = s.seg_network(make_network, "sn-cli", opts={"secnet.allow": "web->api:tcp/8080"}, ipv6=ipv6)
    cs = s.run_many(run_container, net, {"w": {"secnet.segment": "web"}, "a": {"secnet.segment": "api"},
                                         "d": {"secnet.segment": "db"}}, cmd=h.listen_cmd(8080))
    s.wait_segments(net, {cs["w"].name: "web", cs["a"].name: "api", cs["d"].name: "db"})
    nsprocs.server(cs["w"], tcp=(80,))
    return net, cs["w"], cs["a"], cs["d"]


def test_policy_print_add_remove_set(make_network, run_container, nsprocs):
    net, w, a, d = setup_net(make_network, run_container, nsprocs)
    assert policy_lines(net) == ["web->api:tcp/8080"]
    assert policy_lines(net, net.id) == ["web->api:tcp/8080"]      # by id too
    assert policy_lines(net, net.id[:12]) == ["web->api:tcp/8080"]
    for fam in FAMILIES:
        s.eventually(w, a, "tcp", 8080, fam)
    assert_flow(d, w, 80, False, "before add")

    edit(net, "add", "db->web:tcp/80")
    assert_flow(d, w, 80, True, "right after `policy add db->web:tcp/80` returned")
    assert policy_lines(net) == ["web->api:tcp/8080", "db->web:tcp/80"]
    assert_flows([(w, d, 80, False), (d, w, 8080, False)], "after add (the reverse direction, another port)")

    edit(net, "remove", "db->web:tcp/80")
    assert_flow(d, w, 80, False, "right after `policy remove db->web:tcp/80` returned")
    assert policy_lines(net) == ["web->api:tcp/8080"]
    assert_flow(w, a, 8080, True, "after remove (the rule that stays)")

    edit(net, "set", "api->db:tcp/8080", "db->web:tcp/80")
    assert sorted(policy_lines(net)) == ["api->db:tcp/8080", "db->web:tcp/80"]
    assert_flows([(w, a, 8080, False), (a, d, 8080, True), (d, w, 80, True)],
                 "right after `policy set` (the replaced rule, the new rules)")

    # several rules in one argument, separated as in the grammar
    edit(net, "set", "web->api:tcp/8080, db->web:tcp/80;api->db:tcp/8080")
    assert sorted(policy_lines(net)) == ["api->db:tcp/8080", "db->web:tcp/80", "web->api:tcp/8080"]
    assert_flow(w, a, 8080, True, "after a set with separators")

    edit(net, "clear")                                                # the explicit way to remove every rule
    assert policy_lines(net) == []
    assert_flows([(w, a, 8080, False), (d, w, 80, False)], "right after `policy clear` returned")

    # a misspelt segment is taken (it fails closed) and named on stderr (U26-F7)
    res = s.secnet("policy", net.name, "add", "db->Web:tcp/80", "db->webb:tcp/80")
    assert res.returncode == 0 and res.stdout.strip().endswith("2 rules in force"), (res.stdout, res.stderr)
    assert len(res.stderr.strip().splitlines()) == 1 and "segments Web, webb" in res.stderr, res.stderr
    assert_flow(d, w, 80, False, "after rules naming segments no container is in")


def test_a_large_set_is_in_force_and_the_tables_are_watched_again(make_network, run_container, nsprocs,
                                                                  backend):
    """A set that changes 1,200 elements (nftables: sent with the change watcher out of its
    group, ElementWriter.UNHEARD_FROM) is in force when it returns; on nftables a flushed
    policy set is repaired within a second afterwards: the watcher hears again."""
    net, w, a, d = setup_net(make_network, run_container, nsprocs)
    for fam in FAMILIES:
        s.eventually(w, a, "tcp", 8080, fam)
    many = lambda first: [f"web->db:tcp/{port}" for port in range(first, first + 600)]
    edit(net, "set", "web->api:tcp/8080", *many(20000))
    edit(net, "set", "db->web:tcp/80", *many(30000))
    assert len(policy_lines(net)) == 601
    assert_flow(w, a, 8080, False, "right after a 1,200-element `policy set` (the replaced rule)")
    assert_flow(d, w, 80, True, "right after a 1,200-element `policy set` (a new rule)")
    if backend != "nftables":
        return
    table = f"secnet_{net.id[:12]}"
    h.run(["nft", "flush", "set", "inet", table, "pol_port"])
    started = time.monotonic()
    while pol_port_size(table) < 601 and time.monotonic() - started < 5:
        time.sleep(0.05)
    took = time.monotonic() - started
    assert pol_port_size(table) == 601 and took < 1.0, f"pol_port back after {took:.2f} s"
    assert_flow(d, w, 80, True, "after the repair")


def pol_port_size(table: str) -> int:
    """Elements of the network's one-port policy set, as nft lists them."""
    out = json.loads(h.run(["nft", "-j", "list", "set", "inet", table, "pol_port"]).stdout)
    return sum(len(item["set"].get("elem", [])) for item in out["nftables"] if "set" in item)


BAD_EDITS = [
    ("add", ["web->"], "web->"),
    ("add", ["web->api:tcp/99999"], "web->api:tcp/99999"),
    ("add", ["web->api:bogus"], "web->api:bogus"),
    ("add", ["web->api:icmp/7"], "web->api:icmp/7"),
    ("set", ["db->web:tcp/80", "api->:tcp/1"], "api->:tcp/1"),
    ("set", ["web->bad!name"], "web->bad!name"),
    ("remove", ["web->db:tcp/1"], "web->db:tcp/1"),     # not in the policy
    ("set", [], "policy set needs at least one RULE"),  # an unexpanded variable (U8-O2)
    ("set", [""], "secnet policy NETWORK clear"),
    ("add", ["web-> api"], "web-> api"),                # whitespace separates rules (U9-O2)
    ("set", ["db->", "web"], "db-> web"),
    ("clear", ["db->web:tcp/80"], "policy clear takes no RULE"),
]


def test_bad_rules_are_refused_and_change_nothing(make_network, run_container, nsprocs):
    net, w, a, d = setup_net(make_network, run_container, nsprocs)
    edit(net, "set", "web->api:tcp/8080", "db->web:tcp/80")
    before = policy_lines(net)
    for fam in FAMILIES:
        s.eventually(d, w, "tcp", 80, fam)
    problems = []
    for action, rules, named in BAD_EDITS:
        res = s.secnet("policy", net.name, action, *rules)
        err = res.stderr.strip()
        if res.returncode == 0:
            problems.append(f"policy {action} {rules}: exit 0")
        if len(err.splitlines()) != 1:
            problems.append(f"policy {action} {rules}: stderr is not one line: {err!r}")
        if named not in err:
            problems.append(f"policy {action} {rules}: stderr does not name {named!r}: {err!r}")
        if res.stdout.strip():
            problems.append(f"policy {action} {rules}: printed {res.stdout!r}")
        now = policy_lines(net)
        if now != before:
            problems.append(f"policy {action} {rules} changed the policy: {before} -> {now}")
    assert not problems, "\n".join(problems)
    assert_flow(d, w, 80, True, "after the refused edits")
    assert_flow(w, a, 8080, True, "after the refused edits")
    assert_flow(a, w, 8080, False, "after the refused edits")
    # usage errors are one line too
    for args in (["policy", net.name, "add"], ["policy", net.name, "frobnicate", "a->b"],
                 ["policy", "no-such-network-xyz"]):
        res = s.secnet(*args)
        assert res.returncode != 0 and len(res.stderr.strip().splitlines()) == 1, (args, res)


def test_json_status_and_show(make_network, run_container, nsprocs):
    net, w, a, d = setup_net(make_network, run_container, nsprocs)
    edit(net, "add", "db->web:tcp/80")
    rules = policy_lines(net)
    for args in (["--json", "policy", net.name], ["policy", net.name, "--json"],
                 ["policy", "--json", net.name]):
        res = s.secnet(*args)
        assert res.returncode == 0, (args, res.stderr)
        data = json.loads(res.stdout)
        assert data["rules"] == rules, (args, data)
    # --json after an edit's rules is a flag, not a rule
    res = s.secnet("policy", net.name, "add", "api->db:tcp/5432", "--json")
    assert res.returncode == 0, res.stderr
    assert "api->db:tcp/5432" in json.loads(res.stdout)["rules"]
    assert "--json" not in policy_lines(net)
    edit(net, "remove", "api->db:tcp/5432")

    # status: the network, with its endpoint count
    text = s.secnet("status", check=True).stdout
    line = next((l for l in text.splitlines() if net.id[:12] in l), None)
    assert line and "endpoints 3" in line, f"secnet status does not list {net.id[:12]} with 3 endpoints:\n{text}"
    for args in (["--json", "status"], ["status", "--json"]):
        data = json.loads(s.secnet(*args, check=True).stdout)
        entry = next((n for n in data["networks"] if n["id"] == net.id), None)
        assert entry and entry["endpoints"] == 3, data

    # show: members by container name, rules with counters that move with traffic
    text = s.secnet("show", net.name, check=True).stdout
    listed = show_text_members(text)
    assert listed == {w.name: ("web", w.ip), a.name: ("api", a.ip), d.name: ("db", d.ip)}, \
        f"secnet show does not list the members by container name under their segments:\n{text}"
    assert "db->web:tcp/80" in text and "web->api:tcp/8080" in text, text
    for args in (["--json", "show", net.name], ["show", net.name, "--json"]):
        data = json.loads(s.secnet(*args, check=True).stdout)
        members = {m["container"]: seg["name"] for seg in data["segments"] for m in seg["members"]}
        assert members == {w.name: "web", a.name: "api", d.name: "db"}, members

    def counters(rule):
        data = s.show_json(net)
        row = next((r for r in data["rules"] if r["rule"] == rule), None)
        assert row is not None, f"secnet show --json has no row for {rule}: {data['rules']}"
        return row["packets"], row["bytes"]

    before_80, before_8080 = counters("db->web:tcp/80"), counters("web->api:tcp/8080")
    for _ in range(3):
        for fam in FAMILIES:
            assert single_probe(d, w, 80, fam)
    after_80, after_8080 = counters("db->web:tcp/80"), counters("web->api:tcp/8080")
    assert after_80[0] >= before_80[0] + 6 and after_80[1] > before_80[1], (before_80, after_80)
    assert after_8080 == before_8080, "counters of a rule that saw no traffic moved"
    text = s.secnet("show", net.name, check=True).stdout
    line = next(l for l in text.splitlines() if "db->web:tcp/80" in l)
    assert re.search(rf"packets\s+{after_80[0]}\b", line), f"counters not in the text: {line}"


@pytest.mark.exclusive
def test_policy_survives_a_daemon_kill(make_network, run_container, nsprocs):
    net, w, a, d = setup_net(make_network, run_container, nsprocs)
    edit(net, "set", "db->web:tcp/80")
    assert_flow(d, w, 80, True, "after set")
    # one-rule edits are journaled, not written whole (plugin.driver.state): a kill -9 keeps them
    edit(net, "add", "db->api:tcp/9")
    edit(net, "add", "web->db:tcp/5432")
    edit(net, "remove", "web->db:tcp/5432")
    try:
        h.plugin_kill()
        assert_flow(d, w, 80, True, "daemon down")
        assert_flow(w, a, 8080, False, "daemon down")
    finally:
        h.plugin_start()
    assert policy_lines(net) == ["db->web:tcp/80", "db->api:tcp/9"]
    assert_flow(d, w, 80, True, "after restart")
    assert_flow(w, a, 8080, False, "after restart (the rule set replaced)")
    edit(net, "add", "web->api:tcp/8080")
    assert_flow(w, a, 8080, True, "an edit after restart")


@pytest.mark.exclusive
def test_a_stopped_daemon_writes_its_journal_whole(make_network, run_container):
    """SIGTERM (scripts/plugin.sh stop): the worker's exit writes the journaled rule
    edits into the network's document, so a daemon that knows no journal (a downgrade)
    reads every rule; the rules are in force after the start."""
    net = s.seg_network(make_network, "sn-jr", opts={"secnet.allow": "web->api:tcp/8080"}, ipv6=False)
    res = s.secnet("policy", net.name, "add", "db->api:tcp/9")   # no container: a note (U26-F7)
    assert res.returncode == 0 and "is in segments api, db " in res.stderr, res.stderr
    assert len(h.state_rule_edits(net.id)) == 1
    try:
        h.script("plugin.sh", "stop")
        assert h.state_rule_edits(net.id) == []
        doc = h.state_network_doc(net.id)
        assert doc is not None and "db->api:tcp/9" in doc, (doc or "")[:300]
    finally:
        h.plugin_start()
    assert policy_lines(net) == ["web->api:tcp/8080", "db->api:tcp/9"]
