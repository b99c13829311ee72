"""Behaviour of each rule beyond the shared contract: what its B is and how B moves."""

import math

import pytest
import torch
import torch.nn.functional as F
from checks import sweep_rule
from torch import nn

import biograd
from biograd.nn import Conv2d, Linear


def ss_scale(weight):
    """The seed's magnitude, written out from REFERENCE.md."""
    if weight.dim() == 2:
        return 1 / math.sqrt(weight.shape[1])
    c_out, _, kh, kw = weight.shape
    return math.sqrt(2 / (kh * kw * c_out))


@pytest.mark.parametrize("layer", [Linear(20, 7, rule="ss"), Conv2d(3, 16, (3, 5), rule="ss")])
def test_ss_feedback_is_seed_scale_times_sign(layer):
    w = layer.weight.detach()
    assert torch.equal(layer.feedback_weight(), ss_scale(w) * torch.sign(w))
    cos = w.abs().mean() / w.square().mean().sqrt()  # REFERENCE: cos = mean|w| / rms(w)
    assert biograd.weight_angles(layer)[""] == pytest.approx(math.degrees(math.acos(cos)))


def test_ss_scale_of_a_transposed_convolution_counts_its_output_channels():
    # W is (C_in, C_out / groups, k, k): s = sqrt(2 / (k k C_out)) with the layer's C_out
    layer = biograd.nn.ConvTranspose2d(4, 6, 3, groups=2, rule="ss")
    w = layer.weight.detach()
    assert w.shape == (4, 3, 3, 3)
    assert torch.equal(layer.feedback_weight(), math.sqrt(2 / (3 * 3 * 6)) * torch.sign(w))


@pytest.mark.parametrize("rule", ["ss", "sign_fixed"])
def test_sign_feedback_scaled_to_the_weight(rule):
    layer = Conv2d(4, 8, 3, rule=biograd.get_rule(rule, scale="weight"))
    with torch.no_grad():
        layer.weight.mul_(0.1)  # far below the seed's s, as RetinaNet's heads
    if rule == "sign_fixed":
        layer.set_rule(biograd.get_rule(rule, scale="weight"), seed=1)
    w, b = layer.weight.detach(), layer.feedback_weight()
    assert torch.equal(torch.sign(b), torch.sign(w))
    assert b.square().mean().sqrt().item() == pytest.approx(w.square().mean().sqrt().item())


def test_ss_keeps_no_extra_tensors():
    reference = nn.Conv2d(8, 8, 3, padding=1)
    layer = biograd.convert(nn.Conv2d(8, 8, 3, padding=1), "ss")
    assert list(layer.buffers()) == [] and len(list(layer.parameters())) == 2

    def saved_bytes(module):
        total = []
        with torch.autograd.graph.saved_tensors_hooks(
                lambda t: total.append(t.numel() * t.element_size()) or t, lambda t: t):
            module(torch.randn(4, 8, 10, 10, requires_grad=True)).sum().backward()
        return sum(total)

    assert saved_bytes(layer) == saved_bytes(reference)


def test_fa_feedback_is_fixed_and_seed_scaled():
    layer = Linear(50, 10, rule="fa", seed=3)
    b0 = layer.feedback_weight().clone()
    s = ss_scale(layer.weight)
    assert b0.abs().max() <= s and b0.std() == pytest.approx(s / math.sqrt(3), rel=0.15)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    for _ in range(3):
        layer(torch.randn(8, 50)).square().sum().backward()
        opt.step()
        opt.zero_grad()
    assert torch.equal(layer.feedback_weight(), b0)


def test_frsf_angle_is_against_effective_feedback_not_magnitudes():
    layer = Conv2d(4, 8, 3, rule="frsf")
    m = layer.feedback_magnitude
    assert (m >= 0).all()
    assert torch.equal(layer.feedback_weight(), m * torch.sign(layer.weight.detach()))
    measured = biograd.weight_angles(layer)[""]
    assert measured == pytest.approx(biograd.angle(layer.weight, torch.copysign(m, layer.weight)))
    assert measured < biograd.angle(layer.weight, m) - 10  # biotorch's mistake measures this


COUNTERS = ("feedback_seed", "feedback_step")


