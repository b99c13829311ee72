"""`biograd detect` and `biograd make-shapes`: a short RetinaNet run on tiny synthetic shapes."""

import json
import math

import pytest
import torch

import biograd
from biograd.cli import main
from biograd.engine import checkpoint

TIMING = {"epoch_seconds", "images_per_second", "elapsed_seconds"}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    assert main(["make-shapes", str(out), "--train", "8", "--val", "4", "--size", "64"]) == 0
    return out


def detect(shapes, out, *extra):
    return main(["detect", "--data", str(shapes), "--steps-per-epoch", "2", "--batch-size", "2",
                 "--min-size", "64", "--max-size", "64", "--fpn-channels", "32",
                 "--angle-batch", "2", "--progress", "none", "--tensorboard", "false",
                 "--out", str(out), *extra])


@pytest.mark.parametrize("rule", biograd.list_rules())
def test_detect_trains_and_evaluates(tmp_path, shapes, rule):
    out = tmp_path / "run"
    assert detect(shapes, out, "--rule", rule, "--epochs", "1") == 0
    (line,) = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    for key in ("AP", "AP50", "AP75", "AP_small", "AP_medium", "train_loss",
                "train_classification", "train_bbox_regression", "mean_weight_angle"):
        assert key in line, key
    assert line["weight_angles"] and (rule == "bp" or line["gradient_angles"])
    state = torch.load(out / checkpoint.NAME, weights_only=True)
    assert state["epoch"] == 1 and state["config"]["rule"] == rule
    table = (out / "coco.md").read_text().splitlines()
    assert table[0].startswith("| COCO metric (%) | final (epoch 1)")
    assert [row.split(" | ")[0] for row in table[2:]] == [
        "| AP", "| AP50", "| AP75", "| AP_small", "| AP_medium", "| AP_large"]


def test_detect_resumes_exactly(tmp_path, shapes):
    assert detect(shapes, tmp_path / "whole", "--rule", "brsf", "--epochs", "2") == 0
    assert detect(shapes, tmp_path / "parts", "--rule", "brsf", "--epochs", "1") == 0
    assert detect(shapes, tmp_path / "parts", "--rule", "brsf", "--epochs", "2",
                  "--resume") == 0
    a, b = (torch.load(tmp_path / name / checkpoint.NAME, weights_only=True)
            for name in ("whole", "parts"))
    assert a["epoch"] == b["epoch"] == 2
    for key, value in a["model"].items():
        if key.endswith("_extra_state"):
            assert value == b["model"][key], key
        else:
            assert torch.equal(value, b["model"][key]), key

    def lines(name):
        return [{k: v for k, v in json.loads(s).items() if k not in TIMING}
                for s in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]

    assert lines("whole") == lines("parts")


def test_detect_stops_on_a_non_finite_loss(tmp_path, shapes, monkeypatch):
    from biograd.engine import detect as engine

    real, calls = engine.loss, []

    def poisoned(runner, batch):
        total, n, extra = real(runner, batch)
        calls.append(1)
        return (total * float("nan") if len(calls) == 3 else total), n, extra

    monkeypatch.setattr(engine, "loss", poisoned)
    out = tmp_path / "run"
    assert detect(shapes, out, "--epochs", "2", "--angle-batch", "0") == 3
    assert json.loads((out / "status.json").read_text())["status"] == "diverged"
    assert torch.load(out / checkpoint.NAME, weights_only=True)["epoch"] == 1


def test_detect_under_bf16_autocast(tmp_path, shapes):
    out = tmp_path / "run"
    assert detect(shapes, out, "--rule", "ss", "--epochs", "1", "--amp", "bf16") == 0
    (line,) = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    assert math.isfinite(line["train_loss"]) and "AP" in line


def test_detect_errors_are_one_line(tmp_path, capsys):
    assert main(["detect", "--data", str(tmp_path / "nothing"), "--out",
                 str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("biograd: error:") and "nothing" in err[-1]


def test_compare_detection_reports_ap(tmp_path, shapes):
    import csv

    out = tmp_path / "cmp"
    argv = ["compare", "--task", "detection", "--rules", "bp,ss", "--data", str(shapes),
            "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "2", "--min-size", "64",
            "--max-size", "64", "--angle-batch", "0", "--progress", "none", "--tensorboard",
            "false", "--out", str(out)]
    assert main(argv) == 0
    report = (out / "report.md").read_text()
    assert "best AP (%)" in report and "`bp`" in report and "`ss`" in report
    assert "model RetinaNet resnet18 FPN" in report
    with open(out / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["rule"] for r in rows] == ["bp", "ss"] and "best_AP" in rows[0]
    assert (out / "accuracy.png").stat().st_size > 0
