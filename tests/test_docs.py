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
    layers = {side: biograd.unshared_bytes(model, torch.zeros(1, 3, side, side))
              for side in (32, 224)}
    mib = {side: sum(sizes.values()) / 2**20 for side, sizes in layers.items()}
    readme, beyond = README.read_text(), (ROOT / "docs" / "beyond.md").read_text()
    assert f"{mib[32]:.0f} MiB of weights at 32²" in readme
    assert f"{mib[224] / 1024:.1f} GiB at 224²" in readme
    assert f"{mib[32]:.1f} MiB" in beyond and f"{mib[224]:,.0f} MiB" in beyond
    full = [layers[side]["layer1.0.conv1"] / 2**20 for side in (32, 224)]  # 64 -> 64, 3x3
    assert f"each full-width 3×3 layer {full[0]:.1f} MiB and {full[1]:.0f} MiB" in readme


def test_the_dfa_table_quoted_is_what_resnet18_at_224_needs():
    import math

    import torchvision

    from biograd.rules import dfa

    # the longest window: the largest input a converted layer sends an error to (the stem's
    # input needs none), by 1,000 classes, plus its offset's range
    model, sizes = torchvision.models.resnet18(), []
    hooks = [m.register_forward_pre_hook(lambda m, args: sizes.append(args[0][0].numel()))
             for name, m in model.named_modules()
             if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and name != "conv1"]
    with torch.no_grad():
        model(torch.zeros(1, 3, 224, 224))
    for hook in hooks:
        hook.remove()
    window = max(sizes) * 1000
    table = math.ceil((window + min(dfa.OFFSETS, window)) / dfa.CHUNK) * dfa.CHUNK
    megabytes = f"{table * 4 / 1e6:.0f} MB"
    assert f"{megabytes} for ResNet-18 at 224²" in README.read_text()
    assert f"**{megabytes}**" in (ROOT / "docs" / "rules.md").read_text()


def test_the_experiments_wall_time_quoted_is_results_own():
    results = (ROOT / "experiments" / "RESULTS.md").read_text()
    minutes, sessions = re.search(r"Wall time: (\d+) minutes in (\d+) session", results).groups()
    assert (f"({minutes} minutes of wall time on 2 cores, studies included, in the {sessions}\n"
            f"sessions") in README.read_text()


def test_the_readmes_round_three_results_are_results_own():
    # README: the alignment family, DRTP and the ViT numbers it quotes are RESULTS.md's
    readme = " ".join(README.read_text().split())
    results = (ROOT / "experiments" / "RESULTS.md").read_text()
    fashion = results.split("## Fashion-MNIST")[1].split("## MNIST")[0]
    vit = results.split("### Attention: a small ViT")[1].split("###")[0]
    for rule in ("sa", "aa", "ia"):
        error = re.search(rf"^\| {rule} \| ([\d.]+ ± [\d.]+)", fashion, flags=re.M).group(1)
        angle = re.search(rf"^\| {rule} \|.*\| ([\d.]+) ± [\d.]+ \| [\d.]+ \|$", fashion,
                          flags=re.M).group(1)
        on_vit = re.search(rf"^\| {rule} \| ([\d.]+) ±", vit, flags=re.M).group(1)
        assert f"{rule} {error}" in readme and f"{angle}°" in readme, rule
        assert f"{rule} {on_vit}" in readme, rule
    drtp, dfa = (re.search(rf"^\| {r} \| ([\d.]+) ±", fashion, flags=re.M).group(1)
                 for r in ("drtp", "dfa"))
    assert f"{drtp} against {dfa}% on Fashion-MNIST" in readme
    kunin = results.split("### The alignment family at Kunin et al.'s own coefficients")[1]
    steps = [int(s) for s in re.findall(r"seed \d: the loss became non-finite at epoch 1, "
                                        r"step (\d+)", kunin.split("Did sa")[0])]
    assert len(steps) == 3 and max(steps) <= 25 and "within 25 steps" in readme
    placement = results.split("### DFA's placement")[1].split("###")[0]
    assert "dfa_blocks trained at none of the learning rates" in placement
    assert "diverged at every lr tried" in readme


