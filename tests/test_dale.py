"""Dale's law: one sign per presynaptic unit, drawn from the seed and held through training."""

import copy
import logging

import pytest
import torch
import torch.nn.functional as F
import torchvision
from checks import sweep_rule
from torch import nn
from torch.nn.utils import parametrizations

import biograd
from biograd.dale import EPS, dale_layers
from biograd.nn import FeedbackLayer


def expected_signs(layer):
    """Each weight's sign from its unit's, indexed one weight at a time (not as dale does)."""
    sign, w = layer.dale_sign, layer.weight.detach()
    if isinstance(layer, nn.Linear):  # (out, in): column j is unit j
        return sign.view(1, -1).expand_as(w)
    if layer.transposed:  # (C_in, C_out/g, *k): row i of dim 0 is unit i
        return sign.view(-1, *[1] * (w.dim() - 1)).expand_as(w)
    out = torch.empty(w.shape[:2], dtype=w.dtype)  # (C_out, C_in/g)
    per_out, per_in = w.shape[0] // layer.groups, w.shape[1]
    for o in range(w.shape[0]):
        for c in range(per_in):
            out[o, c] = sign[(o // per_out) * per_in + c]
    return out.view(*out.shape, *[1] * (w.dim() - 2)).expand_as(w)


def assert_held(model):
    layers = dict(dale_layers(model))
    assert layers
    for name, layer in layers.items():
        assert torch.equal(layer.weight.detach().sign(), expected_signs(layer)), name


def cnn():
    """A stem, a grouped convolution, a grouped transposed one and a classifier: 2x3x4x4 in."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.ReLU(),
        nn.ConvTranspose2d(8, 4, 2, stride=2, groups=2), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * 8 * 8, 3),
    )


def mlp(width=32):
    return nn.Sequential(nn.Linear(10, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, 4))


LAYERS = [nn.Linear(9, 5), nn.Conv2d(8, 6, 3, groups=2), nn.ConvTranspose2d(8, 6, 3, groups=2),
          nn.Conv1d(12, 3, 2), biograd.nn.Conv2d(8, 6, 3, groups=2, rule="sign_fixed", seed=0)]


@pytest.mark.parametrize("make", LAYERS, ids=lambda m: f"{type(m).__module__}.{type(m).__name__}")
def test_each_units_weights_take_its_sign_and_keep_their_magnitude(make):
    layer = copy.deepcopy(make)
    with torch.no_grad():
        layer.weight.view(-1)[0] = 0.0
    before = layer.weight.detach().clone()
    assert biograd.dale(layer, excitatory=0.5, seed=3) is layer  # a bare layer is held
    sign = layer.dale_sign
    assert sign.shape == (before.shape[1] if isinstance(layer, nn.Linear) else
                          layer.in_channels,) and sign.dtype == before.dtype
    assert set(sign.tolist()) <= {-1.0, 1.0}
    if getattr(layer, "groups", 1) == 2:  # the groups' units differ, so a mix-up would show
        assert not torch.equal(sign[:4], sign[4:])
    w = layer.weight.detach()
    assert torch.equal(w.sign(), expected_signs(layer))
    assert torch.equal(w.abs(), before.abs().clamp(min=EPS))  # the 0 is now ±eps
    assert w.view(-1)[0].abs().item() == pytest.approx(EPS)


@pytest.mark.parametrize("p", [0.3, 0.8, 1.0])
def test_the_fraction_of_excitatory_units_is_excitatory(p):
    layer = biograd.dale(nn.Linear(4000, 1), excitatory=p, seed=0)
    fraction = (layer.dale_sign > 0).double().mean().item()
    assert abs(fraction - p) < 5 * (p * (1 - p) / 4000) ** 0.5 + 1e-12  # five sd


def test_signs_depend_on_seed_and_name_only():
    def net():
        return nn.Sequential(nn.Linear(8, 1000), nn.ReLU(), nn.Linear(1000, 1000), nn.ReLU(),
                             nn.Linear(1000, 1000))

    a = biograd.dale(net(), seed=1)
    torch.manual_seed(99)  # another initialisation: the global stream has no say
    b = biograd.dale(net(), seed=1)
    c = biograd.dale(net(), seed=2)
    assert torch.equal(a[2].dale_sign, b[2].dale_sign)
    assert not torch.equal(a[2].dale_sign, c[2].dale_sign)
    # two layers of one shape, other names: independent draws agree on p² + (1 - p)² of units
    agree = (a[2].dale_sign == a[4].dale_sign).double().mean().item()
    assert abs(agree - 0.68) < 5 * (0.68 * 0.32 / 1000) ** 0.5


def test_dale_leaves_the_global_stream_alone():
    model = mlp()
    rng = torch.get_rng_state()
    biograd.dale(model)
    assert torch.equal(rng, torch.get_rng_state())


def test_which_layers_the_stem_the_classifier_and_patterns(caplog):
    def held(**kw):
        return sorted(n for n, _ in dale_layers(biograd.dale(cnn(), **kw)))

    with caplog.at_level(logging.INFO, logger="biograd"):
        assert held() == ["2", "4", "7"]  # the stem left free, the classifier held
    assert "0 (the stem" in caplog.text
    assert held(first=True) == ["0", "2", "4", "7"]
    assert held(exclude="7") == ["2", "4"]
    assert held(include=["4", "7"]) == ["4", "7"]

    class Own(nn.Linear):  # its own forward: W's sign need not be its effect's
        def forward(self, x):
            return super().forward(x) * 2

    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), Own(4, 2))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="biograd"):
        biograd.dale(model)
    assert not list(dale_layers(model)) and "2 (own forward" in caplog.text


@pytest.mark.parametrize("bad", [0, 0.0, -0.2, 1.5, float("nan"), "0.8", True, None])
def test_a_bad_fraction_is_one_line(bad):
    with pytest.raises(ValueError, match=r"excitatory=.*use a number > 0 and <= 1") as err:
        biograd.dale(mlp(), excitatory=bad)
    assert "\n" not in str(err.value)


def batch(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shape = (16, 3, 4, 4) if isinstance(model[0], nn.Conv2d) else (16, 10)
    x = torch.rand(shape, generator=gen).to(next(model.parameters()).dtype)
    return x, torch.randint(0, 3, (16,), generator=gen)


def train(model, steps=8, lr=0.5, attach=True, opt=None):
    """SGD steps on one fixed batch, after_step through attach (or by hand); yields after each."""
    x, y = batch(model)
    opt = opt or torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    if attach:
        biograd.attach(opt, model)
    for _ in range(steps):
        opt.zero_grad()
        biograd.targets(model, y)  # drtp's; a no-op for every other rule
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if not attach:
            biograd.after_step(model)
        yield opt


@pytest.mark.parametrize("rule", [None, *biograd.list_rules()])
def test_signs_hold_through_training_on_any_rule(rule):
    model = biograd.dale(cnn(), first=True)
    if rule is not None:
        biograd.convert(model, sweep_rule(rule, blocks="0,2,4"), last="bp")
    before = {n: layer.weight.detach().clone() for n, layer in dale_layers(model)}
    clamped = 0
    for _ in train(model, attach=rule != "bp"):  # bp: after_step by hand
        assert_held(model)
        clamped += sum(int((layer.weight.abs() == EPS).sum()) for _, layer in dale_layers(model))
    assert clamped > 0  # some weights would have flipped: the hold did something
    for name, layer in dale_layers(model):
        assert not torch.equal(layer.weight, before[name]), name


def test_without_dale_weights_do_flip():
    model = cnn()
    start = {n: m.weight.detach().sign() for n, m in model.named_modules() if hasattr(m, "weight")}
    for _ in train(model):
        pass
    assert any(not torch.equal(m.weight.sign(), start[n]) for n, m in model.named_modules()
               if n in start)


def sign_history(model, steps=10):
    """sign(B) of every biograd layer after each of `steps` SGD steps (ss: B from the W now)."""
    return [{n: layer.feedback_weight().sign() for n, layer in biograd.feedback_layers(model)}
            for _ in train(model, steps=steps, lr=1.0)]


@pytest.mark.parametrize("net", [mlp, cnn])
def test_under_dale_sign_symmetry_needs_no_sign_transport(net):
    """The seed's argument: under Dale's law ss's B keeps the units' signs while W learns."""
    model = biograd.convert(biograd.dale(net(), first=True), "ss", last="bp")
    w0 = {n: layer.weight.detach().clone() for n, layer in dale_layers(model)}
    for signs in sign_history(model):
        for name, layer in dale_layers(model):
            assert torch.equal(signs[name], expected_signs(layer)), name
    assert all(not torch.equal(layer.weight, w0[n]) for n, layer in dale_layers(model))
    plain = biograd.convert(net(), "ss", last="bp")  # without Dale's law signs of B change
    history = sign_history(plain)
    assert any(not torch.equal(history[0][n], history[-1][n]) for n in history[0])


@pytest.mark.parametrize("rule", ["ss", "sign_fixed"])
def test_under_dale_sign_feedback_has_rank_one_and_a_dale_classifier_passes_nothing(
        rule, caplog):
    """s·sign(W) has equal rows under Dale's law: each unit below gets s_j · s · Σ_k δ_k, and
    softmax cross-entropy's errors sum to 0 per sample."""
    x, y = batch(mlp())
    grads = {}
    for held in (True, False):
        model = mlp()
        if held:
            biograd.dale(model, first=True)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="biograd"):
            biograd.convert(model, rule)
        warned = [r.message for r in caplog.records if r.levelno == logging.WARNING]
        assert bool(warned) is held and all("sends no error down" in w for w in warned)
        F.cross_entropy(model(x), y).backward()
        b = model[2].feedback_weight()
        assert (torch.linalg.matrix_rank(b).item() == 1) is held
        grads[held] = [model[i].weight.grad.norm().item() for i in (0, 2, 4)]
    assert max(grads[True][:2]) < 1e-5 * grads[True][2]  # nothing below the classifier
    assert min(grads[False][:2]) > 1e-2 * grads[False][2]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="biograd"):
        biograd.convert(biograd.dale(mlp(), first=True), rule, last="bp")
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_state_dict_round_trip_and_exact_resume():
    def fresh(init_seed, dale_seed=1):
        torch.manual_seed(init_seed)
        return biograd.convert(biograd.dale(cnn(), seed=dale_seed), "fa", seed=2)

    straight = fresh(0)
    for _ in train(straight, steps=6):
        pass
    first = fresh(0)
    run = train(first, steps=3)
    opt = [*run][-1]
    saved, saved_opt = copy.deepcopy(first.state_dict()), copy.deepcopy(opt.state_dict())
    assert {"2.dale_sign", "4.dale_sign", "7.dale_sign"} <= set(saved)
    resumed = fresh(5, dale_seed=7)  # other weights, other signs: the checkpoint decides
    opt = torch.optim.SGD(resumed.parameters(), lr=0.5, momentum=0.9)
    resumed.load_state_dict(saved, strict=True)
    opt.load_state_dict(saved_opt)
    for _ in train(resumed, steps=3, opt=opt):
        pass
    expected = straight.state_dict()
    for key, value in resumed.state_dict().items():
        assert torch.equal(value, expected[key]), key
    plain = biograd.convert(cnn(), "fa", seed=2)  # no dale: torch's own complaint
    with pytest.raises(RuntimeError, match=r"Unexpected key.*dale_sign"):
        plain.load_state_dict(saved, strict=True)


