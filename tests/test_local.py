"""The contract every rule keeps on LocallyConnected2d, parametrised over the registry.

As tests/test_contract.py for the drop-in layers: the forward is the same under every rule
(bp's, which is plain autograd on the unfold); with B = W the gradients are backprop's bit for
bit; the input gradient is fold(δy B) with the rule's B; weight and bias gradients are the
true local ones (gradcheck, float64); feedback is scaled as the convolution's.
"""

import io
import math

import pytest
import torch
import torch.nn.functional as F
from checks import one_hot_targets, targets_at_every_forward
from torch import nn

import biograd
from biograd.nn import Conv2d, LocallyConnected2d
from biograd.rules import Feedback
from biograd.rules.base import seed_scale, sign_scale

RULES = biograd.list_rules()
# Rules whose δx is Bᵀδy; dfa's projects the output error (here the layer's own: it is the
# model), drtp's the targets it is given before each forward, and neither has a B = W form.
TRANSPOSED = [r for r in RULES if not biograd.get_rule(r).direct]

pytestmark = pytest.mark.usefixtures("one_thread")

# (id, constructor arguments, input shape)
CASES = [
    ("k3_pad1", dict(in_channels=3, out_channels=4, kernel_size=3, input_size=(6, 5),
                     padding=1), (2, 3, 6, 5)),
    ("k2x3_stride2_nobias", dict(in_channels=2, out_channels=3, kernel_size=(2, 3),
                                 input_size=7, stride=2, bias=False), (2, 2, 7, 7)),
    ("k3_dilation2_unbatched", dict(in_channels=2, out_channels=3, kernel_size=3,
                                    input_size=(7, 6), padding=1, dilation=2), (2, 7, 6)),
]
CASE_IDS = [name for name, _, _ in CASES]


@pytest.fixture(params=CASES, ids=CASE_IDS)
def case(request):
    rule = request.node.callspec.params.get("rule")
    if rule is not None and biograd.get_rule(rule).direct and len(request.param[2]) == 3:
        pytest.skip("dfa takes its batch from the model's output: an unbatched layer has none")
    return request.param


def make(kwargs, rule, dtype=torch.float32):
    """A layer on `rule` and its twin on bp, equal in W and bias."""
    torch.manual_seed(0)
    layer = LocallyConnected2d(**kwargs, rule=rule, seed=7, dtype=dtype)
    torch.manual_seed(0)
    reference = LocallyConnected2d(**kwargs, rule="bp", seed=7, dtype=dtype)
    assert torch.equal(layer.weight, reference.weight)
    if layer.learning_rule.direct:
        biograd.error_source(layer)  # the layer is the model: its output error is δy
    if getattr(layer.learning_rule, "wants_targets", False):  # drtp: targets at every forward
        targets_at_every_forward(layer, reference)
    return reference, layer


def unfold_reference(layer, x):
    """The layer written out position by position: unfold, then W[p] cols[:, :, p] + b[:, p]."""
    batched = x.dim() == 4
    x = x if batched else x.unsqueeze(0)
    cols = F.unfold(x, layer.kernel_size, layer.dilation, layer.padding, layer.stride)
    y = torch.stack([cols[:, :, p] @ layer.weight[p].T for p in range(cols.shape[2])], -1)
    if layer.bias is not None:
        y = y + layer.bias.reshape(layer.out_channels, -1)
    y = y.reshape(x.shape[0], layer.out_channels, *layer.output_size)
    return y if batched else y[0]


def run(layer, x, grad_out, **autocast):
    """Forward and backward; returns (output, x.grad, {param name: grad})."""
    x = x.detach().clone().requires_grad_()
    layer.zero_grad(set_to_none=True)
    with torch.autocast("cpu", **(autocast or {"enabled": False})):
        y = layer(x)
    y.backward(grad_out.to(y.dtype))
    return y, x.grad, {n: p.grad for n, p in layer.named_parameters()}