@pytest.mark.parametrize("fresh", ["window", "full"])
def test_brsf_draws_a_new_feedback_each_optimiser_step(fresh):
    layer = Conv2d(4, 8, 3, rule=biograd.get_rule("brsf", fresh=fresh), seed=5)
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    draws = []
    for _ in range(3):
        layer(x).sum().backward()
        used = layer.feedback_weight()
        layer(x).sum().backward()  # another batch of the same step (accumulation): same B
        assert torch.equal(layer.feedback_weight(), used)
        draws.append(used)
        biograd.after_step(layer)  # the step is over: the next draw
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[1], draws[2])
    for b in draws:
        assert torch.equal(torch.sign(b), torch.sign(layer.weight.detach()))
    # the same seed replays the same sequence
    again = Conv2d(4, 8, 3, rule=biograd.get_rule("brsf", fresh=fresh), seed=5)
    again.load_state_dict({k: v for k, v in layer.state_dict().items() if k not in COUNTERS},
                          strict=False)
    assert torch.equal(again.feedback_weight(), draws[0])


def test_brsf_visits_every_window_before_repeating_one():
    from biograd.rules.brsf import SLACK, window_walk

    for seed in (0, 5, 17, 2**40 + 3):
        stride, shift = window_walk(seed)
        starts = {(t * stride + shift) % (SLACK + 1) for t in range(SLACK + 1)}
        assert len(starts) == SLACK + 1


def test_sign_fixed_never_changes_sign():
    layer = Linear(30, 10, rule="sign_fixed")
    b = layer.feedback_weight().clone()
    assert torch.equal(b, ss_scale(layer.weight) * torch.sign(b))
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)  # large steps push weights across zero
    flips = 0
    for _ in range(5):
        before = torch.sign(layer.weight.detach()).clone()
        layer(torch.randn(16, 30)).sum().backward()
        opt.step()
        opt.zero_grad()
        flips += (torch.sign(layer.weight.detach()) != before).sum().item()
        biograd.after_step(layer)
        assert torch.equal(torch.sign(layer.weight.detach()), torch.sign(b))
    assert flips > 0  # the constraint had work to do
    assert torch.equal(layer.feedback_weight(), b)


def test_kp_difference_to_weight_decays_by_one_minus_lr_times_decay():
    torch.manual_seed(1)
    teacher = torch.randn(10, 3)  # a learnable task, so W keeps its size under weight decay
    model = nn.Sequential(Linear(10, 20, rule="kp"), nn.Tanh(), Linear(20, 3, rule="kp"))
    lr, decay = 0.2, 0.02
    opt = torch.optim.SGD(model.parameters(), lr=lr, weight_decay=decay)
    layer = model[0]
    start = biograd.weight_angles(model)
    for _ in range(300):
        gap = (layer.weight - layer.feedback).detach().clone()
        x = torch.randn(32, 10)
        F.cross_entropy(model(x), (x @ teacher).argmax(1)).backward()
        opt.step()
        opt.zero_grad()
        torch.testing.assert_close(layer.weight - layer.feedback, (1 - lr * decay) * gap)
    end = biograd.weight_angles(model)
    for name in start:
        assert end[name] < start[name] / 3, name


@pytest.mark.parametrize("make", [lambda: nn.Linear(6, 4), lambda: nn.Conv2d(2, 4, 3),
                                  lambda: biograd.nn.LocallyConnected2d(2, 4, 3, (5, 5))])
def test_kp_feedback_stays_while_its_weight_is_frozen(make):
    """B's increment is W's: freeze W (after converting) and B stands still; unfreeze the
    layer and both learn again."""
    torch.manual_seed(0)
    layer = biograd.convert(nn.Sequential(make()), "kp")[0]
    x = torch.randn(3, 6) if isinstance(layer, nn.Linear) else torch.randn(3, 2, 5, 5)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1, weight_decay=0.01)
    for frozen in (True, False):
        layer.weight.requires_grad_(not frozen)
        b = layer.feedback.detach().clone()
        layer(x.requires_grad_()).square().sum().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        assert (layer.feedback.grad is None) and torch.equal(layer.feedback, b) == frozen
        assert x.grad is not None and x.grad.abs().sum() > 0  # errors still go down through B


@pytest.mark.parametrize("layer", [Linear(64, 32, rule="wm"), Conv2d(8, 16, 3, rule="wm")])
def test_wm_mirror_phase_aligns_feedback(layer):
    start = biograd.weight_angles(layer)[""]
    assert start > 60  # starts random, as FA
    for _ in range(600):  # 1 - (1 - 0.005)^600 = 95% of the way to W's size
        biograd.after_step(layer)
    end = biograd.weight_angles(layer)[""]
    assert end < 10 and end < start
    # B tracks W's scale, not only its direction
    ratio = layer.feedback_weight().norm() / layer.weight.detach().norm()
    assert ratio == pytest.approx(1, abs=0.1)


