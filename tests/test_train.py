"""`biograd train`: a short run of each rule, exact resume, atomic checkpoints, the NaN stop,
and one-line errors for bad input."""

import json
import math
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml
from checks import stop_in_epoch

import biograd
from biograd.config import TrainConfig, resolve
from biograd.engine import checkpoint, classify, loop
from biograd.errors import Diverged
from biograd.models import small_cnn

TIMING = {"epoch_seconds", "images_per_second", "elapsed_seconds"}


def quick(tmp_path, name="run", **overrides) -> TrainConfig:
    """A run of a couple of steps on the bundled digits."""
    values = dict(data="digits", model="small_cnn", epochs=1, steps_per_epoch=2, batch_size=16,
                  out=str(tmp_path / name), progress="none", tensorboard=False, angle_batch=16)
    values.update(overrides)
    return resolve(**values)


def interrupt(monkeypatch, name: str, when, cfg: TrainConfig) -> None:
    """Train `cfg` with a KeyboardInterrupt raised from loop.`name` the first time
    `when(*its arguments)` holds (a stop mid-run), then put loop.`name` back."""
    real = getattr(loop, name)

    def stopping(*args):
        if when(*args):
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(loop, name, stopping)
    with pytest.raises(KeyboardInterrupt):
        classify.train(cfg)
    monkeypatch.setattr(loop, name, real)


def metrics(path):
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("rule", biograd.list_rules())
def test_two_steps_of_each_rule(tmp_path, rule):
    # dfa_blocks needs blocks, which small_cnn has none of that "auto" knows: its convolutions
    cfg = quick(tmp_path, rule=rule, rule_options={"dfa_blocks": {"blocks": "0,3,7,10"}})
    classify.train(cfg)
    out = tmp_path / "run"
    (line,) = metrics(out)
    assert line["epoch"] == 1 and line["rule"] == rule
    for key in ("train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "lr",
                "mean_weight_angle", "images_per_second"):
        assert key in line, key
    model = biograd.convert(small_cnn(), cfg.rule_for(rule), last=cfg.last_rule)
    assert list(line["weight_angles"]) == [name for name, layer in biograd.feedback_layers(model)
                                           if not layer.learning_rule.reads_output]  # no W·B
    assert json.loads((out / "status.json").read_text())["status"] == "finished"
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved == cfg.to_dict()
    state = torch.load(out / checkpoint.NAME, weights_only=True)
    assert state["epoch"] == 1 and state["config"] == cfg.to_dict()