def feedback_is_weight(layer, monkeypatch):
    """B = W for `layer`'s rule, keeping its plumbing (kp's learned B, brsf's counter)."""
    bind = layer.learning_rule.bind
    monkeypatch.setattr(type(layer.learning_rule), "bind",
                        lambda self, lay: Feedback(lambda w: w, bind(lay).learned))


@pytest.mark.parametrize("rule", RULES)
def test_forward_is_bps_and_the_unfold_reference(case, rule):
    _, kwargs, shape = case
    reference, layer = make(kwargs, rule)
    x = torch.randn(shape)
    y = layer(x)
    assert torch.equal(y, reference(x))
    torch.testing.assert_close(y, unfold_reference(layer, x))


def test_one_kernel_everywhere_is_the_convolution():
    conv = nn.Conv2d(3, 5, 3, stride=2, padding=1, dilation=2)
    layer = LocallyConnected2d.from_conv(conv, (9, 8))
    x = torch.randn(2, 3, 9, 8)
    torch.testing.assert_close(layer(x), conv(x))
    assert layer.weight.shape == (layer.output_size[0] * layer.output_size[1], 5, 27)


@pytest.mark.parametrize("rule", TRANSPOSED)
def test_with_feedback_equal_to_weight_gradients_are_backprop(case, rule, monkeypatch):
    _, kwargs, shape = case
    reference, layer = make(kwargs, rule)
    feedback_is_weight(layer, monkeypatch)
    x = torch.randn(shape)
    grad_out = torch.randn(reference(x).shape)
    _, gx_ref, g_ref = run(reference, x, grad_out)
    _, gx, g = run(layer, x, grad_out)
    assert torch.equal(gx, gx_ref)
    for name, grad in g_ref.items():
        assert torch.equal(g[name], grad), name


@pytest.mark.parametrize("rule", RULES)
def test_input_gradient_is_fold_of_error_times_rule_feedback(case, rule):
    _, kwargs, shape = case
    reference, layer = make(kwargs, rule)
    x = torch.randn(shape)
    grad_out = torch.randn(reference(x).shape)
    _, gx, grads = run(layer, x, grad_out)
    b = layer.feedback_weight()  # (P, C_out, K); for brsf: the draw of that forward pass
    if layer.learning_rule.direct:  # δx = B e on the input itself, e = δy per sample
        signal = grad_out.flatten(1)  # drtp: δx = B y*, the targets in place of e
        if layer.learning_rule.wants_targets:
            signal = one_hot_targets(*signal.shape)
        expected = (signal.double() @ b.flatten(1).double()).view(shape).float()
    else:
        d = grad_out.reshape(-1, layer.out_channels, b.shape[0])  # (N, C_out, P)
        cols = torch.einsum("nop,pok->nkp", d, b)
        expected = F.fold(cols, layer.input_size, layer.kernel_size, layer.dilation,
                          layer.padding, layer.stride).reshape(shape)
    torch.testing.assert_close(gx, expected, rtol=1e-5, atol=1e-5)
    # the weight and bias gradients are the true ones whatever B is
    _, _, g_true = run(reference, x, grad_out)
    for name, grad in g_true.items():
        assert torch.equal(grads[name], grad), name


@pytest.mark.parametrize("rule", RULES)
def test_gradcheck_float64(case, rule, monkeypatch):
    _, kwargs, shape = case
    _, layer = make(kwargs, rule, torch.float64)
    x = torch.randn(shape, dtype=torch.float64)
    params = (layer.weight,) + ((layer.bias,) if layer.bias is not None else ())

    def f(x, *ps):
        return layer(x)

    # weight and bias gradients are the true local ones under every rule
    assert torch.autograd.gradcheck(f, (x, *params), fast_mode=True)
    if rule not in TRANSPOSED:
        return
    # and with B = W the whole Jacobian, input included, is the true one
    feedback_is_weight(layer, monkeypatch)
    assert torch.autograd.gradcheck(f, (x.requires_grad_(), *params), fast_mode=True)


