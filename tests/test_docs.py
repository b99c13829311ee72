"""The README shows the registry as it is."""

from pathlib import Path

from biograd.rules import rules_table

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_rules_table_matches_the_registry():
    assert rules_table() in README.read_text()