def test_rules_without_between_step_work_leave_the_layer_alone():
    for rule in ("bp", "fa", "ss", "frsf", "kp"):
        layer = Linear(5, 4, rule=rule)
        state = {k: v.clone() for k, v in layer.state_dict().items()}
        biograd.after_step(layer)
        for k, v in layer.state_dict().items():
            assert torch.equal(v, state[k]), (rule, k)


def test_unknown_rule_lists_the_valid_ones():
    with pytest.raises(ValueError, match="choose one of bp, fa, ss"):
        Linear(2, 2, rule="feedback-allignment")
    with pytest.raises(ValueError, match="bad options for rule 'wm'"):
        biograd.get_rule("wm", sample=3)
    assert biograd.get_rule("Kolen-Pollack").name == "kp"


def bad_options(rule_cls):
    """(option, bad value) pairs for every option of a rule, read off its dataclass fields:
    a value of the wrong type, and one outside what the option accepts."""
    import typing
    from dataclasses import fields

    hints = typing.get_type_hints(rule_cls)
    for f in fields(rule_cls):
        meta, kind = f.metadata, hints[f.name]
        yield f.name, [1]  # no option takes a list
        if meta.get("choices"):
            yield f.name, meta["choices"][0][:-1] + "x"  # a near miss, like "wieght"
            continue
        if meta.get("pattern"):  # a string of a form: no form is empty or has a blank
            yield f.name, ""
            yield f.name, "a, b"
            continue
        yield f.name, "abc"
        yield f.name, 2 if kind is bool else True  # a number for a flag, a flag for the rest
        if kind is int or int in typing.get_args(kind):
            yield f.name, 2.5
        for key, step in (("low", -1), ("above", 0), ("high", 1)):
            if meta.get(key) is not None:
                yield f.name, meta[key] + step * (1 if key != "above" else 0)


CASES = [(name, option, value) for name in biograd.list_rules()
         for option, value in bad_options(biograd.rules.rule_class(name))]


def test_every_rule_option_is_covered():
    assert {(n, o) for n, o, _ in CASES} >= {("fa", "scale"), ("brsf", "fresh"),
                                             ("wm", "samples"), ("wm", "rate"),
                                             ("kp", "decay"), ("sign_fixed", "eps"),
                                             ("dfa_blocks", "blocks"),
                                             ("alignment", "noise"), ("alignment", "tied"),
                                             ("alignment", "sigma"), ("sa", "self"),
                                             ("aa", "sparse"), ("ia", "null")}


@pytest.mark.parametrize(("rule", "option", "value"), CASES,
                         ids=[f"{n}-{o}-{v!r}" for n, o, v in CASES])
def test_bad_rule_options_are_refused_at_construction(rule, option, value):
    with pytest.raises(ValueError, match=rf"{rule} {option}=.*: use "):
        biograd.get_rule(rule, **{option: value})


