"""The command line: the rules table, and one-line errors with exit code 2."""

import pytest

import biograd
from biograd.cli import main


def test_rules_lists_every_registered_rule(capsys):
    assert main(["rules"]) == 0
    out = capsys.readouterr().out
    for name in biograd.list_rules():
        assert f"| `{name}` |" in out


def test_unknown_rule_is_a_one_line_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--rules", "bp,nope"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown rule 'nope'" in err and "bp, fa, ss" in err
    assert len(err.strip().splitlines()) == 1
