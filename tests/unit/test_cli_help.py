"""Every verb's --help tells a first-time user what the contract promises for it:
--json after the subcommand (contract: "accepted before or after the subcommand")."""
from __future__ import annotations

import pytest

from plugin.cli import main as cli

VERBS = ("status", "show", "policy", "mode", "log", "explain", "verify", "metrics")


@pytest.mark.parametrize("verb", VERBS)
def test_each_verbs_help_lists_json(verb, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([verb, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: secnet {verb} ") and "--json" in out, out


def test_policys_help_gives_the_rule_grammar(capsys):
    with pytest.raises(SystemExit):
        cli.main(["policy", "--help"])
    assert "SRC->DST[:PROTO[/PORTS]]" in capsys.readouterr().out
