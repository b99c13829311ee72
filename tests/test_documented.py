"""What the docs promise, each sentence held by a test that fails if the sentence stops being
true: the ss rule at W = 0, scaler-skipped steps, dfa's passes in one graph, --last-lr,
kp's own decay in the training loop, compare past a diverged rule, detect making its shapes,
unshare's unreached convolutions, --init-checkpoint from .safetensors, and environment.jsonl
on resume. Each test quotes the sentence it guards."""

import json
import logging

import pytest
import torch
from checks import stop_in_epoch
from torch import nn

import biograd
from biograd.cli import main
from biograd.engine import checkpoint, loop
from biograd.models import small_cnn

QUICK = ["--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "8", "--progress", "none",
         "--tensorboard", "false", "--angle-batch", "8"]

pytestmark = pytest.mark.usefixtures("one_thread")


def built_optimizer(monkeypatch):
    """Record the optimiser (and model) the training loop builds, as the command runs it."""
    seen = {}
    real = loop.build_optimizer

    def spy(cfg, model, groups):
        seen["optimizer"], seen["model"] = real(cfg, model, groups), model
        return seen["optimizer"]

    monkeypatch.setattr(loop, "build_optimizer", spy)
    return seen


def test_ss_at_zero_weights_sends_plus_s_times_delta_down():
    # docs/rules.md (ss): "At a weight of exactly 0 it uses +s ... so zero-initialised layers
    # still pass errors down."
    layer = biograd.convert(nn.Linear(5, 3, bias=False), "ss")
    with torch.no_grad():
        layer.weight.zero_()
    x = torch.randn(4, 5, requires_grad=True)
    dy = torch.randn(4, 3)
    layer(x).backward(dy)
    s = 1 / 5 ** 0.5  # a linear layer's s: 1/sqrt(fan_in)
    expected = dy @ (s * torch.ones(3, 5))  # δx = (s · 1)ᵀ δy, row-major: δy B
    assert x.grad.abs().sum() > 0
    torch.testing.assert_close(x.grad, expected)


@pytest.mark.parametrize("rule", ["wm", "brsf"])
def test_a_step_the_gradient_scaler_skips_runs_no_after_step(rule):
    # docs/python.md: "A step a gradient scaler skips runs no `after_step`."
    model = biograd.convert(nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)), rule,
                            last="bp")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    biograd.attach(opt, model)
    scaler = torch.amp.GradScaler("cpu")
    assert scaler.is_enabled()
    layer = model[0]
    x = torch.randn(2, 4)

    def step(factor: float) -> None:
        scaler.scale(model(x).square().mean() * factor).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()

    before = int(layer.feedback_step)
    weight = layer.weight.detach().clone()
    step(float("inf"))  # a non-finite loss: the scaler skips the optimiser step
    assert torch.equal(layer.weight, weight)  # skipped indeed
    assert int(layer.feedback_step) == before
    step(1.0)
    assert int(layer.feedback_step) == before + 1


def test_dfa_passes_before_one_backward_each_keep_their_own_error():
    # docs/rules.md (dfa): "Several forward passes before one backward (gradient accumulation
    # in one graph) each keep their own e."
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    biograd.convert(model, "dfa", last="bp")
    x1, y1 = torch.randn(3, 4), torch.tensor([0, 1, 2])
    x2, y2 = torch.randn(5, 4), torch.tensor([2, 2, 1, 0, 1])

    def loss(x, y):
        return nn.functional.cross_entropy(model(x), y)

    def grads():
        out = {name: p.grad.clone() for name, p in model.named_parameters()}
        model.zero_grad(set_to_none=True)
        return out

    loss(x1, y1).backward()
    first = grads()
    loss(x2, y2).backward()
    second = grads()
    (loss(x1, y1) + loss(x2, y2)).backward()
    together = grads()
    assert not torch.allclose(first["0.weight"], second["0.weight"])  # the errors differ
    for name, grad in together.items():
        torch.testing.assert_close(grad, first[name] + second[name], msg=name)


def test_last_lr_gives_the_classifier_its_own_learning_rate(tmp_path, monkeypatch):
    # docs/training.md (Recipe): "`--last-rule` ... and `--last-lr` for the classifier"
    seen = built_optimizer(monkeypatch)
    assert main(["train", "--rule", "ss", *QUICK, "--lr", "0.1", "--last-lr", "0.003",
                 "--schedule", "constant", "--out", str(tmp_path / "run")]) == 0
    model, groups = seen["model"], seen["optimizer"].param_groups
    classifier = {id(model[-1].weight), id(model[-1].bias)}  # small_cnn's last Linear
    for group in groups:
        ids = {id(p) for p in group["params"]}
        if ids & classifier:
            assert ids == classifier and group["initial_lr"] == 0.003
        else:
            assert group["initial_lr"] == 0.1
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_kp_decay_in_rule_options_reaches_the_training_loops_optimiser(tmp_path, monkeypatch):
    # docs/training.md (Recipe): "`--rule-options '{kp: {decay: 7e-3}}'` gives the kp layers'
    # W and B a decay of their own, leaving the rest of the network at `--weight-decay`."
    seen = built_optimizer(monkeypatch)
    assert main(["train", "--rule", "kp", "--rule-options", "{kp: {decay: 7e-3}}",
                 "--weight-decay", "1e-4", *QUICK, "--out", str(tmp_path / "run")]) == 0
    model = seen["model"]
    decay = {id(p): g["weight_decay"] for g in seen["optimizer"].param_groups
             for p in g["params"]}
    kp = [layer for _, layer in biograd.feedback_layers(model) if layer.rule == "kp"]
    assert len(kp) == 4  # small_cnn's convolutions; the classifier stays on bp
    own = {id(p) for layer in kp for p in (layer.weight, layer.feedback)}
    assert all(isinstance(layer.feedback, nn.Parameter) for layer in kp)
    for name, p in model.named_parameters():
        assert decay[id(p)] == (7e-3 if id(p) in own else 1e-4), name


