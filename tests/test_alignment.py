"""Weight and gradient angles: what they measure, and that measuring changes nothing."""

import math

import pytest
import torch
import torch.nn.functional as F
from checks import sweep_rule
from torch import nn

import biograd


def net(rule):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.3),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, 5),
    )
    return biograd.convert(model, sweep_rule(rule, blocks="0,4"), seed=0)


def batch():
    return torch.randn(6, 3, 6, 6), torch.randint(0, 5, (6,))


def test_angle_identities():
    w = torch.randn(4, 5)
    assert biograd.angle(w, 2 * w) == 0  # exact: doubling is exact in floating point
    assert biograd.angle(w, -w) == pytest.approx(180)
    assert math.isnan(biograd.angle(w, torch.zeros_like(w)))


@pytest.mark.parametrize("rule", [r for r in biograd.list_rules()
                                  if not biograd.get_rule(r).reads_output])
def test_weight_angles_measure_the_feedback_the_backward_uses(rule):
    model = net(rule)
    angles = biograd.weight_angles(model)
    assert list(angles) == ["0", "4", "8"]  # network order
    for name, layer in biograd.feedback_layers(model):
        assert angles[name] == pytest.approx(biograd.angle(layer.weight, layer.feedback_weight()))
    if rule == "bp":
        assert set(angles.values()) == {0.0}


def test_weight_angles_leave_out_dfa_whose_b_has_no_w_to_compare_with():
    model = biograd.convert(net("fa"), "dfa", rules={"4": "fa"}, seed=0)
    assert list(biograd.weight_angles(model)) == ["4"]


@pytest.mark.parametrize("rule", [r for r in biograd.list_rules() if r != "bp"])
def test_gradient_angles(rule):
    model = net(rule)
    model.train()
    x, y = batch()
    biograd.targets(model, y)  # drtp's; a no-op for every other rule
    F.cross_entropy(model(x), y).backward()  # gradients a user has accumulated
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    steps = {n: b.clone() for n, b in model.named_buffers() if n.endswith("feedback_step")}
    rng = torch.get_rng_state()

    angles = biograd.gradient_angles(model, (x, y))

    # the top layer sees the true error, so its weight gradient is backprop's whatever the rule
    assert angles["8"] == pytest.approx(0, abs=1e-3)
    assert angles["0"] > 1 and angles["4"] > 1  # lower layers follow the rule's feedback
    assert model.training
    assert torch.equal(torch.get_rng_state(), rng)
    for n, p in model.named_parameters():
        assert torch.equal(p.grad, grads[n]), n
    for n, b in model.named_buffers():
        assert torch.equal(b, buffers[n]), n
    for n, b in model.named_buffers():
        if n in steps:
            assert torch.equal(b, steps[n]), n


def test_gradient_angles_are_zero_when_feedback_is_the_weight():
    model = net("fa")
    for _, layer in biograd.feedback_layers(model):
        with torch.no_grad():
            layer.feedback.copy_(layer.weight)
    angles = biograd.gradient_angles(model, batch())
    assert max(angles.values()) == pytest.approx(0, abs=1e-3)


def test_gradient_angles_of_a_backprop_model_are_empty():
    assert biograd.gradient_angles(net("bp"), batch()) == {}


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(),
                         nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3))


@pytest.mark.parametrize("rule", ["fa", "brsf", "kp"])
def test_frozen_layers_run_backprop_in_the_reference_pass(rule):
    import copy

    plain = mlp()
    model = biograd.convert(copy.deepcopy(plain), rule, seed=0)
    for layer in (model[2], model[4]):  # frozen, still converted
        layer.requires_grad_(False)
    x, y = torch.randn(12, 10), torch.randint(0, 3, (12,))
    state = {k: v.clone() for k, v in model.state_dict().items()}

    angles = biograd.gradient_angles(model, (x, y))

    for key, value in model.state_dict().items():  # brsf's counters of frozen layers included
        assert torch.equal(value, state[key]), key
    assert set(angles) == {"0", "6"}  # trainable weights only
    model_grad = torch.autograd.grad(F.cross_entropy(model(x), y), model[0].weight)[0]
    true_grad = torch.autograd.grad(F.cross_entropy(plain(x), y), plain[0].weight)[0]
    assert angles["0"] == pytest.approx(biograd.angle(model_grad, true_grad), abs=1e-6)
    assert angles["0"] > 1