def test_the_signs_move_with_the_layer_and_ddp_leaves_them_alone():
    model = biograd.dale(cnn())
    assert biograd.feedback_buffers(model) == ["2.dale_sign", "4.dale_sign", "7.dale_sign"]
    biograd.convert(model, "fa")
    names = biograd.feedback_buffers(model)
    assert {"0.feedback", "2.feedback", "2.dale_sign", "7.dale_sign"} <= set(names)
    assert set(biograd.exclude_feedback_from_ddp(model)) == set(names)
    assert "4.dale_sign" in model._ddp_params_and_buffers_to_ignore
    model.double()
    assert model[2].dale_sign.dtype == torch.float64
    for _ in train(model, steps=1):
        assert_held(model)


def test_convert_and_unconvert_keep_the_signs():
    model = biograd.dale(cnn())
    sign = model[2].dale_sign
    biograd.convert(model, "fa")
    assert isinstance(model[2], FeedbackLayer) and model[2].dale_sign is sign
    biograd.unconvert(model)
    assert type(model[2]) is nn.Conv2d and model[2].dale_sign is sign
    for _ in train(model, steps=3):
        assert_held(model)


@pytest.mark.parametrize("rule", biograd.list_rules())
def test_dale_before_or_after_convert_gives_the_same_model(rule):
    """sign_fixed takes B from sign(W) at set-up, wm from a mirror pass of W: dale after
    convert sets every rule up again from the new W."""
    torch.manual_seed(0)
    chosen = sweep_rule(rule, blocks="0,2,4")
    before = biograd.convert(biograd.dale(cnn(), seed=1), chosen, seed=2)
    torch.manual_seed(0)
    after = biograd.dale(biograd.convert(cnn(), chosen, seed=2), seed=1)
    expected = before.state_dict()
    state = after.state_dict()
    assert state.keys() == expected.keys()
    for key, value in state.items():
        assert torch.equal(value, expected[key]), key
    if rule == "sign_fixed":
        for name, layer in dale_layers(after):
            assert torch.equal(layer.feedback.sign(), expected_signs(layer)), name


