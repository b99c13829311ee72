"""The alignment family (Kunin et al. 2020): B learns by the gradient of a local regulariser.

Identities, not numbers: B's gradient is that of R computed by autograd from Kunin's definitions
on the layer's own op, for every kind of layer; the fixed points the maths gives are reached;
kp and wm are members of the family where the maths says so.
"""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import biograd
from biograd.nn.local import LocallyConnected2d
from biograd.rules.alignment import Alignment

PRIMITIVES = ("decay", "self", "amp", "sparse", "null")
#: every primitive at once, with coefficients of different sizes, so no term hides another
ALL = {"decay": 0.3, "self": 0.7, "amp": 1.1, "sparse": 0.5, "null": 0.2}


def regulariser(op, x, w, b, samples, coefficients):
    """R(B) as Kunin et al. define it, on the layer's op u -> op(u, M): decay ‖B‖², self
    −⟨B, W⟩, amp −⟨op(x, B), op(x, W)⟩ / N, sparse ‖op(x, B)‖² / N, null ‖(op's input
    gradient through B of op(x, W))‖² / N; differentiable in b."""
    c = {k: coefficients.get(k, 0.0) for k in PRIMITIVES}
    w, x = w.detach(), x.detach()
    yw = op(x, w)
    xr = x.clone().requires_grad_()
    (back,) = torch.autograd.grad(op(xr, b), xr, yw, create_graph=True)  # Bᵀ W x
    return (c["decay"] * b.square().sum() - c["self"] * (b * w).sum()
            - c["amp"] * (op(x, b) * yw).sum() / samples
            + c["sparse"] * op(x, b).square().sum() / samples
            + c["null"] * back.square().sum() / samples)


def reference_gradient(op, x, w, b, samples, coefficients):
    """∂R/∂B by autograd (see `regulariser`)."""
    b = b.detach().clone().requires_grad_()
    return torch.autograd.grad(regulariser(op, x, w, b, samples, coefficients), b)[0]


def _conv(module):
    """The op of a Conv2d on its input; with a padding mode other than zeros, on the input the
    layer pads itself (see `padded`), as docs/rules.md says."""
    padding = module.padding if module.padding_mode == "zeros" else 0
    return lambda u, m: F.conv2d(u, m, None, module.stride, padding, module.dilation,
                                 module.groups)


def padded(module, x):
    """x as the op of `module` sees it: padded by the layer where its padding mode is not
    zeros (zero padding is the convolution's own); a locally connected layer's, unfolded."""
    if isinstance(module, LocallyConnected2d):
        return F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)
    if getattr(module, "padding_mode", "zeros") == "zeros":
        return x
    return F.pad(x, module._reversed_padding_repeated_twice, mode=module.padding_mode)


def _conv_transpose(module):
    return lambda u, m: F.conv_transpose2d(u, m, None, module.stride, module.padding,
                                           module.output_padding, module.groups,
                                           module.dilation)


def _local(module):
    # on the patches, docs/rules.md (`padded`): y[n, o, p] = Σ_k W[p, o, k] cols[n, k, p]
    return lambda cols, m: torch.einsum("pok,nkp->nop", m, cols)


# (id, factory, input shape, op from the module, samples: the batch)
LAYERS = [
    ("linear", lambda: nn.Linear(6, 5), (7, 6), lambda m: lambda u, w: u @ w.T, 7),
    ("linear_tokens", lambda: nn.Linear(6, 5), (3, 4, 6), lambda m: lambda u, w: u @ w.T, 3),
    ("conv2d_stride_groups", lambda: nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2),
     (3, 4, 7, 7), _conv, 3),
    ("conv2d_reflect", lambda: nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"),
     (2, 3, 5, 5), _conv, 2),
    ("convtranspose2d", lambda: nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1),
     (2, 3, 4, 4), _conv_transpose, 2),
    ("local", lambda: LocallyConnected2d(2, 3, 3, input_size=5, padding=1), (2, 2, 5, 5),
     _local, 2),
    ("conv1d", lambda: nn.Conv1d(3, 4, 3, padding=1, stride=2), (2, 3, 9),
     lambda m: lambda u, w: F.conv1d(u, w, None, m.stride, m.padding), 2),
    ("conv3d", lambda: nn.Conv3d(2, 3, 2, bias=False), (2, 2, 3, 4, 4),
     lambda m: lambda u, w: F.conv3d(u, w), 2),
    ("convtranspose3d", lambda: nn.ConvTranspose3d(2, 3, 2, stride=2), (1, 2, 2, 2, 2),
     lambda m: lambda u, w: F.conv_transpose3d(u, w, None, m.stride), 1),
]


