"""The command line: the demo's table, and one-line errors with exit code 2."""

import pytest

import biograd
from biograd.cli import main


def test_rules_lists_every_registered_rule(capsys):
    assert main(["rules"]) == 0
    out = capsys.readouterr().out
    for name in biograd.list_rules():
        assert f"| `{name}` |" in out


def test_demo_prints_a_row_per_rule(capsys):
    assert main(["demo", "--rules", "bp,ss", "--epochs", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    assert [r.split("|")[1].strip() for r in rows] == ["rule", "---", "bp", "ss"]
    accuracy = float(rows[2].split("|")[2])
    assert 10 < accuracy <= 100  # one epoch of bp beats chance (10%) on digits


def test_unknown_rule_is_a_one_line_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--rules", "bp,nope"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown rule 'nope'" in err and "bp, fa, ss" in err
    assert len(err.strip().splitlines()) == 1
