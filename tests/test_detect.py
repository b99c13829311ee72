"""`biograd detect` and `biograd make-shapes`: a short RetinaNet run on tiny synthetic shapes."""

import argparse
import json
import math
from pathlib import Path

import pytest
import torch

import biograd
from biograd.cli import main
from biograd.engine import checkpoint

#: Rules a detector runs on: not dfa, drtp or dfa_blocks, which read the model's output, every
#: anchor's (see config).
TRANSPOSED = [r for r in biograd.list_rules() if not biograd.get_rule(r).reads_output]
TIMING = {"epoch_seconds", "images_per_second", "elapsed_seconds"}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    assert main(["make-shapes", str(out), "--train", "8", "--val", "4", "--size", "64"]) == 0
    return out


def test_a_direct_rule_is_refused_in_one_line(tmp_path, shapes, capsys):
    for flags in (["--rule", "dfa"], ["--parts", '{"head": "dfa"}']):
        assert detect(shapes, tmp_path / "run", *flags) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "dfa projects one output error" in err[0], err


def detect(shapes, out, *extra):
    return main(["detect", "--data", str(shapes), "--steps-per-epoch", "2", "--batch-size", "2",
                 "--min-size", "64", "--max-size", "64", "--fpn-channels", "32",
                 "--angle-batch", "2", "--progress", "none", "--tensorboard", "false",
                 "--out", str(out), *extra])


@pytest.mark.parametrize("rule", TRANSPOSED)
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
    # a longer run than the first asked for: the step schedule's epochs do not move
    assert detect(shapes, tmp_path / "parts", "--rule", "brsf", "--epochs", "2",
                  "--resume", "--accept-changes") == 0
    a, b = (torch.load(tmp_path / name / checkpoint.NAME, weights_only=True)
            for name in ("whole", "parts"))
    assert a["epoch"] == b["epoch"] == 2
    for key, value in a["model"].items():
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


def _feedback(state):
    return {k: v for k, v in state.items() if k.endswith(".feedback")}


@pytest.mark.parametrize(("extra", "scale"), [
    ((), "weight"),                                        # the default --feedback-scale
    (("--feedback-scale", "seed"), "seed"),
    (("--rule-options", "{fa: {scale: seed}}"), "seed"),   # a rule's own option wins
])
def test_detect_draws_feedback_at_the_scale_asked(tmp_path, shapes, extra, scale):
    from biograd.config import DetectConfig
    from biograd.detection import build_detection_data, build_retinanet

    out = tmp_path / "run"
    assert detect(shapes, out, "--rule", "fa", "--epochs", "1", "--angle-batch", "0",
                  *extra) == 0
    saved = _feedback(torch.load(out / checkpoint.NAME, weights_only=True)["model"])
    assert any(k.startswith("head.") for k in saved)

    def built(s):  # the same detector, built with the rule's scale stated outright
        model = build_retinanet(
            num_classes=build_detection_data(shapes).num_classes, norm="batchnorm",
            rule=biograd.get_rule("fa", scale=s), fpn_channels=32, min_size=64, max_size=64,
            head_norm=DetectConfig().head_norm)
        return _feedback(model.state_dict())

    expected, other = built(scale), built({"weight": "seed", "seed": "weight"}[scale])
    assert saved.keys() == expected.keys()
    for key, value in saved.items():  # fa's B is drawn once and never learns
        assert torch.equal(value, expected[key]), key
    heads = [k for k in saved if k.startswith("head.")]
    assert not any(torch.equal(saved[k], other[k]) for k in heads)


COCO = sorted(Path(__file__).parents[1].glob("biograd/configs/coco/*.yaml"))


@pytest.mark.parametrize("path", COCO, ids=lambda p: p.stem)
def test_coco_configs_draw_feedback_at_the_weight_scale(path):
    from dataclasses import fields

    from biograd.config import DetectConfig, resolve
    from biograd.engine.detect import rule_for

    cfg = resolve(argparse.Namespace(config=path), DetectConfig)
    rule = rule_for(cfg, cfg.rule)
    assert rule.name == cfg.rule
    if "scale" in {f.name for f in fields(rule)}:
        assert rule.scale == "weight"


@pytest.mark.parametrize("path", COCO, ids=lambda p: p.stem)
def test_coco_configs_keep_torchvisions_heads_and_anchors(path):
    from biograd.config import DetectConfig, resolve

    cfg = resolve(argparse.Namespace(config=path), DetectConfig)
    assert (cfg.head_norm, cfg.anchor_scale, cfg.min_size, cfg.max_size) == ("none", 1.0, 800, 1333)


def test_validation_scores_one_image_at_a_time_and_the_angle_batch_reads_only_its_own(
        tmp_path, shapes, monkeypatch):
    # a batch pads its images to the largest, which the heads see: AP would depend on who
    # shares a batch; and the angle batch reads its few images from the index, not them all
    from biograd.config import DetectConfig, resolve
    from biograd.detection.data import BoxDataset
    from biograd.engine import detect as engine
    from biograd.engine import distributed, loop

    reads = []
    real = BoxDataset.__getitem__
    monkeypatch.setattr(BoxDataset, "__getitem__", lambda self, i: reads.append(i) or
                        real(self, i))
    cfg = resolve(cls=DetectConfig, data=str(shapes), batch_size=3, angle_batch=2,
                  fpn_channels=32, out=str(tmp_path / "run"))
    alone = distributed.Dist()
    task = engine.build(cfg, alone, torch.device("cpu"))
    assert len(reads) == 2 and len(task.angle_batch[0]) == 2
    val = loop.make_loader(task, task.val_set, alone, cfg, torch.device("cpu"), False, 0)
    assert [len(images) for images, _ in val] == [1] * len(task.val_set)
    train = loop.make_loader(task, task.train_set, alone, cfg, torch.device("cpu"), True, 0)
    assert len(next(iter(train))[0]) == 3


def test_a_validation_split_without_boxes_measures_no_angles(tmp_path, shapes, caplog):
    import shutil

    data = tmp_path / "noboxes"
    shutil.copytree(shapes, data)
    path = data / "annotations" / "instances_val.json"
    coco = json.loads(path.read_text())
    path.write_text(json.dumps({**coco, "annotations": []}))
    with caplog.at_level("INFO", logger="biograd"):
        assert detect(data, tmp_path / "run", "--epochs", "1") == 0
    assert "no validation image has a box" in caplog.text


def test_missing_shapes_are_made_whole_or_not_at_all(tmp_path, monkeypatch, capsys):
    import biograd.detection as detection

    def broken(out, **kwargs):
        (Path(out) / "train").mkdir(parents=True)
        raise KeyboardInterrupt  # stopped half-way

    monkeypatch.setattr(detection, "make_shapes", broken)
    assert detect(tmp_path / "shapes", tmp_path / "run", "--epochs", "1") == 130
    assert sorted(p.name for p in tmp_path.iterdir() if "shapes" in p.name) == []


def test_eval_of_a_detection_run_refuses_data_root_in_one_line(tmp_path, shapes, capsys):
    out = tmp_path / "run"
    assert detect(shapes, out, "--epochs", "1", "--angle-batch", "0") == 0
    assert main(["eval", str(out), "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("biograd: error: --data-root") and "--data" in err[-1]