def test_the_readmes_spike_and_time_results_are_results_own():
    readme = " ".join(README.read_text().split()).replace("−", "-")
    results = (ROOT / "experiments" / "RESULTS.md").read_text()
    spikes = results.split("### Spikes")[1].split("###")[0]
    time = results.split("### Time")[1].split("## ")[0]

    def gap(text: str, pattern: str) -> str:
        return re.search(pattern, text).group(1)

    ss, plain = re.search(r"SS − BP = ([+-][\d.]+) points with spikes \(±[\d.]+\), "
                          r"([+-][\d.]+) without", spikes).groups()
    fa = gap(spikes, r"FA − BP = ([+-][\d.]+) points with spikes")
    assert f"FA falls far behind BP ({fa} points) but so does SS ({ss}; {plain} without" in readme
    lstm_ss, lstm_fa = (gap(time, rf"{r} − BP = ([+-][\d.]+) points") for r in ("SS", "FA"))
    assert f"LSTM keeps the paper's order (SS {lstm_ss}, FA {lstm_fa})" in readme
    for verdict in ("Does FA fall far behind with spikes?** (FA − BP at least 1 point, 3× "
                    "SS's gap and more than the std's added): **yes",
                    "Does SS stay near BP with spikes?** (SS − BP at most 0.5 points, or "
                    "within the std's added): **no",
                    "Does SS stay near BP in time?** (SS − BP at most 0.5 points, or within the "
                    "std's added): **yes",
                    "Does FA fall far behind in time?** (FA − BP at least 1 point, 3× SS's "
                    "gap and more than the std's added): **yes",
                    "Does e-prop with symmetric feedback come near BPTT?** (e-prop − BPTT at "
                    "most 1 point, or within the std's added): **yes"):
        assert verdict in results, verdict  # what the README's sentence says of them
    eprop = gap(time, r"e-prop − BPTT = \+([\d.]+) points")
    assert f"e-prop comes within {eprop} points of BPTT" in readme
    # docs/beyond.md's account of the same studies: the verdicts it restates
    beyond = " ".join((ROOT / "docs" / "beyond.md").read_text().split())
    assert "at this short training spikes widen both gaps" in beyond
    longer, shorter, fa_longer = re.search(
        r"narrow with longer training, with spikes\?\*\* \(.*?\): \*\*no\*\*\. SS − BP = "
        r"([+-][\d.]+) points \(±[\d.]+\) against ([+-][\d.]+) \(±[\d.]+\); FA − BP = "
        r"([+-][\d.]+)\.", spikes).groups()
    assert (f"leave SS's gap where it was ({longer} points against {shorter}) where FA's "
            f"narrows ({fa_longer} against {fa})") in beyond
    for rule in ("SS", "FA"):
        assert f"Do spikes widen {rule}'s gap to BP?** (" in spikes
        assert re.search(rf"Do spikes widen {rule}'s gap to BP\?\*\* \(.*?\): \*\*yes", spikes)
    changed = gap(spikes, r"Do the rules change the spike rate\?\*\* \(.*?\): \*\*yes, "
                          r"under ([\w, ]+)\*\*")
    assert set(changed.split(", ")) == {"ia", "dfa", "drtp", "dfa_blocks"}
    assert "No layer's rate changed under ss, fa, kp, sa, aa." in spikes
    assert "(ss, fa, kp, sa, aa) leave each layer's spike rate where bp leaves it" in beyond
    rates = {rule: [float(v) for v in re.search(rf"^\| {rule} \| ([\d.]+) \| ([\d.]+) \| "
                                                  rf"([\d.]+) \|", spikes.split(
                                                      "| spike rate |")[1], re.M).groups()]
             for rule in ("bp", "dfa", "drtp", "dfa_blocks")}
    ratios = [r / b for rule in ("dfa", "drtp", "dfa_blocks")
              for r, b in zip(rates[rule], rates["bp"], strict=True)]
    assert f"raise it {min(ratios):.1f} to {max(ratios):.1f} times in the layers" in beyond
    assert "**Does random feedback cost e-prop accuracy?** (" in time and re.search(
        r"random feedback cost e-prop accuracy\?\*\* \(.*?\): \*\*yes", time)
    errors = {label: float(e) for label, e in re.findall(
        r"^\| (e-prop, \w+) \(readout on \w+\) \| ([\d.]+) ±", time, re.M)}
    assert max(errors, key=errors.get) == "e-prop, adaptive"  # "did worst of the three"


OPEN_PROBLEM_MODELS = ("spiking_cnn", "lstm", "gru", "rlif")


def open_problem_commands() -> list[str]:
    """The README's command lines that train one of the open problems' models."""
    lines = [line.split("  #")[0].strip() for line in README.read_text().splitlines()]
    return [line for line in lines if line.startswith("biograd ") and
            any(f"--model {m}" in line for m in OPEN_PROBLEM_MODELS)]


def test_the_readme_has_an_open_problem_command_for_spikes():
    assert any("--model spiking_cnn" in line for line in open_problem_commands())


@pytest.mark.parametrize("line", open_problem_commands())
def test_the_readmes_open_problem_commands_run(line, tmp_path):
    """Each as written, on digits for two steps of one epoch (the data and length the flags
    appended here override)."""
    import shlex

    from biograd.cli import main
    from biograd.models import model_info

    model = re.search(r"--model (\w+)", line).group(1)
    for module in model_info(model).requires:
        pytest.importorskip(module, reason=f"--model {model} needs {module}")
    args = [*shlex.split(line)[1:], "--data", "digits", "--epochs", "1", "--steps-per-epoch",
            "2", "--batch-size", "16", "--progress", "none", "--tensorboard", "false",
            "--out", str(tmp_path / "run")]
    assert main(args) == 0
