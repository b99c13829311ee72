"""drtp: the one-hot targets projected to each layer, and nothing from the output or above.

The identity (Frenkel et al. 2021): in an MLP under drtp, each hidden layer's weight gradient
is the projected targets, masked by its activation's derivative, times its input; the error a
layer sends down is B y*, whatever the weights above it, the loss and the output error are.
"""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import biograd


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(),
                         nn.Linear(12, 4))


def inputs_of(model, names):
    """{name: the input tensor of module `name` at the next forward, with its .grad kept}."""
    seen = {}
    for name in names:
        def keep(module, args, name=name):
            args[0].retain_grad()
            seen[name] = args[0]
        model.get_submodule(name).register_forward_pre_hook(keep)
    return seen


def step(model, x, y, loss=F.cross_entropy):
    """One forward and backward, the targets given first; returns the output (grad kept)."""
    biograd.targets(model, y)
    out = model(x)
    out.retain_grad()
    loss(out, y).backward()
    return out


@pytest.mark.parametrize("last", ["drtp", "bp"])
def test_hidden_layers_learn_from_the_projected_targets_exactly(last):
    model = biograd.convert(mlp(), "drtp", last=last, seed=3)
    x, y = torch.randn(5, 6), torch.tensor([0, 3, 1, 1, 2])
    seen = inputs_of(model, ["2", "4"])
    out = step(model, x, y)
    e, target = out.grad, F.one_hot(y, 4).float()  # (N, K): the output error, y*
    a1, a2 = model[0](x).detach(), model[2](seen["2"]).detach()

    # the error each drtp layer sends down is B y* (+y*, the sign of Frenkel et al.'s code)
    sent = {"2": seen["2"].grad, "4": seen["4"].grad}
    assert torch.equal(sent["2"], target @ model[2].feedback_weight())
    if last == "drtp":
        assert torch.equal(sent["4"], target @ model[4].feedback_weight())
    else:  # the classifier on bp sends Wᵀe, backprop's own
        torch.testing.assert_close(sent["4"], e @ model[4].weight, rtol=1e-6, atol=1e-7)
    # each layer's weight gradient: the error arriving at its output times its input, exactly
    assert torch.equal(model[0].weight.grad, (sent["2"] * (a1 > 0)).T @ x)
    assert torch.equal(model[2].weight.grad, (sent["4"] * (a2 > 0)).T @ seen["2"].detach())
    assert torch.equal(model[4].weight.grad, e.T @ seen["4"].detach())  # the true local one
    assert torch.equal(model[0].bias.grad, (sent["2"] * (a1 > 0)).sum(0))


def test_neither_the_loss_nor_the_weights_above_change_what_hidden_layers_learn():
    x, y = torch.randn(5, 6), torch.tensor([0, 3, 1, 1, 2])
    g = torch.randn(5, 4)
    losses = {"cross-entropy": F.cross_entropy,
              "any output error": lambda out, y: (out * g).sum(),
              "squared error": lambda out, y: (out - F.one_hot(y, 4)).square().sum()}
    grads = {}
    for rule in ("drtp", "bp"):
        for name, loss in losses.items():
            for other in (False, True):
                model = biograd.convert(mlp(), rule, seed=3)
                if other:  # new weights above both hidden layers
                    with torch.no_grad():
                        model[4].weight.normal_()
                step(model, x, y, loss)
                grads[rule, name, other] = (model[0].weight.grad, model[2].weight.grad)
    first = grads["drtp", "cross-entropy", False]
    for key, (g0, g2) in grads.items():
        if key[0] == "drtp":
            assert torch.equal(g0, first[0]) and torch.equal(g2, first[1]), key
    assert not torch.allclose(grads["bp", "cross-entropy", False][0],  # backprop's do change
                              grads["bp", "squared error", False][0])
    assert not torch.allclose(grads["bp", "cross-entropy", False][0],
                              grads["bp", "cross-entropy", True][0])


def test_b_is_the_one_dfa_uses_and_float_targets_are_used_as_they_are():
    x, y = torch.randn(5, 6), torch.tensor([0, 3, 1, 1, 2])
    dfa = biograd.convert(mlp(), "dfa", last="dfa", seed=3)
    F.cross_entropy(dfa(x), y).backward()
    drtp = biograd.convert(mlp(), "drtp", seed=3)
    step(drtp, x, y)
    for i in (2, 4):  # the same window of the same table: dfa with y* in place of e
        assert torch.equal(drtp[i].feedback_weight(), dfa[i].feedback_weight())
    indices = {n: p.grad.clone() for n, p in drtp.named_parameters()}
    drtp.zero_grad()
    step(drtp, x, F.one_hot(y, 4).float(), loss=lambda out, t: F.cross_entropy(out, y))
    for name, p in drtp.named_parameters():  # float targets (N, K): the one-hot, as given
        assert torch.equal(p.grad, indices[name]), name
    soft = torch.softmax(torch.randn(5, 4), 1)  # not one-hot: B t for t as it is
    seen = inputs_of(drtp, ["2"])
    step(drtp, x, soft, loss=lambda out, t: F.cross_entropy(out, y))
    assert torch.equal(seen["2"].grad, soft @ drtp[2].feedback_weight())