def test_compare_reports_a_diverged_rule_and_goes_on(tmp_path):
    # docs/training.md (Divergence): "`compare` reports a diverged rule as such and goes on
    # with the others."
    # kp with a weight decay of 1e30 overflows float32 by its second step: a real divergence,
    # and it runs first, so bp trains after it
    out = tmp_path / "cmp"
    assert main(["compare", "--rules", "kp,bp", "--model", "mlp", "--rule-options",
                 "{kp: {decay: 1e30}}", *QUICK, "--out", str(out)]) == 0

    def status(rule):
        return json.loads((out / rule / "status.json").read_text())["status"]

    assert status("kp") == "diverged" and status("bp") == "finished"
    report = (out / "report.md").read_text()
    (kp_row,) = [line for line in report.splitlines() if line.startswith("| `kp` |")]
    (bp_row,) = [line for line in report.splitlines() if line.startswith("| `bp` |")]
    assert kp_row.rstrip(" |").endswith("diverged") and bp_row.rstrip(" |").endswith("finished")
    assert "non-finite" in report


def test_detect_makes_the_shapes_when_missing_and_trains(tmp_path, monkeypatch):
    # docs/detection.md: "`biograd detect` trains on the shapes (made if missing)"
    import biograd.detection

    real, made = biograd.detection.make_shapes, []

    def few(root, **kwargs):  # the engine's call, with 8 + 4 images to keep the test short
        made.append(root)
        return real(root, **{**kwargs, "train": 8, "val": 4})

    monkeypatch.setattr(biograd.detection, "make_shapes", few)
    data, out = tmp_path / "my-shapes", tmp_path / "run"
    assert not data.exists()
    assert main(["detect", "--data", str(data), "--epochs", "1", "--steps-per-epoch", "2",
                 "--batch-size", "2", "--min-size", "64", "--max-size", "64",
                 "--fpn-channels", "32", "--angle-batch", "2", "--progress", "none",
                 "--tensorboard", "false", "--out", str(out)]) == 0
    assert len(made) == 1 and (data / "annotations").is_dir() and (data / "train").is_dir()
    (line,) = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    assert line["epoch"] == 1 and "AP" in line
    assert json.loads((out / "status.json").read_text())["status"] == "finished"


def test_unshare_leaves_an_unreached_convolution_as_it_is_and_logs_it(caplog):
    # docs/beyond.md (unshare): "a convolution the example input never reaches is left as it
    # is, and logged."
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.Conv2d(1, 2, 3)
            self.spare = nn.Conv2d(1, 2, 3)

        def forward(self, x):
            return self.used(x)

    model = Branchy()
    spare, weight = model.spare, model.spare.weight.detach().clone()
    with caplog.at_level(logging.INFO, logger="biograd"):
        biograd.unshare(model, torch.zeros(1, 1, 8, 8))
    assert isinstance(model.used, biograd.nn.LocallyConnected2d)
    assert model.spare is spare and type(spare) is nn.Conv2d
    assert torch.equal(spare.weight, weight)
    (record,) = [r for r in caplog.records if "does not reach" in r.getMessage()]
    assert "spare" in record.getMessage() and "used" not in record.getMessage()


def test_init_checkpoint_reads_a_safetensors_file(tmp_path):
    # docs/training.md (Saved models): "`--init-checkpoint FILE` starts a run from ... a
    # biograd checkpoint or a `.safetensors` file"
    from safetensors.torch import save_file

    torch.manual_seed(123)  # weights the run's own seed (0) would not make
    plain = small_cnn()
    path = tmp_path / "start.safetensors"
    save_file(plain.state_dict(), path)
    out = tmp_path / "run"
    assert main(["train", "--rule", "fa", *QUICK, "--lr", "1e-9", "--init-checkpoint",
                 str(path), "--out", str(out)]) == 0
    state = torch.load(out / checkpoint.NAME, weights_only=True)["model"]
    for name, value in plain.state_dict().items():
        if name.endswith("weight"):  # a step of lr 1e-9 moves nothing visible
            torch.testing.assert_close(state[name], value, msg=name)
    assert "0.feedback" in state  # fa's B, derived for the loaded weights


def test_environment_gets_one_line_per_start_resumes_included(tmp_path, monkeypatch):
    # docs/training.md (Progress and logs): "`environment.jsonl` gets one line per start
    # (resumes included)"
    out = tmp_path / "run"
    argv = ["train", "--epochs", "2", *QUICK[2:], "--out", str(out)]
    resume_epochs = stop_in_epoch(monkeypatch, 2)
    assert main(argv) == 130  # interrupted after epoch 1
    resume_epochs()
    assert main([*argv, "--resume"]) == 0
    starts = [json.loads(line) for line in (out / "environment.jsonl").open()]
    assert [s["command"] for s in starts] == [["biograd", *argv], ["biograd", *argv, "--resume"]]
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").open()]
    assert epochs == [1, 2]
