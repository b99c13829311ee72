"""`biograd compare` (the main job) and `biograd plot`."""

import csv
import json
import shutil

import pytest
import yaml
from PIL import Image

from biograd.cli import main

QUICK = ["--epochs", "2", "--steps-per-epoch", "2", "--batch-size", "16", "--progress", "none",
         "--tensorboard", "false", "--angle-batch", "16"]
FIGURES = ("accuracy.png", "angles_per_layer.png", "angle_over_training.png")


def test_compare_writes_report_csv_and_figures(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "--rules", "bp,ss,fa", *QUICK, "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["bp", "fa", "ss"]
    report = (out / "report.md").read_text()
    for rule in ("bp", "ss", "fa"):
        assert f"| {rule} |" in report or f"| `{rule}` |" in report, rule
    bp_row = next(line for line in report.splitlines() if line.startswith("| `bp` |"))
    assert "| 0.0 |" in bp_row and "0 under bp, whose B is W" in report  # as it says
    with open(out / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["rule"] for r in rows] == ["bp", "ss", "fa"]
    for name in FIGURES:
        with Image.open(out / name) as image:
            assert image.size[0] > 300 and image.size[1] > 200
    # --resume keeps finished runs as they are
    before = (out / "ss" / "metrics.jsonl").read_text()
    assert main(["compare", "--rules", "bp,ss,fa", *QUICK, "--out", str(out), "--resume"]) == 0
    assert (out / "ss" / "metrics.jsonl").read_text() == before


def test_compare_checks_every_run_before_training_any(tmp_path, capsys):
    out = tmp_path / "cmp"
    # dfa, last, has no detector: refused before fa trains
    assert main(["compare", "--task", "detection", "--rules", "fa,dfa", "--data",
                 str(tmp_path / "shapes"), "--out", str(out)]) == 2
    assert "dfa" in capsys.readouterr().err and not out.exists()
    with pytest.raises(SystemExit) as exit_:  # argparse's own one-line error
        main(["compare", "--rules", "bp", "--seeds", "0,-1", *QUICK, "--out", str(out)])
    assert exit_.value.code == 2 and not out.exists()
    assert "seeds are integers >= 0" in capsys.readouterr().err


def test_compare_resume_keeps_only_runs_of_the_same_recipe(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "--rules", "bp", *QUICK, "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["compare", "--rules", "bp,ss", *QUICK, "--lr", "0.5", "--out", str(out),
                 "--resume"]) == 2
    err = capsys.readouterr().err
    assert "bp was run with lr=0.05 (now 0.5)" in err and not (out / "ss").exists()


def test_options_of_rules_a_run_does_not_use_are_no_part_of_its_recipe(tmp_path, capsys):
    # a recipe that gains one rule's options keeps, resumes and groups the runs of the others
    out = tmp_path / "cmp"
    assert main(["compare", "--rules", "bp,fa", *QUICK, "--out", str(out),
                 "--rule-options", "{kp: {decay: 0.01}}"]) == 0
    assert main(["compare", "--rules", "bp,fa,sa", *QUICK, "--out", str(out), "--resume",
                 "--rule-options", "{kp: {decay: 0.01}, sa: {decay: 0.01, self: 0.02}}"]) == 0
    rows = [line for line in (out / "report.md").read_text().splitlines()
            if line.startswith("| `")]
    assert [row.split("|")[1].strip() for row in rows] == ["`bp`", "`fa`", "`sa`"]
    capsys.readouterr()  # but the options of a rule a run uses are
    assert main(["compare", "--rules", "bp,fa,sa", *QUICK, "--out", str(out), "--resume",
                 "--rule-options", "{fa: {scale: weight}}"]) == 2
    assert "fa was run with rule_options" in capsys.readouterr().err


def test_compare_over_seeds_reports_spread(tmp_path):
    out = tmp_path / "cmp"
    assert main(["compare", "--rules", "ss,fa", "--seeds", "0,1", *QUICK, "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [
        "fa-seed0", "fa-seed1", "ss-seed0", "ss-seed1"]
    seeds = {json.loads(line)["seed"] for run in ("ss-seed0", "ss-seed1")
             for line in (out / run / "metrics.jsonl").read_text().splitlines()}
    assert seeds == {0, 1}
    assert "±" in (out / "report.md").read_text()


def test_plot_redraws_a_run(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *QUICK, "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["plot", str(run)]) == 0
    written = capsys.readouterr().out.split()
    assert written and all(p.endswith(".png") for p in written)
    for path in written:
        with Image.open(path) as image:
            assert image.size[0] > 300


def test_plot_of_a_folder_that_is_no_run(tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 2
    assert "biograd: error:" in capsys.readouterr().err


def test_compare_resumes_from_its_folder_alone(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "--rules", "bp,fa", "--seeds", "0,1", *QUICK, "--lr", "0.07",
                 "--out", str(out)]) == 0
    shutil.rmtree(out / "fa-seed1")  # as if stopped before its turn
    capsys.readouterr()
    assert main(["compare", "--out", str(out), "--resume"]) == 0  # no other option
    again, first = (yaml.safe_load((out / run / "config.yaml").read_text())
                    for run in ("fa-seed1", "fa-seed0"))
    assert again["lr"] == 0.07 and again["seed"] == 1
    assert {k: v for k, v in again.items() if k not in ("seed", "out", "resume")} == {
        k: v for k, v in first.items() if k not in ("seed", "out", "resume")}
    report = (out / "report.md").read_text()
    assert "| `bp` | 2 (0, 1) |" in report and "| `fa` | 2 (0, 1) |" in report


def test_a_resumed_compare_reads_its_task(tmp_path):
    from biograd.cli import _task_of

    (tmp_path / "compare.yaml").write_text(yaml.safe_dump({"task": "detection"}))
    assert _task_of(["compare", "--out", str(tmp_path), "--resume"]) == "detection"
    assert _task_of(["compare", "--out", str(tmp_path)]) == "classification"  # a new one
    assert _task_of(["compare", f"--out={tmp_path}", "--resume", "--task",
                     "classification"]) == "classification"


def test_compiled_runs_each_compile_afresh(tmp_path, monkeypatch):
    """With --compile, dynamo's caches are dropped before each run, so that a run after dfa's
    (whose graph breaks at its layers) does not match dfa's compiled entries and run in
    pieces (docs/performance.md)."""
    import torch._dynamo

    from biograd.cli import main

    events = []
    monkeypatch.setattr(torch._dynamo, "reset", lambda: events.append("reset"))
    monkeypatch.setattr(torch, "compile", lambda m, mode: events.append("compile") or m)
    assert main(["compare", "--rules", "dfa,fa", "--data", "digits", "--model", "small_cnn",
                 "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "16", "--compile",
                 "--progress", "none", "--tensorboard", "false", "--out",
                 str(tmp_path / "cmp")]) == 0
    assert events == ["reset", "compile", "reset", "compile"]