def test_resnet18_under_dale_on_fa_learns_one_step():
    model = torchvision.models.resnet18(num_classes=3)
    biograd.convert(biograd.dale(model, balance=True), "fa")  # unbalanced: gradients ~1e-12
    names = [n for n, _ in dale_layers(model)]
    assert "conv1" not in names and "fc" in names and len(names) == 20  # 19 convs + fc
    w = model.layer1[0].conv1.weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    biograd.attach(opt, model)
    x, y = torch.rand(4, 3, 16, 16), torch.tensor([0, 2, 1, 0])  # BN at 1x1 needs N > 2
    F.cross_entropy(model(x), y).backward()
    opt.step()
    assert_held(model)
    assert not torch.equal(model.layer1[0].conv1.weight, w)


@pytest.mark.filterwarnings("ignore:.*weight_norm.*deprecated")
def test_parametrised_weights_held_where_coherent(caplog):
    model = nn.Sequential(nn.Linear(10, 6), nn.ReLU(),
                          parametrizations.spectral_norm(nn.Linear(6, 6)), nn.ReLU(),
                          parametrizations.weight_norm(nn.Linear(6, 3)))
    with caplog.at_level(logging.INFO, logger="biograd"):
        biograd.dale(model, excitatory=0.5)
    assert [n for n, _ in dale_layers(model)] == ["2"]
    assert "4 (parametrised weight (_WeightNorm)" in caplog.text
    layer = model[2]
    for _ in train(model, attach=True):
        w = layer.weight.detach()  # W_orig / σ: the signs of the held W_orig
        assert torch.equal(w.sign(), layer.dale_sign.view(1, -1).expand_as(w))