@pytest.mark.parametrize("coefficients", [{"decay": 0.3}, {"self": 0.7}, {"amp": 1.1},
                                          {"sparse": 0.5}, {"null": 0.2}, ALL],
                         ids=["decay", "self", "amp", "sparse", "null", "all"])
@pytest.mark.parametrize(("name", "factory", "shape", "make_op", "samples"), LAYERS,
                         ids=[c[0] for c in LAYERS])
def test_b_gradient_is_the_regulariser_gradient(name, factory, shape, make_op, samples,
                                                coefficients):
    torch.manual_seed(0)
    module = factory().double()
    rule = Alignment(**coefficients)
    layer = biograd.convert(nn.Sequential(module), rule, seed=1)[0]
    x = torch.randn(shape, dtype=torch.float64)
    (layer(x) * torch.randn_like(layer(x))).sum().backward()
    expected = reference_gradient(make_op(layer), padded(layer, x), layer.weight,
                                  layer.feedback, samples, coefficients)
    torch.testing.assert_close(layer.feedback.grad, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("name", "factory", "shape", "make_op", "samples"), LAYERS,
                         ids=[c[0] for c in LAYERS])
def test_positions_mean_averages_over_every_position(name, factory, shape, make_op, samples):
    torch.manual_seed(0)
    layer = biograd.convert(nn.Sequential(factory().double()),
                            Alignment(**ALL, positions="mean"), seed=1)[0]
    x = torch.randn(shape, dtype=torch.float64)
    y = layer(x)
    y.sum().backward()
    # N·P: a Linear's rows; a convolution's samples times its output positions
    rows = math.prod(y.shape[:-1]) if isinstance(layer, nn.Linear) else \
        y.shape[0] * math.prod(y.shape[2:])
    expected = reference_gradient(make_op(layer), padded(layer, x), layer.weight,
                                  layer.feedback, rows, ALL)
    torch.testing.assert_close(layer.feedback.grad, expected, rtol=1e-10, atol=1e-12)


def test_b_gradient_is_the_regulariser_gradient_in_attention():
    # self-attention: the in-projection's B learns from the tokens it projects
    torch.manual_seed(0)
    attn = nn.MultiheadAttention(8, 2, batch_first=True).double()
    model = biograd.convert(nn.Sequential(attn), Alignment(**ALL), seed=1)
    layer = model[0]
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    out, _ = layer(x, x, x)
    out.square().sum().backward()
    expected = reference_gradient(lambda u, w: u @ w.T, x, layer.in_proj_weight,
                                  layer.feedback, 3, ALL)
    torch.testing.assert_close(layer.feedback.grad, expected, rtol=1e-10, atol=1e-12)


def test_b_gets_no_task_gradient_unless_tied():
    torch.manual_seed(0)
    x, net = torch.randn(4, 6), nn.Sequential(nn.Linear(6, 5))
    grads = {}
    for tied in (False, True):
        for scale in (1.0, 3.0):  # the same input, another loss
            layer = biograd.convert(copy.deepcopy(net), Alignment(**ALL, tied=tied), seed=1)[0]
            (layer(x).sum() * scale).backward()
            grads[tied, scale] = (layer.feedback.grad.clone(), layer.weight.grad.clone())
    assert torch.equal(grads[False, 1.0][0], grads[False, 3.0][0])  # the loss plays no part
    for scale in (1.0, 3.0):  # tied: plus exactly W's gradient
        torch.testing.assert_close(grads[True, scale][0],
                                   grads[False, scale][0] + grads[True, scale][1])


