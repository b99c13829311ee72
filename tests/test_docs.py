"""The README and docs/ say what the code does: the rules table is the registry's, every link
resolves, every page is reachable from the README, every recipe they name is installed."""

import re
from pathlib import Path

import pytest
import torch

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


def test_the_unshared_memory_quoted_is_unshared_bytes_own():
    import torchvision

    model = torchvision.models.resnet18()
    mib = {side: sum(biograd.unshared_bytes(model, torch.zeros(1, 3, side, side)).values())
           / 2**20 for side in (32, 224)}
    readme, beyond = README.read_text(), (ROOT / "docs" / "beyond.md").read_text()
    assert f"{mib[32]:.0f} MiB of weights at 32²" in readme
    assert f"{mib[224] / 1024:.1f} GiB at 224²" in readme
    assert f"{mib[32]:.1f} MiB" in beyond and f"{mib[224]:,.0f} MiB" in beyond