def unit_rows(w, layer):
    """(output units, their weights): rows of W, or for a transposed convolution's
    (C_in, C_out/g, *k) the weights [group's rows, o, :] of each output channel."""
    if isinstance(layer, nn.Linear) or not layer.transposed:
        return w.reshape(w.shape[0], -1)
    g = layer.groups
    rows = w.reshape(g, w.shape[0] // g, w.shape[1], -1).transpose(1, 2)  # (g, C_out/g, ...)
    return rows.reshape(g * w.shape[1], -1)


@pytest.mark.parametrize("make", LAYERS, ids=lambda m: type(m).__name__)
def test_balance_centres_each_output_unit_and_keeps_its_norm(make):
    layer = copy.deepcopy(make)
    before = layer.weight.detach().clone()
    biograd.dale(layer, excitatory=0.8, seed=4, balance=True)
    all_excitatory = biograd.dale(copy.deepcopy(make), excitatory=1.0, balance=True)
    assert torch.equal(all_excitatory.weight, make.weight.abs())  # nothing to balance with
    w = layer.weight.detach()
    assert torch.equal(w.sign(), expected_signs(layer))
    rows, rows0 = unit_rows(w, layer), unit_rows(before, layer)
    mixed = (rows > 0).any(1) & (rows < 0).any(1)
    assert mixed.any()
    assert torch.equal(rows[~mixed].abs(), rows0[~mixed].abs())  # one sign only: left alone
    norms = rows.norm(dim=1)
    torch.testing.assert_close(norms, rows0.norm(dim=1))
    assert (rows[mixed].sum(1).abs() <= 1e-5 * norms[mixed]).all()


def first_step_activation(model, x):
    """The root mean square of the last hidden layer's ReLU outputs."""
    with torch.no_grad():
        return model[:-1](x).square().mean().sqrt().item()


def test_balance_undoes_the_mean_dale_gives_the_first_step():
    """80% excitatory columns of kept magnitudes give each layer's input a positive mean that
    grows layer on layer; balance=True brings the activations back to the plain net's size."""
    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                             nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 4))

    x = torch.rand(256, 64)
    plain = first_step_activation(net(), x)
    dale = first_step_activation(biograd.dale(net()), x)
    balanced = first_step_activation(biograd.dale(net(), balance=True), x)
    assert dale > 10 * plain
    assert plain / 3 < balanced < 3 * plain