def test_named_rules_are_the_family_with_kunins_coefficients():
    assert biograd.get_rule("sa") == biograd.get_rule("sa", decay=1e-3, self=2e-3)
    for name, expected in [("sa", {"decay": 1e-3, "self": 2e-3}),
                           ("aa", {"sparse": 1e-3, "amp": 2e-3}),
                           ("ia", {"amp": 2e-3, "null": 1e-3, "decay": 1e-3})]:
        rule = biograd.get_rule(name)
        assert isinstance(rule, Alignment)
        assert {k: getattr(rule, k) for k in PRIMITIVES} == {k: expected.get(k, 0.0)
                                                             for k in PRIMITIVES}
        assert str(rule) == name and rule.noise == "none" and not rule.tied
    assert str(biograd.get_rule("sa", decay=0.01)) == "sa(decay=0.01)"
    assert biograd.rules.Alignment is Alignment


# --- fixed points: W and the input distribution held, B alone learning -----------------------


def train_b(layer, batches, lr, steps):
    """SGD on B alone for `steps` steps, the batch drawn by batches(t)."""
    opt = torch.optim.SGD([layer.feedback], lr=lr)
    for t in range(steps):
        opt.zero_grad()
        layer(batches(t)).sum().backward()
        opt.step()
    return layer.feedback.detach()


def linear_layer(rule):
    torch.manual_seed(0)
    return biograd.convert(nn.Sequential(nn.Linear(6, 4).double()), rule, seed=2)[0]


def conv_layer(rule, in_channels=3):
    torch.manual_seed(0)
    return biograd.convert(nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1).double()),
                           rule, seed=2)[0]


def patch_moment(layer, x):
    """Σ of a convolution's patches: Σ_n Σ_p x_np x_npᵀ / N, (C_in·9, C_in·9)."""
    cols = F.unfold(x, 3, padding=1)  # (N, C_in·9, P)
    return torch.einsum("nkp,njp->kj", cols, cols) / x.shape[0]


@pytest.mark.parametrize("kind", ["linear", "conv2d"])
def test_sa_converges_to_beta_over_two_alpha_times_w(kind):
    rule = biograd.get_rule("sa", decay=0.02, self=0.01)  # B -> W / 4
    layer = linear_layer(rule) if kind == "linear" else conv_layer(rule)
    shape = (5, 6) if kind == "linear" else (2, 3, 5, 5)
    b = train_b(layer, lambda t: torch.randn(shape, dtype=torch.float64), lr=10.0, steps=200)
    # each step shrinks B - W/4 by 1 - 2·decay·lr = 0.6: after 200, nothing is left
    torch.testing.assert_close(b, layer.weight.detach() / 4, rtol=1e-10, atol=1e-12)