@pytest.mark.parametrize("rule", ["brsf", "dfa"])  # a per-step draw; B from the seed alone
def test_resume_continues_bit_for_bit(tmp_path, monkeypatch, rule):
    common = dict(rule=rule, last_rule=rule, epochs=3, steps_per_epoch=3, schedule="cosine")
    whole = quick(tmp_path, "whole", **common)
    classify.train(whole)

    interrupt(monkeypatch, "train_one_epoch", lambda ctx, loader, epoch: epoch == 3,
              quick(tmp_path, "parts", **common))
    assert len(metrics(tmp_path / "parts")) == 2
    classify.train(quick(tmp_path, "parts", resume=True, **common))

    a = torch.load(tmp_path / "whole" / checkpoint.NAME, weights_only=True)
    b = torch.load(tmp_path / "parts" / checkpoint.NAME, weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    strip = [{k: v for k, v in m.items() if k not in TIMING} for m in metrics(tmp_path / "whole")]
    again = [{k: v for k, v in m.items() if k not in TIMING} for m in metrics(tmp_path / "parts")]
    assert strip == again


def test_resume_needs_only_the_run_folder(tmp_path, monkeypatch):
    # training.md: "biograd train --out runs/fm-ss --resume   # continue after a stop"
    from biograd.cli import main

    flags = ["--rule", "kp", "--model", "small_cnn", "--epochs", "2", "--steps-per-epoch",
             "2", "--batch-size", "8", "--lr", "0.02", "--schedule", "step", "--step-size", "1",
             "--progress", "none", "--tensorboard", "false", "--angle-batch", "0"]
    assert main(["train", *flags, "--out", str(tmp_path / "whole")]) == 0
    resume_epochs = stop_in_epoch(monkeypatch, 2)
    assert main(["train", *flags, "--out", str(tmp_path / "parts")]) == 130
    resume_epochs()
    assert main(["train", "--out", str(tmp_path / "parts"), "--resume"]) == 0
    a, b = (torch.load(tmp_path / n / checkpoint.NAME, weights_only=True)
            for n in ("whole", "parts"))
    assert a["config"] == {**b["config"], "out": a["config"]["out"], "resume": False}
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    # an option given again overrides the saved one, and is checked against it; a refused
    # resume is no start: environment.jsonl gains no line
    starts = (tmp_path / "parts" / "environment.jsonl").read_text().count("\n")
    assert starts == 2
    assert main(["train", "--out", str(tmp_path / "parts"), "--resume", "--lr", "0.1"]) == 2
    assert (tmp_path / "parts" / "environment.jsonl").read_text().count("\n") == starts


@pytest.mark.parametrize("rule", ["brsf", "wm", "dfa"])
def test_measuring_angles_moves_nothing_training_uses(tmp_path, rule):
    # rank 0 alone measures: any state the measurement moved would split the ranks
    common = dict(rule=rule, epochs=2, steps_per_epoch=3)
    classify.train(quick(tmp_path, "measured", angle_batch=16, angle_every=1, **common))
    classify.train(quick(tmp_path, "unmeasured", angle_batch=0, **common))
    a, b = (torch.load(tmp_path / n / checkpoint.NAME, weights_only=True)
            for n in ("measured", "unmeasured"))
    for key in ("model", "optimizer", "rng"):
        assert repr(a[key]) == repr(b[key]), key
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    losses = [[m["train_loss"] for m in metrics(tmp_path / n)] for n in ("measured",
                                                                          "unmeasured")]
    assert losses[0] == losses[1]


def test_the_engines_angles_restore_frozen_layers_state():
    from types import SimpleNamespace

    model = biograd.convert(small_cnn(), "brsf", last="bp", seed=0)
    first = next(layer for _, layer in biograd.feedback_layers(model))
    first.requires_grad_(False)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    model(x).sum().backward()  # one draw, so counters are not at their start
    ctx = SimpleNamespace(model=model, cfg=SimpleNamespace(rule="brsf"), task=SimpleNamespace(
        angle_batch=(x, y), angle_loss=biograd.cross_entropy_loss))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    out = loop.angles(ctx)
    assert out["gradient_angles"] and out["weight_angles"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert torch.equal(torch.get_rng_state(), rng)


def test_a_save_that_fails_midway_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / checkpoint.NAME
    checkpoint.save_atomic({"epoch": 1, "w": torch.ones(3)}, path)

    def broken_save(obj, fh):
        fh.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", broken_save)
    with pytest.raises(OSError):
        checkpoint.save_atomic({"epoch": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == [checkpoint.NAME]


def test_a_process_killed_while_saving_leaves_a_loadable_checkpoint(tmp_path):
    path = tmp_path / checkpoint.NAME
    script = textwrap.dedent(f"""
        import sys, torch
        from biograd.engine.checkpoint import save_atomic
        big = torch.randn(4_000_000)
        i = 0
        while True:
            i += 1
            save_atomic({{"epoch": i, "w": big}}, {str(path)!r})
            print(i, flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    for _ in range(3):  # let it complete a few saves, then kill it mid-way through another
        proc.stdout.readline()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    state = torch.load(path, weights_only=True)
    assert state["epoch"] >= 3 and state["w"].shape == (4_000_000,)


def test_a_non_finite_loss_stops_cleanly(tmp_path, monkeypatch):
    real = torch.nn.functional.cross_entropy
    training_calls = []

    def poisoned(logits, y, *args, **kwargs):
        loss = real(logits, y, *args, **kwargs)
        if torch.is_grad_enabled():  # training, not evaluation
            training_calls.append(1)
            if len(training_calls) == 4:  # epoch 2, step 2
                return loss * float("nan")
        return loss

    monkeypatch.setattr(classify.F, "cross_entropy", poisoned)
    cfg = quick(tmp_path, epochs=3, steps_per_epoch=2, angle_batch=0)
    with pytest.raises(Diverged, match="at epoch 2, step 2") as info:
        classify.train(cfg)
    assert "last good checkpoint (epoch 1)" in str(info.value)
    out = tmp_path / "run"
    assert torch.load(out / checkpoint.NAME, weights_only=True)["epoch"] == 1
    assert json.loads((out / "status.json").read_text())["status"] == "diverged"
    assert [m["epoch"] for m in metrics(out)] == [1]


def test_shipped_configs_resolve(tmp_path):
    import argparse
    from pathlib import Path

    from biograd.config import DetectConfig, add_arguments

    root = Path(__file__).resolve().parents[1] / "biograd" / "configs"
    rules = set(biograd.rules.compared_rules())  # alignment is composed: it has none
    detecting = {r for r in rules if not biograd.get_rule(r).reads_output}  # dfa...: none
    # training.md: "the seed's ImageNet recipe for ResNet-18 and AlexNet under every rule"
    # (that AlexNet can take: it has no blocks for dfa_blocks)
    blockless = {r for r in rules if biograd.rules.rule_class(r).every_model}
    for folder, cls, models in (("imagenet", TrainConfig, {"resnet18": rules,
                                                           "alexnet": blockless}),
                                ("coco", DetectConfig, {"retinanet-r18": detecting})):
        parser = argparse.ArgumentParser()
        add_arguments(parser, cls)
        shipped: dict[str, set[str]] = {}
        for path in sorted((root / folder).glob("*.yaml")):
            cfg = resolve(parser.parse_args(["--config", str(path)]), cls)
            assert path.stem.endswith(f"-{cfg.rule}") and cfg.epochs > 0, path
            shipped.setdefault(path.stem.removesuffix(f"-{cfg.rule}"), set()).add(cfg.rule)
            by_name = resolve(parser.parse_args(["--config", f"{folder}/{path.stem}"]), cls)
            assert by_name == cfg, path  # the installed recipe, by its name
        assert shipped == models, folder


def test_bf16_channels_last_workers_and_tensorboard(tmp_path):
    cfg = quick(tmp_path, rule="kp", amp="bf16", channels_last=True, workers=1,
                tensorboard=True)
    classify.train(cfg)
    out = tmp_path / "run"
    (line,) = metrics(out)
    assert math.isfinite(line["train_loss"])
    events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_angle_every_logs_steps_and_resume_trims_them(tmp_path, monkeypatch):
    common = dict(rule="wm", epochs=3, steps_per_epoch=3, angle_every=1)
    classify.train(quick(tmp_path, "whole", **common))
    lines = [json.loads(x) for x in (tmp_path / "whole" / "angles.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(10))  # step 0: the starting angles
    assert [x["epoch"] for x in lines[:4]] == [0.0, 1 / 3, 2 / 3, 1.0]
    assert lines[0]["mean_weight_angle"] > lines[-1]["mean_weight_angle"]  # wm aligns
    # W's excess kurtosis per converted layer, as the checkpoint's W gives it at the end
    state = torch.load(tmp_path / "whole" / checkpoint.NAME, weights_only=True)["model"]
    assert set(lines[-1]["weight_kurtosis"]) == set(lines[-1]["weight_angles"])
    for name, value in lines[-1]["weight_kurtosis"].items():
        w = state[f"{name}.weight"].double().flatten()
        expected = ((w - w.mean()) ** 4).mean() / ((w - w.mean()) ** 2).mean() ** 2 - 3
        assert value == pytest.approx(expected.item(), rel=1e-9), name

    interrupt(monkeypatch, "step_angles", lambda ctx, epoch, step: step == 8,
              quick(tmp_path, "parts", **common))
    cut = (tmp_path / "parts" / "angles.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in cut] == list(range(8))  # 7: inside epoch 3
    status = json.loads((tmp_path / "parts" / "status.json").read_text())
    assert status["status"] == "interrupted" and "--resume continues" in status["message"]
    for name in ("angles.jsonl", "metrics.jsonl"):  # what a kill mid-write leaves
        with open(tmp_path / "parts" / name, "a") as fh:
            fh.write('{"step": 8, "epo')
    classify.train(quick(tmp_path, "parts", resume=True, **common))
    again = [json.loads(x) for x in (tmp_path / "parts" / "angles.jsonl").read_text().splitlines()]
    assert again == lines
    assert [m["epoch"] for m in metrics(tmp_path / "parts")] == [1, 2, 3]
    assert json.loads((tmp_path / "parts" / "status.json").read_text())["status"] == "finished"


def test_a_fresh_start_after_a_stop_in_epoch_one_keeps_nothing_of_it(tmp_path, monkeypatch):
    common = dict(rule="wm", epochs=1, steps_per_epoch=3)
    interrupt(monkeypatch, "step_angles", lambda ctx, epoch, step: step == 2,
              quick(tmp_path, angle_every=1, **common))
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["status"] == "interrupted" and "start it again" in status["message"]
    classify.train(quick(tmp_path, angle_every=2, **common))  # no checkpoint: starts afresh
    steps = [json.loads(x)["step"]
             for x in (tmp_path / "run" / "angles.jsonl").read_text().splitlines()]
    assert steps == [0, 2]  # every second step: none of the stopped run's 0 and 1


def test_a_run_that_fails_says_so(tmp_path, monkeypatch):
    def broken(*args):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(loop, "train_one_epoch", broken)
    with pytest.raises(RuntimeError):
        classify.train(quick(tmp_path))
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status == {"status": "failed", "message": "RuntimeError: out of memory; no epoch "
                                                     "had finished: start it again"}


def test_model_options_reach_the_builder(tmp_path):
    classify.train(quick(tmp_path, model="resnet_small",
                         model_options={"width": 4, "blocks": 1, "stem_stride": 2}))
    state = torch.load(tmp_path / "run" / checkpoint.NAME, weights_only=True)
    assert state["model"]["conv1.weight"].shape == (4, 1, 3, 3)
    assert state["config"]["model_options"] == {"width": 4, "blocks": 1, "stem_stride": 2}


@pytest.mark.parametrize(("rule", "fresh"), [("brsf", "full"), ("brsf", "window"), ("ss", None)])
def test_compile_warns_for_rules_it_does_not_suit(tmp_path, monkeypatch, caplog, rule, fresh):
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda m, mode: compiled.append(mode) or m)
    options = {"brsf": {"fresh": fresh}} if fresh else {}
    with caplog.at_level("WARNING", logger="biograd"):
        classify.train(quick(tmp_path, rule=rule, rule_options=options, compile=True,
                             compile_mode="reduce-overhead"))
    assert compiled == ["reduce-overhead"]
    warned = [r.getMessage() for r in caplog.records if "--compile" in r.getMessage()]
    if fresh == "full":
        assert warned == [biograd.get_rule("brsf", fresh="full").compile_note]
        assert "recompiles at every step" in warned[0]
    else:
        assert warned == []


def test_the_loop_reads_the_device_once_per_log_interval(tmp_path, monkeypatch):
    reads = []
    package = os.path.dirname(biograd.__file__) + os.sep

    def counting(real):
        def read(t):  # biograd's own reads of a tensor's values (torch's DataLoader has one)
            if sys._getframe(1).f_code.co_filename.startswith(package):
                reads.append(1)
            return real(t)
        return read

    for name in ("item", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, counting(getattr(torch.Tensor, name)))
    cfg = quick(tmp_path, epochs=1, steps_per_epoch=7, log_interval=3, angle_batch=0)
    counts = []
    real_epoch = loop.train_one_epoch

    def counted(ctx, loader, epoch):
        reads.clear()
        out = real_epoch(ctx, loader, epoch)
        counts.append(len(reads))
        return out

    monkeypatch.setattr(loop, "train_one_epoch", counted)
    classify.train(cfg)
    assert counts == [3 + 1]  # steps 3 and 6, the last step (7), and the epoch's sums


def test_progress_lines_give_loss_lr_speed_and_eta(tmp_path, caplog):
    cfg = quick(tmp_path, epochs=2, steps_per_epoch=5, log_interval=2, angle_batch=0,
                progress="lines")
    with caplog.at_level("INFO", logger="biograd"):
        classify.train(cfg)
    lines = [r.getMessage() for r in caplog.records if ", step " in r.getMessage()]
    steps = [line.split(", step ")[1].split(":")[0] for line in lines]
    assert steps == ["2/5", "4/5", "5/5"] * 2  # every interval, and the last step
    assert all(k in lines[0] for k in ("epoch 1/2", "loss ", "lr ", "img/s", "eta "))


def test_resume_with_other_epochs_needs_accepting(tmp_path, capsys):
    from biograd.cli import main

    argv = ["train", "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "16",
            "--progress", "none", "--tensorboard", "false", "--angle-batch", "0",
            "--out", str(tmp_path / "run")]
    assert main(argv) == 0
    longer = [*argv[:2], "3", *argv[3:], "--resume"]
    assert main(longer) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "epochs=1 (now 3)" in err[-1] and "--accept-changes" in err[-1]
    assert main([*longer, "--accept-changes"]) == 0
    lrs = [m["lr"] for m in metrics(tmp_path / "run")]
    # the cosine schedule recomputed for 3 epochs from the end of epoch 1 (the logged lr is
    # the one the epoch's last step, 0-based 2e - 1, trained with)
    expected = [0.05 * loop.lr_factor(resolve(epochs=3), 2)(2 * e - 1) for e in (2, 3)]
    assert lrs[1:] == pytest.approx(expected)


def test_the_logged_lr_is_the_one_used_and_warm_up_never_passes_it(tmp_path, caplog):
    for warmup in (0.3, 0.5, 0.7, 2.0):  # in epochs of 3 steps: ramps of 0.9 to 6 steps
        factors = [loop.lr_factor(resolve(epochs=3, warmup_epochs=warmup,
                                          schedule="constant"), 3)(t) for t in range(9)]
        assert max(factors) == 1.0 and factors == sorted(factors), (warmup, factors)
    cfg = quick(tmp_path, epochs=2, steps_per_epoch=3, schedule="step", step_size=1,
                gamma=0.1, progress="lines", log_interval=1, angle_batch=0)
    with caplog.at_level("INFO", logger="biograd"):
        classify.train(cfg)
    assert [m["lr"] for m in metrics(tmp_path / "run")] == pytest.approx([0.05, 0.005])
    lines = [r.getMessage() for r in caplog.records if ", step " in r.getMessage()]
    assert [line.split("lr ")[1].split(",")[0] for line in lines] == ["0.05"] * 3 + ["0.005"] * 3


def test_sync_bn_converts_in_place_and_refuses_the_cpu(caplog):
    from torch import nn

    from biograd.engine.distributed import Dist
    from biograd.errors import UsageError

    model = biograd.convert(small_cnn(), "fa", seed=0)
    params = dict(model.named_parameters())
    cfg, two = resolve(sync_bn=True), Dist(rank=0, world_size=2)
    synced = loop.sync_batchnorm(model, cfg, two, torch.device("cuda"))  # no CUDA op runs
    assert any(isinstance(m, nn.SyncBatchNorm) for m in synced.modules())
    assert not any(type(m) is nn.BatchNorm2d for m in synced.modules())
    assert all(p is params[n] for n, p in synced.named_parameters())
    with caplog.at_level("INFO", logger="biograd"):
        assert loop.sync_batchnorm(model, cfg, Dist(), torch.device("cpu")) is model  # alone
    assert "one process has no batch statistics to share" in caplog.text
    with pytest.raises(UsageError, match="GPU tensors only"):
        loop.sync_batchnorm(small_cnn(), cfg, two, torch.device("cpu"))


def test_the_run_folder_keeps_its_log_and_environment(tmp_path):
    from biograd.cli import main

    out = tmp_path / "run"
    argv = ["train", "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "16",
            "--progress", "lines", "--log-interval", "1", "--tensorboard", "false",
            "--angle-batch", "0", "--out", str(out)]
    assert main(argv) == 0
    log_lines = (out / "train.log").read_text().splitlines()
    assert any("layers converted" in line for line in log_lines)  # the report, once
    assert sum("layers converted" in line for line in log_lines) == 1
    assert any(" INFO epoch 1/1, step 2/2: loss " in line for line in log_lines)
    assert log_lines[0][:4].isdigit()  # each line starts with its time
    (start,) = [json.loads(line) for line in (out / "environment.jsonl").open()]
    assert start["command"] == ["biograd", *argv]
    for key in ("torch", "device", "world_size", "git_commit", "python"):
        assert key in start, key
    assert start["device"] == "cpu" and start["world_size"] == 1


@pytest.mark.parametrize(("rule", "shown", "absent"), [
    ("ss", "mean angle(W, B) ", "to bp's gradient"),
    ("dfa", "mean angle to bp's gradient ", "angle(W, B)"),  # dfa's B is not W's shape
    ("bp", "mean angle(W, B) ", "to bp's gradient"),  # B = W: 0°
])
def test_the_epoch_line_shows_the_angle_the_rule_has(tmp_path, rule, shown, absent):
    from biograd.cli import main

    out = tmp_path / rule
    assert main(["train", "--data", "digits", "--model", "small_cnn", "--rule", rule,
                 "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "16",
                 "--progress", "none", "--tensorboard", "false", "--angle-batch", "16",
                 "--out", str(out)]) == 0
    line = next(line for line in (out / "train.log").read_text().splitlines()
                if "epoch 1/1: " in line)
    assert "nan" not in line and absent not in line, line
    value = float(line.split(shown)[1].split("°")[0])
    assert value == 0 if rule == "bp" else 0 < value < 180, line