def test_a_bad_rule_option_is_one_line_from_the_command(capsys):
    from biograd.cli import main

    assert main(["train", "--rule", "fa", "--rule-options", "{fa: {scale: wieght}}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "scale='wieght'" in err[0] and "'seed', 'weight'" in err[0]


@pytest.mark.parametrize("rule", biograd.rules.list_rules())
@pytest.mark.parametrize(("layer", "shape"), [
    (lambda: nn.Linear(6, 8), (0, 6)),        # an empty batch
    (lambda: nn.Linear(3, 8), (2, 0, 3)),     # an empty sequence
    (lambda: nn.Conv2d(3, 4, 3), (0, 3, 5, 5)),
], ids=["linear-empty-batch", "linear-empty-sequence", "conv-empty-batch"])
def test_an_empty_batch_gives_zero_gradients(rule, layer, shape):
    torch.manual_seed(0)
    model = biograd.convert(nn.Sequential(layer(), nn.ReLU(), nn.Flatten(1)),
                            sweep_rule(rule, blocks="0"))
    x = torch.randn(*shape, requires_grad=True)
    biograd.targets(model, torch.zeros(shape[0], dtype=torch.long))  # drtp's
    model(x).sum().backward()
    assert x.grad.shape == x.shape and not x.grad.any()
    assert not model[0].weight.grad.any()


def test_kp_b_takes_the_gradient_w_gets_through_its_own_layer():
    # as docs/rules.md says: a W tied to an embedding gets the embedding's part too, B does not
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.head = nn.Embedding(10, 4), nn.Linear(4, 10, bias=False)
            self.head.weight = self.emb.weight

        def forward(self, i):
            return self.head(torch.tanh(self.emb(i)))

    torch.manual_seed(0)
    model = biograd.convert(Tied(), "kp", include=["head"])
    tokens, targets = torch.tensor([1, 2, 3]), torch.tensor([2, 3, 4])
    F.cross_entropy(model(tokens), targets).backward()
    hidden = torch.tanh(model.emb(tokens)).detach()
    own = torch.func.grad(lambda w: F.cross_entropy(hidden @ w.T, targets))(
        model.head.weight.detach())
    torch.testing.assert_close(model.head.feedback.grad, own)
    assert not torch.allclose(model.head.weight.grad, own)


def test_after_step_on_a_model_is_each_layers_after_step():
    """biograd.after_step runs each rule's work over all its layers at once (sign_fixed's
    clamp, brsf's and the alignment family's noise counters as one call for the model): bit
    for bit what each layer's own after_step does, once per layer, for a layer the model holds
    twice too."""
    def model():
        torch.manual_seed(0)
        shared = nn.Linear(5, 5)
        net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten(), nn.Linear(27, 5), shared,
                            nn.ReLU(), shared, nn.Linear(5, 4), nn.Linear(4, 4), nn.Linear(4, 4))
        biograd.convert(net, "sign_fixed", seed=3, include=["0", "2", "3"])
        biograd.convert(net, biograd.get_rule("alignment", amp=1e-3, noise="normal"), seed=3,
                        include=["7"])
        biograd.convert(net, "sa", seed=3, include=["8"])
        return biograd.convert(net, "brsf", seed=3, include=["6"])

    a, b = model(), model()
    for net in (a, b):
        torch.manual_seed(1)
        with torch.no_grad():
            for p in net.parameters():  # weights pushed across their signs, as a step would
                p.add_(torch.randn_like(p))
    biograd.after_step(a)
    for _, layer in biograd.feedback_layers(b):
        layer.after_step()
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    assert int(a[6].feedback_step) == 1 and int(a[7].feedback_step) == 1


def test_sign_fixed_grouped_hold_is_each_layers_hold():
    """sign_fixed's clamp over many layers at once (torch._foreach_*, `hold_signs_`): bit for
    bit each layer's own `hold_sign_`."""
    from biograd.rules.sign_fixed import hold_signs_
    from biograd.signs import floor, hold_sign_

    torch.manual_seed(0)
    ws = [torch.randn(4, 3), torch.randn(2, 3, 3, 3), torch.full((5,), 1e-12)]
    bs = [torch.randn_like(w).sign() * 0.1 for w in ws]
    grouped = [w.clone() for w in ws]
    hold_signs_(grouped, [torch.sign(b) for b in bs], floor(1e-10, torch.float32))
    for w, b, g in zip(ws, bs, grouped, strict=True):
        assert torch.equal(hold_sign_(w.clone(), torch.sign(b), 1e-10), g)


@pytest.mark.parametrize("width", [4, 300])  # kept signs, and made at each step
def test_sign_fixed_holds_to_a_loaded_b(width):
    """sign_fixed keeps sign(B) of a small layer between steps: a B written in place (a
    loaded checkpoint's) or replaced is what the next after_step holds W to, on a layer
    small enough to keep its signs (4×4) and one too large to (300×300)."""
    layer = biograd.convert(nn.Linear(width, width), "sign_fixed", seed=0)
    biograd.after_step(layer)  # its signs kept, where it keeps them
    state = layer.state_dict()
    state["feedback"] = -state["feedback"]
    layer.load_state_dict(state)
    biograd.after_step(layer)
    assert torch.equal(torch.sign(layer.weight), torch.sign(layer.feedback))
    layer.feedback = layer.feedback.neg()  # a new tensor in its place
    biograd.after_step(layer)
    assert torch.equal(torch.sign(layer.weight), torch.sign(layer.feedback))


def test_the_step_walk_is_modules():
    """after_step's walk of a model (`_each_module`) gives model.modules(): every module once,
    in its order, a module held twice once, an empty slot (None) skipped."""
    from biograd.convert import _each_module

    shared = nn.Linear(3, 3)
    net = nn.Sequential(nn.Sequential(shared, nn.ReLU()), shared, nn.Identity())
    net.register_module("empty", None)
    net[0].add_module("again", net[0])  # a module that holds itself: walked once
    assert [id(m) for m in _each_module(net)] == [id(m) for m in net.modules()]