def test_aa_converges_to_w_on_the_inputs_span_and_leaves_the_rest():
    rule = biograd.get_rule("aa", sparse=0.05, amp=0.1)  # B -> W on the span
    layer = linear_layer(rule)
    basis = torch.linalg.qr(torch.randn(6, 3, dtype=torch.float64))[0]  # a 3-d subspace
    b0 = layer.feedback.detach().clone()
    gen = torch.Generator().manual_seed(5)
    b = train_b(layer, lambda t: torch.randn(16, 3, generator=gen, dtype=torch.float64)
                @ basis.T, lr=2.0, steps=300)
    on, off = basis @ basis.T, torch.eye(6, dtype=torch.float64) - basis @ basis.T
    torch.testing.assert_close(b @ on, layer.weight.detach() @ on, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(b @ off, b0 @ off, rtol=1e-10, atol=1e-12)  # untouched


def test_aa_on_a_convolution_converges_to_w_on_the_patches_span():
    # three equal input channels: every patch lies in a third of the patch space
    rule = biograd.get_rule("aa", sparse=0.05, amp=0.1)
    layer = conv_layer(rule)
    gen = torch.Generator().manual_seed(5)

    def batch(t):
        return torch.randn(4, 1, 5, 5, generator=gen, dtype=torch.float64).expand(4, 3, 5, 5)

    sigma = patch_moment(layer, batch(0))
    lr = 1.0 / (0.1 * torch.linalg.eigvalsh(sigma)[-1].item())  # stable for every batch alike
    b = train_b(layer, batch, lr=lr, steps=400).reshape(4, -1)
    w = layer.weight.detach().reshape(4, -1)
    tied = torch.zeros(27, 9, dtype=torch.float64)  # the span: a pixel's value in all channels
    for c in range(3):
        tied[c * 9:(c + 1) * 9] = torch.eye(9, dtype=torch.float64)
    on = tied @ torch.linalg.pinv(tied)
    torch.testing.assert_close(b @ on, w @ on, rtol=1e-6, atol=1e-8)
    assert (b - w).norm() > 0.1 * w.norm()  # and B is not W off the span


def ia_fixed_point(w, sigma, amp, null, decay):
    """(amp/2) (null·WΣWᵀ + decay·I)⁻¹ WΣ: Kunin's (α/2) ΣW̃ (β W̃ᵀΣW̃ + γI)⁻¹, our layout."""
    eye = torch.eye(w.shape[0], dtype=w.dtype)
    return (amp / 2) * torch.linalg.solve(null * w @ sigma @ w.T + decay * eye, w @ sigma)


def test_ia_converges_to_its_fixed_point_on_a_linear_layer():
    amp, null, decay = 0.2, 0.1, 0.1
    layer = linear_layer(biograd.get_rule("ia", amp=amp, null=null, decay=decay))
    x = torch.randn(32, 6, dtype=torch.float64)  # one batch: Σ is known exactly
    b = train_b(layer, lambda t: x, lr=0.5, steps=3000)
    expected = ia_fixed_point(layer.weight.detach(), x.T @ x / 32, amp, null, decay)
    torch.testing.assert_close(b, expected, rtol=1e-8, atol=1e-10)
    assert not torch.allclose(expected, layer.weight, rtol=0.1)  # not W itself


def test_ia_converges_to_its_fixed_point_on_a_convolution():
    # R is quadratic in B: its fixed point solves H B = -∇R(0), H R's Hessian (autograd)
    amp, null, decay = 0.2, 0.1, 0.1
    layer = conv_layer(biograd.get_rule("ia", amp=amp, null=null, decay=decay))
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    op, coefficients = _conv(layer), {"amp": amp, "null": null, "decay": decay}
    w = layer.weight.detach()

    def r(b):
        return regulariser(op, x, w, b, 2, coefficients)

    zero = torch.zeros_like(w)
    hessian = torch.autograd.functional.hessian(r, zero).reshape(w.numel(), w.numel())
    gradient_at_zero = reference_gradient(op, x, w, zero, 2, coefficients)
    expected = torch.linalg.solve(hessian, -gradient_at_zero.reshape(-1)).view_as(w)
    lr = 1.0 / torch.linalg.eigvalsh(hessian)[-1].item()
    b = train_b(layer, lambda t: x, lr=lr, steps=4000)
    torch.testing.assert_close(b, expected, rtol=1e-7, atol=1e-9)


# --- kp and wm as members ---------------------------------------------------------------------


def test_kp_is_decay_with_b_tied_to_w():
    # kp's B: W's gradient, and the optimiser's weight decay λ; the family's: W's gradient
    # (tied) and decay·2B, λ = 2·decay, with no weight decay of the optimiser's on B
    lam = 0.05
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    kp = biograd.convert(copy.deepcopy(net), "kp", seed=4)
    family = biograd.convert(copy.deepcopy(net), Alignment(decay=lam / 2, tied=True), seed=4)
    with torch.no_grad():  # the same initial B (kp and the family draw theirs alike)
        for a, b in zip(biograd.feedback_layers(kp), biograd.feedback_layers(family),
                        strict=True):
            assert torch.equal(a[1].feedback, b[1].feedback)
    opts = [torch.optim.SGD(biograd.optim.weight_decay_groups(m), lr=0.1, momentum=0.9,
                            weight_decay=lam) for m in (kp, family)]
    assert [g["weight_decay"] for g in opts[1].param_groups] == [lam, 0.0]  # B: none
    for _ in range(5):
        x, y = torch.randn(4, 6), torch.randint(0, 3, (4,))
        for model, opt in zip((kp, family), opts, strict=True):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    for (name, a), b in zip(kp.state_dict().items(), family.state_dict().values(),
                            strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7, msg=name)
    assert not torch.equal(kp[0].feedback, net[0].weight)  # B moved


def test_wm_and_the_familys_weight_mirror_take_the_same_expected_step():
    # biograd's wm: B ← B + rate (W ξξᵀ/N − B), E[ξξᵀ/N] = I. The family with noise in place
    # of x, decay d and amp a: B ← B − lr (2dB − a W ξξᵀ/N). Equal in expectation where
    # 2·d·lr = a·lr = rate: d = a/2 (Kunin's WM, d = a, goes to W/2: the same direction).
    rate, amp = 0.01, 0.5
    lr, family = rate / amp, Alignment(decay=amp / 2, amp=amp, noise="normal")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(12, 5))
    mirrored = biograd.convert(copy.deepcopy(net), "wm", seed=3, rate=rate, samples=64)[0]
    learned = biograd.convert(copy.deepcopy(net), family, seed=3)[0]
    w = net[0].weight.detach()
    draws = 400
    expected = {"wm": rate * (w - mirrored.feedback.detach()),
                "family": rate * (w - learned.feedback.detach())}
    steps = {"wm": [], "family": []}
    for _ in range(draws):
        b = mirrored.feedback.detach().clone()  # wm: one mirror pass from the same B
        estimate = mirrored.learning_rule._estimate(mirrored)
        steps["wm"].append(rate * (estimate - b))
        learned.zero_grad()
        learned(torch.randn(64, 12)).sum().backward()  # 64 noise vectors, like wm's samples
        steps["family"].append(-lr * learned.feedback.grad)
        learned.after_step()  # the next step's noise
        mirrored.feedback_step.add_(1)
    # each estimates rate (W − B) from 64·400 noise vectors: within 4 standard errors
    tol = 4 * rate * w.norm() * math.sqrt(12 / (64 * draws))
    for how in ("wm", "family"):
        assert (torch.stack(steps[how]).mean(0) - expected[how]).norm() < tol, how
    assert (steps["family"][0] - steps["family"][1]).norm() > 0  # new noise each step


