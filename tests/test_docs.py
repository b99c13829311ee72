"""The README and docs/ say what the code does: the rules table is the registry's, every link
resolves, every page is reachable from the README, every recipe they name is installed."""

import re
from pathlib import Path

import pytest

import biograd
from biograd.rules import rules_table

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").glob("*.md"))


def test_the_rules_table_matches_the_registry():
    assert rules_table() in (ROOT / "docs" / "rules.md").read_text()


def test_the_readme_names_every_rule_and_links_every_page():
    text = README.read_text()
    for rule in biograd.list_rules():
        assert f"`{rule}`" in text, rule
    for page in PAGES:
        assert f"(docs/{page.name})" in text, page.name


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda p: p.name)
def test_links_resolve_and_recipes_exist(page):
    from biograd.config import find_config

    text = page.read_text()
    for target in re.findall(r"\]\(([^)#]+)\)", text):
        if "://" not in target:
            assert (page.parent / target).exists(), target
    for name in re.findall(r"--config ([\w/-]+)", text):
        if not any(c.isupper() for c in name):  # FILE, NAME: placeholders
            find_config(name)  # a UsageError if no installed recipe has that name


def test_the_readme_stays_a_front_door():
    assert len(README.read_text()) < 12_000  # the reference lives in docs/
