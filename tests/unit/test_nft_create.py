"""A network's first write: ``ruleset.create_script`` (commands that make libnftables read no
other table) and the backend's choice between it and the replacing script. The kernel's side
(same tables, a refused create leaves none, a table made in between) is in
tests/kernel/test_nftables.py."""
from __future__ import annotations

import errno
import re

import pytest

from plugin.enforce.backend import BackendError, NetworkSpec, Port
from plugin.enforce.nftables import backend as nft_backend
from plugin.enforce.nftables import ruleset
from plugin.enforce.nftables.elements import PolicyElements, ports_elements, setting_elements
from plugin.enforce.nftables.runner import NftError
from segmentation.options import parse_network_options
from segmentation.policymap import compile_policy_map

NID = "0123456789ab" + "c" * 52
NET = NetworkSpec(NID, "sn-x", ("10.224.0.0/24", "fd00:224::/64"), ("10.224.0.1",))
TABLE = ruleset.table_name(NID)
RULES = "web->api:tcp/5000-8080 web->api:tcp/8080-9999 10.237.0.0/24->api:tcp/8080 [fd00:237::/64]->api:udp/53"


def elements() -> dict:
    policy = compile_policy_map(parse_network_options({"secnet.allow": RULES}), {"web": 256, "api": 257, "default": 258})
    port = Port("e1", "snv1", "02:42:0a:e0:00:05", "10.224.0.5", "fd00:224::5", 256, "web",
                published=(("tcp", "", 8080, 80),))
    return {**PolicyElements.of(policy.entries | policy.cidrs).flat(), **setting_elements(policy, "enforce"),
            **ports_elements([port])}


def objects_of_blocks(script: str) -> dict:
    """(family, kind, name) -> [body lines] of the table blocks of a replacing script."""
    out, family, current = {}, None, None
    for line in script.splitlines():
        if m := re.fullmatch(r"table (\w+) \S+ \{", line):
            family = m.group(1)
        elif m := re.fullmatch(r"  chain (\S+) \{", line):
            current = out.setdefault((family, "chain", m.group(1)), [])
        elif line == "  }":
            current = None
        elif current is not None:
            current.append(line.strip())
        elif m := re.fullmatch(r"  (set|map|limit) (\S+) \{ .* \}", line):
            out[(family, m.group(1), m.group(2))] = []
    return out


def test_a_create_script_makes_the_same_objects_with_commands_that_read_no_other_table():
    every = elements()
    create = ruleset.create_script(NID, NET, every)
    replace = objects_of_blocks(ruleset.network_script(NID, NET, every))
    lines = create.splitlines()
    # libnftables 1.0.6 fetches every table's chains and sets for a block, a delete, an
    # ``add rule`` and an ``add element``: none of them
    assert not [line for line in lines if re.match(r"(table|delete|flush|add rule|add element) ", line)]
    assert [line for line in lines if line.startswith("create ")] == \
        [f"create table inet {TABLE}", f"create table bridge {TABLE}"]
    made, rules = {}, {}
    for i, line in enumerate(lines):
        if m := re.match(rf"add (chain|set|map|limit) (\w+) {TABLE} (\S+)", line):
            key = (m.group(2), m.group(1), m.group(3))
            if key in made and line.endswith(" {"):   # the chain's rules, after every object
                end = lines.index("}", i)
                rules[key] = [r.strip() for r in lines[i + 1:end]]
            made.setdefault(key, line)
    assert set(made) == set(replace)
    for key, body in replace.items():
        if key[1] == "chain":
            hook = [body[0]] if body and body[0].startswith("type ") else []
            assert rules.get(key, []) == body[len(hook):], key
            assert made[key].endswith(f" {{ {hook[0]} }}" if hook else key[2])
    # every element inline, in its set's declaration
    for name, els in every.items():
        if els:
            text = ", ".join(ruleset.element_text(name, e, v) for e, v in els.items())
            family = "bridge" if made.get(("bridge", "set", name)) or made.get(("bridge", "map", name)) else "inet"
            decl = made.get((family, "set", name)) or made[(family, "map", name)]
            assert decl.endswith(f" elements = {{ {text} }}; }}"), name


def test_the_objects_come_in_the_order_the_kernel_numbers_a_blocks_objects():
    """Per table: every chain, the limits, the sets, then the rules (``nft_cmd_expand``'s
    order for a table block: the handles then match the replacing script's)."""
    kinds = []
    for line in ruleset.create_script(NID, NET, elements()).splitlines():
        if m := re.match(rf"(create table|add chain|add limit|add set|add map) (\w+) {TABLE}", line):
            kind = "rules" if line.endswith(" {") and m.group(1) == "add chain" else m.group(1).split()[-1]
            kind = "set" if kind == "map" else kind
            if not kinds or kinds[-1] != (m.group(2), kind):
                kinds.append((m.group(2), kind))
    assert kinds == [(f, k) for f in ("inet", "bridge") for k in ("table", "chain", "limit", "set", "rules")]


def test_a_line_it_has_no_command_for_or_elements_of_no_set_are_refused(monkeypatch):
    with pytest.raises(ValueError, match="elements of sets the tables do not declare"):
        ruleset.create_script(NID, NET, {**elements(), "nosuchset": {(1,): None}})
    render = ruleset.render_bridge
    monkeypatch.setattr(ruleset, "render_bridge", lambda *a: render(*a)[:-1] + ["  flowtable ft { }", "}"])
    with pytest.raises(ValueError, match="no command for this line of table bridge"):
        ruleset.create_script(NID, NET, elements())


class Runner:
    """Records scripts; refuses them with ``refusal`` (an NftError) when given."""

    def __init__(self, refusal=None):
        self.scripts, self.refusal = [], refusal

    def apply(self, script: str) -> None:
        self.scripts.append(script)
        if self.refusal is not None:
            raise self.refusal


def backend_with(monkeypatch, runner, *answers) -> nft_backend.NftBackend:
    """A backend whose table checks answer ``answers`` in turn (one per family asked)."""
    answers = list(answers)

    def exists(family: str, table: str) -> bool:
        assert table == TABLE
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer
    monkeypatch.setattr(nft_backend, "table_exists", exists)
    return nft_backend.NftBackend(runner=runner, netlink=False)


def test_no_table_there_is_a_create(monkeypatch):
    runner = Runner()
    assert backend_with(monkeypatch, runner, False, False)._create(NET, elements()) is True
    assert runner.scripts == [ruleset.create_script(NID, NET, elements())]


@pytest.mark.parametrize("answers", [(True,), (False, True), (OSError(errno.EPERM, "no"),)])
def test_a_table_there_or_no_answer_leaves_it_to_the_replace(monkeypatch, answers):
    runner = Runner()
    assert backend_with(monkeypatch, runner, *answers)._create(NET, elements()) is False
    assert runner.scripts == []


def test_a_refused_create_with_a_table_there_now_is_a_replace(monkeypatch):
    runner = Runner(NftError("nft failed: Error: Could not process rule: File exists"))
    assert backend_with(monkeypatch, runner, False, False, True)._create(NET, elements()) is False
    assert len(runner.scripts) == 1


def test_a_refused_create_with_no_table_there_is_an_error(monkeypatch):
    runner = Runner(NftError("nft failed: Error: Could not process rule: Operation not supported"))
    with pytest.raises(BackendError, match="Operation not supported"):
        backend_with(monkeypatch, runner, False, False, False, False)._create(NET, elements())
    assert len(runner.scripts) == 1