def test_noise_is_drawn_from_the_seed_and_step_not_the_input():
    rule = Alignment(decay=0.1, amp=1.0, sparse=0.5, noise="uniform", sigma=2.0)
    grads = []
    for x in (torch.randn(5, 6), torch.randn(5, 6) * 100):  # other inputs, one shape
        layer = linear_layer(rule).float()
        layer(x).sum().backward()
        grads.append(layer.feedback.grad.clone())
    assert torch.equal(grads[0], grads[1])
    noise = rule.draw(torch.zeros(20000, 6), 7)
    assert noise.abs().max() <= 2.0 * math.sqrt(3) and abs(noise.std().item() - 2.0) < 0.05
    assert biograd.get_rule("alignment", noise="normal").state == ("feedback", "feedback_step")


# --- training plumbing --------------------------------------------------------------------------


def test_weight_decay_groups_give_an_aligning_b_no_weight_decay():
    model = biograd.convert(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), "ia",
                            last="bp")
    groups = biograd.optim.weight_decay_groups(model)
    zero = [g for g in groups if g.get("weight_decay") == 0.0]
    assert len(zero) == 1 and zero[0]["params"] == [model[0].feedback]


def test_an_attached_grad_scaler_keeps_bs_gradient_at_its_size():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    steps = {}
    for how in ("fp32", "fp16-attached", "fp16-alone"):
        model = biograd.convert(copy.deepcopy(net), "aa", last="bp", seed=0)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, enabled=how != "fp32")
        if how == "fp16-attached":
            biograd.attach(opt, model, scaler=scaler)
        before = model[0].feedback.detach().clone()
        with torch.autocast("cpu", dtype=torch.float16, enabled=how != "fp32"):
            loss = F.cross_entropy(model(x), y)
        if how == "fp16-alone":
            with pytest.warns(UserWarning, match="attach"):
                scaler.scale(loss).backward()
        else:
            scaler.scale(loss).backward()
        scaler.step(opt)
        steps[how] = model[0].feedback.detach() - before
    torch.testing.assert_close(steps["fp16-attached"], steps["fp32"], rtol=2e-2, atol=1e-6)
    ratio = steps["fp16-alone"].norm() / steps["fp32"].norm()
    assert ratio < 1e-3  # what attaching prevents: the step divided by the scale