@pytest.mark.parametrize("rule", RULES)
def test_every_parameter_gets_a_gradient_and_output_can_be_modified_in_place(case, rule):
    _, kwargs, shape = case
    reference, layer = make(kwargs, rule)
    x = torch.randn(shape, requires_grad=True)
    # (under dfa the layer is the model, and its output, a view, is where dfa's hook takes
    # e: modified in place it would lose the hook, and dfa says so)
    y = torch.relu(layer(x)) if layer.learning_rule.direct else nn.ReLU(inplace=True)(layer(x))
    y.square().sum().backward()
    assert torch.equal(y, torch.relu(reference(x)))
    for name, p in layer.named_parameters():
        assert p.grad is not None, name
    if rule == "kp":  # B.grad is exactly W.grad, in its own storage
        assert torch.equal(layer.feedback.grad, layer.weight.grad)
        assert layer.feedback.grad.data_ptr() != layer.weight.grad.data_ptr()


@pytest.mark.parametrize("rule", RULES)
def test_state_dict_round_trip_and_resume(case, rule):
    _, kwargs, shape = case
    _, layer = make(kwargs, rule)
    x = torch.randn(shape)
    for _ in range(2):  # wm mirrors, brsf draws: the counters move
        layer(x).sum().backward()
        layer.after_step()
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    _, other = make(kwargs, rule)
    other.set_rule(rule, seed=12345)  # different feedback until loaded
    other.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
    assert other.feedback_seed == layer.feedback_seed
    for _ in range(2):  # and both go on the same way
        for name, value in layer.state_dict().items():
            assert torch.equal(other.state_dict()[name], value), name
        grad_out = torch.randn(layer(x).shape)
        assert torch.equal(run(layer, x, grad_out)[1], run(other, x, grad_out)[1])
        assert torch.equal(other.feedback_weight(), layer.feedback_weight())
        layer.after_step()
        other.after_step()


def test_feedback_is_scaled_as_the_convolutions():
    layer = LocallyConnected2d(6, 16, 3, (8, 8), rule="ss")
    s = math.sqrt(2 / (3 * 3 * 16))  # the seed's s of the (16, 6, 3, 3) convolution
    assert seed_scale(layer) == s == sign_scale((16, 6, 3, 3))
    w = layer.weight.detach()
    assert torch.equal(layer.feedback_weight(), s * torch.sign(w))
    torch.manual_seed(0)
    for rule in ("fa", "kp", "wm", "frsf", "brsf", "sign_fixed"):
        layer.set_rule(rule, seed=3)
        b = layer.feedback_weight()
        rms = b.square().mean().sqrt().item()  # N(0, s²) or |N(0, s²)| or ±s
        assert rms == pytest.approx(s, rel=0.02), rule
    layer.set_rule(biograd.get_rule("brsf", fresh="full"), seed=3)
    assert layer.feedback_weight().square().mean().sqrt().item() == pytest.approx(s, rel=0.02)


def test_mirror_pass_treats_each_position_and_channel_as_a_unit():
    # With one position, the layer's W is the convolution's, and so is its mirror estimate
    # (rate 1: B is the latest estimate), drawn from the same seed and pass count.
    conv = Conv2d(3, 4, 3, rule=biograd.get_rule("wm", rate=1.0, samples=16), seed=1)
    layer = LocallyConnected2d.from_conv(conv, 3)
    assert layer.rule == "wm" and layer.feedback_seed == 1
    torch.testing.assert_close(layer.feedback_weight().reshape(conv.weight.shape),
                               conv.feedback_weight())


@pytest.mark.parametrize("rule", TRANSPOSED)
def test_double_backward_differentiates_the_rules_backward(rule, monkeypatch):
    _, kwargs, shape = CASES[0]
    _, layer = make(kwargs, rule, torch.float64)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)

    def f(x, w, b):
        return layer(x)

    if rule != "brsf":  # brsf draws a new B at every forward: no function to differentiate
        assert torch.autograd.gradgradcheck(f, (x, layer.weight, layer.bias), fast_mode=True)
    feedback_is_weight(layer, monkeypatch)
    assert torch.autograd.gradgradcheck(f, (x, layer.weight, layer.bias), fast_mode=True)