class Wrapper(nn.Module):
    """Holds the model as `module`, as DistributedDataParallel does."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module(x)


@pytest.mark.parametrize("wrap", ["ddp-like", "compiled"])
def test_targets_reach_the_model_through_its_wrappers(wrap):
    import torch._dynamo as dynamo

    dynamo.reset()
    x, y = torch.randn(5, 6), torch.tensor([0, 3, 1, 1, 2])
    plain, inner = (biograd.convert(mlp(), "drtp", seed=3) for _ in range(2))
    wrapped = Wrapper(inner) if wrap == "ddp-like" else torch.compile(inner, backend="aot_eager")
    for model in (plain, wrapped):
        step(model, x, y)
    for (name, a), b in zip(plain.named_parameters(), inner.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=0, atol=0, msg=name)


def test_no_output_error_is_kept_until_a_layer_reads_it():
    model = biograd.convert(mlp(), "drtp", seed=0)
    x, y = torch.randn(5, 6), torch.randint(0, 4, (5,))
    step(model, x, y)
    assert model._biograd_error_source.current.error is None  # no drtp layer reads e
    model[2].set_rule("dfa")  # one that does
    seen = inputs_of(model, ["2"])
    out = step(model, x, y)
    torch.testing.assert_close(seen["2"].grad, out.grad @ model[2].feedback_weight(), rtol=1e-6,
                               atol=1e-7)


def test_each_forward_takes_the_targets_given_before_it():
    model = biograd.convert(mlp(), "drtp", seed=3)
    x, y = torch.randn(5, 6), torch.tensor([0, 3, 1, 1, 2])
    biograd.targets(model, y)
    first = model(x)
    second = model(x)  # given nothing: its backward has no targets
    with pytest.raises(RuntimeError, match=r"call biograd.targets\(model, y\) before each "):
        F.cross_entropy(second, y).backward()
    model.zero_grad()
    F.cross_entropy(first, y).backward()  # the first pass kept its own
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_wrong_targets_say_what_fits():
    model = biograd.convert(mlp(), "drtp", seed=3)
    x = torch.randn(5, 6)
    for y in (torch.tensor([0, 1, 2]), torch.zeros(5, 3), torch.zeros(5, 4, dtype=torch.long)):
        biograd.targets(model, y)
        with pytest.raises(ValueError, match=r"output has shape \(5, 4\): give class indices "
                                             r"of shape \(5,\) or float targets of shape "
                                             r"\(5, 4\)"):
            model(x)
    with pytest.raises(TypeError, match="y is a tensor of class indices"):
        biograd.targets(model, [0, 1, 2, 3, 0])


@pytest.mark.parametrize("rule", ["dfa", "fa", None])
def test_targets_is_a_no_op_on_a_model_with_no_layer_on_drtp(rule):
    x, y = torch.randn(5, 6), torch.tensor([0, 3, 1, 1, 2])
    grads = []
    for call in (False, True):
        model = mlp() if rule is None else biograd.convert(mlp(), rule, last="bp", seed=3)
        if call:
            biograd.targets(model, torch.zeros(2, 7))  # fits nothing: never looked at
        F.cross_entropy(model(x), y).backward()
        grads.append([p.grad for p in model.parameters()])
        source = model.__dict__.get("_biograd_error_source")
        assert source is None or source.pending is None
    for a, b in zip(*grads, strict=True):
        assert torch.equal(a, b)


def test_gradient_angles_give_the_targets_and_the_top_layer_is_backprop():
    model = biograd.convert(mlp(), "drtp", seed=3)
    angles = biograd.gradient_angles(model, (torch.randn(8, 6), torch.randint(0, 4, (8,))))
    assert list(angles) == ["0", "2", "4"]
    assert angles["4"] == 0  # the last layer learns from the true loss gradient at its output
    assert angles["0"] > 1 and angles["2"] > 1
    assert biograd.weight_angles(model) == {}  # B is (K, *input), not W's shape


def test_detection_refuses_drtp():
    from biograd.detection.model import detector_rule

    with pytest.raises(ValueError, match="drtp projects one output error"):
        detector_rule("drtp")


QUICK = ["--data", "digits", "--model", "small_cnn", "--epochs", "1", "--steps-per-epoch", "2",
         "--batch-size", "16", "--progress", "none", "--tensorboard", "false",
         "--angle-batch", "16"]


def test_train_and_compare_run_drtp(tmp_path):
    from biograd.cli import main

    assert main(["train", "--rule", "drtp", *QUICK, "--out", str(tmp_path / "run")]) == 0
    (line,) = [json.loads(t) for t in (tmp_path / "run" / "metrics.jsonl").read_text()
               .splitlines()]
    assert line["rule"] == "drtp" and line["weight_angles"] == {"15": 0.0}  # the last, on bp
    angles = line["gradient_angles"]  # small_cnn's convolutions; under the classifier on bp,
    assert set(angles) == {"0", "3", "7", "10"} and angles["10"] == 0  # the last learns as bp
    assert all(0 < angles[n] < 180 for n in ("0", "3", "7"))
    out = tmp_path / "cmp"
    assert main(["compare", "--rules", "bp,drtp", *QUICK, "--out", str(out)]) == 0
    assert "| `drtp` |" in (out / "report.md").read_text()