def test_train_and_resume_an_aligning_rule_exactly(tmp_path, monkeypatch):
    from test_train import interrupt, metrics, quick

    from biograd.engine import checkpoint, classify

    options = {"alignment": {"decay": 1e-3, "amp": 1e-3, "sparse": 1e-3, "noise": "normal"}}
    common = dict(rule="alignment", last_rule="ia", rule_options=options, epochs=2,
                  steps_per_epoch=3)
    classify.train(quick(tmp_path, "whole", **common))
    interrupt(monkeypatch, "train_one_epoch", lambda ctx, loader, epoch: epoch == 2,
              quick(tmp_path, "parts", **common))
    classify.train(quick(tmp_path, "parts", resume=True, **common))
    a, b = (torch.load(tmp_path / n / checkpoint.NAME, weights_only=True)
            for n in ("whole", "parts"))
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert int(a["model"]["0.feedback_step"]) == 6  # one noise draw per step
    from biograd.models import build_model

    torch.manual_seed(0)
    first = biograd.convert(build_model("small_cnn", num_classes=10, in_channels=1,
                                        image_size=8),
                            "alignment", last="ia", seed=0, **options["alignment"])
    assert not torch.equal(first[0].feedback, a["model"]["0.feedback"])  # B learnt
    assert [m["epoch"] for m in metrics(tmp_path / "parts")] == [1, 2]


def test_biograd_training_gives_b_no_weight_decay_and_attaches_its_scaler(tmp_path,
                                                                          monkeypatch):
    # docs/rules.md: "biograd's training give[s] B no weight decay of the optimiser's" and
    # passes the scaler to attach
    from test_documented import built_optimizer
    from test_train import quick

    from biograd.engine import classify

    seen = built_optimizer(monkeypatch)
    classify.train(quick(tmp_path, rule="aa", weight_decay=1e-3))
    model, opt = seen["model"], seen["optimizer"]
    decays = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    layers = [layer for _, layer in biograd.feedback_layers(model) if layer.rule == "aa"]
    assert layers
    for layer in layers:
        assert decays[id(layer.feedback)] == 0.0 and decays[id(layer.weight)] == 1e-3
        assert isinstance(layer.__dict__.get("loss_scaler"), torch.amp.GradScaler)


def test_the_forwards_of_one_step_share_the_noise():
    layer = linear_layer(Alignment(amp=1.0, decay=0.5, noise="normal"))
    grads = []
    for step in range(3):
        layer.zero_grad()
        layer(torch.randn(4, 6, dtype=torch.float64)).sum().backward()
        grads.append(layer.feedback.grad.clone())
        if step == 1:
            layer.after_step()
    assert torch.equal(grads[0], grads[1]) and not torch.equal(grads[1], grads[2])