@pytest.mark.parametrize("rule", RULES)
def test_autocast_bf16(case, rule, monkeypatch):
    _, kwargs, shape = case
    reference, layer = make(kwargs, rule)
    x = torch.randn(shape)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = reference(x)
    grad_out = torch.randn(expected.shape)
    y, gx, grads = run(layer, x, grad_out, dtype=torch.bfloat16)
    assert y.dtype == torch.bfloat16 and torch.equal(y, expected)
    assert gx.dtype == torch.float32 and torch.isfinite(gx).all()
    for name, p in layer.named_parameters():
        assert grads[name].dtype == p.dtype, name
    if rule not in TRANSPOSED:
        return
    # with B = W, autocast gradients are bp's autocast gradients, bit for bit
    feedback_is_weight(layer, monkeypatch)
    _, gx, grads = run(layer, x, grad_out, dtype=torch.bfloat16)
    _, gx_ref, grads_ref = run(reference, x, grad_out, dtype=torch.bfloat16)
    assert torch.equal(gx, gx_ref)
    for name, grad in grads_ref.items():
        assert torch.equal(grads[name], grad), name


def test_convert_report_and_unconvert_treat_it_as_a_layer():
    model = nn.Sequential(LocallyConnected2d(2, 3, 3, 6), nn.ReLU(), nn.Flatten(),
                          nn.Linear(48, 2))
    x = torch.randn(2, 2, 6, 6)
    before = model(x)
    biograd.convert(model, "fa", last="bp")
    assert [(n, r) for n, _, r in biograd.report(model).layers] == [("0", "fa"), ("3", "bp")]
    assert "0.feedback" in biograd.feedback_buffers(model)
    biograd.convert(model, "wm", last="bp")
    wm_b = model[0].feedback.clone()
    biograd.after_step(model)  # a mirror pass
    assert not torch.equal(model[0].feedback, wm_b)
    assert math.isfinite(biograd.weight_angles(model)["0"])
    assert math.isfinite(biograd.gradient_angles(model, (x, torch.tensor([0, 1])))["0"])
    weight = model[0].weight
    biograd.unconvert(model)  # no torch layer computes it: it stays, on bp, with its W
    assert isinstance(model[0], LocallyConnected2d) and model[0].rule == "bp"
    assert model[0].weight is weight and list(model[0].state_dict()) == [
        "weight", "bias", "feedback_seed"]
    assert torch.equal(model(x), before)
    model[0].set_rule("fa", seed=1)  # the layer unconvert left takes a rule again
    model(x).sum().backward()


@pytest.mark.parametrize("kwargs, match", [
    (dict(kernel_size=5, input_size=4), r"input_size \(4, 4\) .* smaller than the kernel"),
    (dict(kernel_size=3, input_size=4, stride=0), r"stride=\(0, 0\) must be positive"),
    (dict(kernel_size=3, input_size=4, padding=-1), r"padding=\(-1, -1\) must be 0 or more"),
    (dict(kernel_size=3, input_size=(4, 0)), r"input_size=\(4, 0\) must be positive"),
])
def test_bad_sizes_say_what_is_wrong(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LocallyConnected2d(2, 3, **kwargs)
    with pytest.raises(ValueError, match="out_channels=0 must be positive"):
        LocallyConnected2d(2, 0, 3, 4)


def test_wrong_input_shape_names_the_expected_one():
    layer = LocallyConnected2d(2, 3, 3, (6, 5), rule="ss")
    for shape in [(1, 2, 6, 6), (1, 3, 6, 5), (2, 6, 5, 1), (6, 5)]:
        with pytest.raises(ValueError, match=r"\(C, H, W\) = \(2, 6, 5\), got"):
            layer(torch.randn(shape))