@pytest.mark.filterwarnings("ignore:.*weight_norm.*deprecated")
def test_a_held_layer_parametrised_later_fails_in_one_line():
    model = biograd.dale(mlp())
    parametrizations.weight_norm(model[2])
    with pytest.raises(ValueError, match=r"^2: holds Dale signs but has a parametrised") as err:
        biograd.after_step(model)
    assert "\n" not in str(err.value)


def test_locally_connected_layers_hold_one_sign_per_input_channel():
    model = biograd.unshare(nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Conv2d(3, 4, 3)),
                            torch.randn(1, 2, 7, 7))
    biograd.dale(model, 0.5, seed=1, first=True)
    opt = torch.optim.SGD(model.parameters(), lr=10.0)
    biograd.attach(opt, model)
    for _ in range(2):
        model(torch.randn(4, 2, 7, 7)).square().sum().backward()
        opt.step()
        opt.zero_grad()
    for layer in (model[0], model[2]):
        sign = layer.dale_sign  # (C_in,)
        w = layer.weight.detach().view(*layer.weight.shape[:2], layer.in_channels, 9)
        assert torch.equal(torch.sign(w), sign.view(1, 1, -1, 1).expand_as(w))


def test_a_refused_dale_changes_nothing():
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3), nn.LazyLinear(2))
    before = {k: v.clone() for k, v in model[:3].state_dict().items()}
    with pytest.raises(ValueError, match="lazy layer"):
        biograd.dale(model, first=True)
    assert not any("dale_sign" in name for name, _ in model.named_buffers())
    for key, value in model[:3].state_dict().items():
        assert torch.equal(value, before[key]), key


def test_a_tied_weight_takes_one_layers_signs(caplog):
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 2)
            self.b.weight = self.a.weight

    model = Tied()
    with caplog.at_level(logging.INFO, logger="biograd"):
        biograd.dale(model, 0.5, first=True)
    assert "b (its weight is a's, held to a's signs)" in caplog.text
    held = model.a.weight.detach().clone()
    biograd.after_step(model)
    assert torch.equal(model.a.weight, held)  # one set of signs: nothing pinned at eps
    assert "dale_sign" not in model.b._buffers


def test_the_conversion_report_says_which_layers_are_under_dale():
    model = biograd.convert(biograd.dale(mlp(), 0.8, seed=0), "fa", last="bp")
    report = biograd.report(model)
    held = {name: layer.dale_sign for name, layer in dale_layers(model)}
    assert [name for name, _, _ in report.dale] == list(held) and held
    assert [(e, n) for _, e, n in report.dale] == [
        (int((s > 0).sum()), s.numel()) for s in held.values()]
    excitatory = sum(int((s > 0).sum()) for s in held.values())
    units = sum(s.numel() for s in held.values())
    assert (f"under Dale's law: {len(held)} layers, {excitatory:,} of {units:,} input units "
            f"excitatory") in str(report)
    assert "Dale" not in str(biograd.report(biograd.convert(mlp(), "fa")))
