"""experiments/spiking_study.py: RESULTS.md's section on spikes, its verdicts computed from run
folders written here (what the engine writes), with errors and spike rates chosen so that each
verdict is known beforehand."""

import json
import re
from pathlib import Path

import pytest
import yaml
from checks import experiments_importable

ROOT = Path(__file__).resolve().parents[1]
LAYERS = [f"features.unit{i}.0" for i in (1, 2, 3, 4)]
NEURONS = [f"features.unit{i}.2" for i in (1, 2, 3, 4)]
BP_RATES = [0.10, 0.05, 0.06, 0.04]


@pytest.fixture(scope="module")
def study():
    with experiments_importable():
        import spiking_study
        yield spiking_study


def write_run(folder: Path, rule: str, seed: int, error: float, rates: list[float],
              angle: float, study: str = "spiking") -> None:
    folder.mkdir(parents=True)
    config = {"rule": rule, "seed": seed, "epochs": 2, "steps_per_epoch": 120,
              "last_rule": "bp", "model": "spiking_cnn",
              "model_options": {"width": 8, "steps": 4}, "batch_size": 128, "data":
              "fashion-mnist"}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    lines = [{"epoch": e, "rule": rule, "seed": seed, "val_top1": 100 - error - (2 - e),
              "epoch_seconds": 90.0, "elapsed_seconds": 90.0 * e,
              "val_spike_rates": dict(zip(NEURONS, rates, strict=True)),
              "weight_angles": {**dict.fromkeys(LAYERS, angle), "fc": 0.0},
              "gradient_angles": dict.fromkeys(LAYERS, 0.0 if rule == "bp" else angle),
              "mean_weight_angle": angle, "mean_gradient_angle": angle} for e in (1, 2)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (folder / "status.json").write_text(json.dumps({"status": "finished", "message": ""}))


def make(out: Path, errors: dict[str, float], rates: dict[str, list[float]]) -> None:
    for rule, error in errors.items():
        study = "spiking_blocks" if rule == "dfa_blocks" else "spiking"
        for seed, wobble in enumerate((-0.1, 0.0, 0.1)):
            write_run(out / study / f"{rule}-seed{seed}", rule, seed, error + wobble,
                      [r * (1 + wobble / 10) for r in rates.get(rule, BP_RATES)],
                      {"bp": 0.0, "ss": 40.0}.get(rule, 85.0))


def section(study, out: Path) -> str:
    from biograd.results import load_run

    def groups(name):
        runs = [load_run(p) for p in sorted((out / name).glob("*-seed*"))]
        found = {}
        for run in runs:
            found.setdefault(run.rule, []).append(run)
        return found

    return "\n".join(study.section(groups("spiking"), groups("spiking_blocks"),
                                   groups("spiking_control"), groups("spiking_long")))


def verdicts(text: str) -> dict[str, str]:
    return dict(re.findall(r"^- \*\*(.+?)\*\* \(.*?\): \*\*(.+?)\*\*", text, flags=re.M))


def test_the_paper_ordering_and_a_changed_rate_are_read_from_the_runs(study, tmp_path):
    make(tmp_path, {"bp": 12.0, "ss": 12.3, "fa": 15.0, "kp": 12.4, "dfa": 16.0,
                    "dfa_blocks": 13.0},
         {"fa": [0.10, 0.05, 0.06, 0.08]})  # fa doubles the last layer's rate
    text = section(study, tmp_path)
    assert verdicts(text) == {"Does SS stay near BP with spikes?": "yes",
                              "Does FA fall far behind with spikes?": "yes",
                              "Do the rules change the spike rate?": "yes, under fa"}
    assert "SS − BP = +0.30 points" in text and "FA − BP = +3.00 points" in text
    assert "fa: `features.unit4.2` 0.0800 (+100%)" in text
    assert "No layer's rate changed under ss, kp, dfa, dfa_blocks." in text
    assert ("From best to worst (mean test error over the finished seeds): bp 12.00%, "
            "ss 12.30%, kp 12.40%, dfa_blocks 13.00%, fa 15.00%, dfa 16.00%.") in text
    # the table: each rule once, in the section's order, dfa_blocks from its own folder
    rows = [line.split(" | ")[0][2:] for line in text.splitlines()
            if line.startswith("| ") and "%" not in line and "---" not in line]
    assert rows[:6] == ["bp", "ss", "fa", "kp", "dfa", "dfa_blocks"]
    # per-layer tables: the update's angle to backprop's and the spike rate, by name
    assert "| angle to bp's gradient (°) | `features.unit1.0` |" in text
    assert "| ss | 40.0 | 40.0 | 40.0 | 40.0 |" in text
    assert "| fa | 0.1000 | 0.0500 | 0.0600 | 0.0800 |" in text


def test_the_ordering_broken_and_rates_unchanged(study, tmp_path):
    make(tmp_path, {"bp": 12.0, "ss": 14.0, "fa": 12.5}, {})
    text = section(study, tmp_path)
    assert verdicts(text) == {"Does SS stay near BP with spikes?": "no",
                              "Does FA fall far behind with spikes?": "no",
                              "Do the rules change the spike rate?": "no"}


def test_not_run_says_how_to_run_it(study):
    (line,) = study.section({}, {})
    assert "reproduce.py --studies spiking,spiking_blocks" in line and "[spiking]" in line


def test_reproduce_runs_every_rule_the_section_reports(study):
    import reproduce

    rules = {*reproduce.STUDIES["spiking"][1], *reproduce.STUDIES["spiking_blocks"][1]}
    assert rules == set(study.RULES)
    for name in ("spiking", "spiking_blocks"):  # the model the section describes
        assert reproduce.STUDIES[name][2][:2] == ["--model", "spiking_cnn"]


@pytest.mark.parametrize(("ss_plain", "widens"), [(12.2, "yes"), (15.2, "no")])
def test_spikes_widen_a_gap_only_beyond_the_same_network_without_them(study, tmp_path,
                                                                      ss_plain, widens):
    """SS − BP is +3 points with spikes; without them (small_cnn, the same recipe) +0.2
    (the spikes' doing) or +3.2 (the short training's)."""
    make(tmp_path, {"bp": 12.0, "ss": 15.0, "fa": 20.0}, {})
    for rule, error in {"bp": 12.0, "ss": ss_plain, "fa": 19.9}.items():
        for seed, wobble in enumerate((-0.1, 0.0, 0.1)):
            write_run(tmp_path / "spiking_control" / f"{rule}-seed{seed}", rule, seed,
                      error + wobble, BP_RATES, 0.0)
    text = section(study, tmp_path)
    answers = verdicts(text)
    assert answers["Do spikes widen SS's gap to BP?"] == widens
    assert answers["Do spikes widen FA's gap to BP?"] == "no"  # +8 with, +7.9 without
    assert f"SS − BP = +3.00 points with spikes (±0.20), {ss_plain - 12:+.2f} without" in text
    plain = text.split("Without spikes")[1]
    assert "mean spike rate" not in plain and "| fa | 19.90 ± 0.10 |" in plain


@pytest.mark.parametrize(("ss_long", "narrows"), [(12.5, "yes"), (14.9, "no")])
def test_longer_training_narrows_ss_gap_only_beyond_the_noise(study, tmp_path, ss_long,
                                                               narrows):
    """SS − BP is +3 points after the study's steps; after whole epochs +0.5 or +2.9."""
    make(tmp_path, {"bp": 12.0, "ss": 15.0, "fa": 20.0}, {})
    for rule, error in {"bp": 12.0, "ss": ss_long, "fa": 18.0}.items():
        for seed, wobble in enumerate((-0.1, 0.0, 0.1)):
            write_run(tmp_path / "spiking_long" / f"{rule}-seed{seed}", rule, seed,
                      error + wobble, BP_RATES, 0.0)
    text = section(study, tmp_path)
    question = "Does SS's gap to BP narrow with longer training, with spikes?"
    assert verdicts(text)[question] == narrows
    assert f"SS − BP = {ss_long - 12:+.2f} points (±0.20) against +3.00 (±0.20); FA − BP = " \
           "+6.00." in text
    assert "Longer, with spikes (2 whole epochs" in text
