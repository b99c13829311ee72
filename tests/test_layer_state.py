"""A layer's feedback state: written in place, tensors only, and a way back to plain torch."""

import copy

import pytest
import torch
import torch.nn.functional as F
from checks import sweep_rule
from torch import nn

import biograd
from biograd.nn.layers import DROP_INS

RULES = biograd.list_rules()


def net():
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(6 * 5 * 5, 4))


def counters(layer):
    """The layer's seed, and its step counter where its rule keeps one."""
    step = layer._buffers.get("feedback_step")
    return layer.feedback_seed, None if step is None else int(step)


def assert_same_feedback(model, other):
    """Every layer of the two models has the same seed, counter and feedback."""
    direct = False
    for (_, a), (_, b) in zip(biograd.feedback_layers(model), biograd.feedback_layers(other),
                              strict=True):
        assert counters(a) == counters(b)
        direct |= a.learning_rule.direct
        if not a.learning_rule.direct:
            assert torch.equal(a.feedback_weight(), b.feedback_weight())
    if direct:  # dfa's (drtp's) B is cut to the shapes a backward meets: compare what it sends
        x = torch.randn(2, 3, 5, 5)
        for m in (model, other):
            m.zero_grad()
            biograd.targets(m, torch.tensor([0, 3]))  # drtp's
            m(x).square().sum().backward()
        for (n, p), (_, q) in zip(model.named_parameters(), other.named_parameters(),
                                  strict=True):
            assert torch.equal(p.grad, q.grad), n


def state_tensors(model):
    """{name: tensor object} of every parameter and buffer."""
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


@pytest.mark.parametrize("rule", RULES)
def test_a_plain_load_writes_feedback_in_place(rule):
    model = biograd.convert(net(), sweep_rule(rule, "0"), seed=1)
    before = state_tensors(model)
    model.load_state_dict(net().state_dict(), strict=True)  # a plain torch checkpoint
    after = state_tensors(model)
    assert after.keys() == before.keys()
    for name, tensor in after.items():
        assert tensor is before[name], f"{name}: a new tensor replaced the one others hold"


def test_kp_learns_the_feedback_the_optimiser_steps_after_a_plain_load():
    model = biograd.convert(net(), "kp", seed=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)  # built before the load, as usual
    model.load_state_dict(net().state_dict())
    b = model[3].feedback.detach().clone()
    x, y = torch.randn(4, 3, 5, 5), torch.randint(0, 4, (4,))
    F.cross_entropy(model(x), y).backward()
    opt.step()
    # B took exactly W's step: kp is still kp, not fa with an orphaned B
    assert torch.equal(model[3].feedback.detach(), b.add(model[3].weight.grad, alpha=-0.1))


LAYERS = [
    (nn.Linear, (5, 4)),
    (nn.Conv1d, (3, 4, 3)),
    (nn.Conv2d, (3, 4, 3)),
    (nn.Conv3d, (3, 4, 3)),
]


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize(("cls", "args"), LAYERS, ids=lambda v: getattr(v, "__name__", ""))
def test_drop_ins_leave_torch_random_stream_as_torch_layers_do(cls, args, rule):
    torch.manual_seed(0)
    plain = cls(*args)
    after_plain = torch.rand(8)
    torch.manual_seed(0)
    ours = DROP_INS[cls](*args, rule=rule)
    after_ours = torch.rand(8)
    assert torch.equal(after_plain, after_ours)
    assert torch.equal(plain.weight, ours.weight)


def test_drop_ins_without_a_seed_still_draw_distinct_feedback():
    torch.manual_seed(0)
    a, b = biograd.nn.Linear(8, 8, rule="fa"), biograd.nn.Linear(8, 8, rule="fa")
    assert not torch.equal(a.feedback, b.feedback)
    torch.manual_seed(0)
    again = biograd.nn.Linear(8, 8, rule="fa")
    assert torch.equal(a.feedback, again.feedback)  # from the global seed, reproducibly


@pytest.mark.parametrize("rule", RULES)
def test_state_dict_holds_tensors_only_and_saves_with_safetensors(rule, tmp_path):
    from safetensors.torch import load_file, save_file

    model = biograd.convert(net(), sweep_rule(rule, "0"), seed=1)
    x = torch.randn(2, 3, 5, 5)
    biograd.targets(model, torch.tensor([0, 3]))  # drtp's; a no-op for every other rule
    model(x).sum().backward()
    biograd.after_step(model)  # brsf: a new draw; wm: one more mirror pass
    state = model.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    save_file(state, tmp_path / "model.safetensors")
    other = biograd.convert(net(), sweep_rule(rule, "0"), seed=2)
    other.load_state_dict(load_file(tmp_path / "model.safetensors"), strict=True)
    assert_same_feedback(model, other)


@pytest.mark.parametrize("rule", RULES)
def test_checkpoints_of_the_dict_form_still_load(rule):
    model = biograd.convert(net(), sweep_rule(rule, "0"), seed=1)
    biograd.targets(model, torch.tensor([0, 3]))  # drtp's; a no-op for every other rule
    model(torch.randn(2, 3, 5, 5)).sum().backward()
    biograd.after_step(model)  # counters away from their start
    state = model.state_dict()
    old = {k: v for k, v in state.items() if not k.endswith(("feedback_seed", "feedback_step"))}
    for name, layer in biograd.feedback_layers(model):  # what earlier versions wrote
        old[f"{name}._extra_state"] = {"rule": rule, "seed": layer.feedback_seed,
                                       "step": counters(layer)[1] or 0}
    other = biograd.convert(net(), sweep_rule(rule, "0"), seed=2)
    other.load_state_dict(old, strict=True)
    assert_same_feedback(model, other)


@pytest.mark.parametrize("rule", RULES)
def test_unconvert_gives_back_plain_torch_with_the_same_parameters(rule):
    plain = net()
    model = biograd.convert(copy.deepcopy(plain), sweep_rule(rule, "0"), seed=1)
    params = dict(model.named_parameters())
    assert biograd.unconvert(model) is model
    assert [type(m) for m in model.modules()] == [type(m) for m in plain.modules()]
    for name, p in model.named_parameters():
        assert p is params[name], name  # the same Parameter objects: optimisers keep working
    assert model.state_dict().keys() == plain.state_dict().keys()
    plain.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(2, 3, 5, 5)
    assert torch.equal(model(x), plain(x))
    assert not list(biograd.feedback_layers(model))


def test_unconvert_a_bare_layer_and_a_subclass():
    layer = biograd.unconvert(biograd.nn.Conv2d(2, 3, 3, rule="fa"))
    assert type(layer) is nn.Conv2d and set(layer.state_dict()) == {"weight", "bias"}
    timm_linear = pytest.importorskip("timm.layers.linear").Linear
    model = biograd.convert(nn.Sequential(timm_linear(4, 3)), "ss")
    assert type(biograd.unconvert(model)[0]) is timm_linear  # the class it had before


def test_a_loaded_step_counter_outlives_the_feedback_drawn_for_absent_state():
    # brsf saved with fresh="full" has no pool: loading into fresh="window" draws the pool
    # anew, and the step loaded with it stays
    full = biograd.nn.Linear(6, 4, rule=biograd.get_rule("brsf", fresh="full"), seed=3)
    full.feedback_step.fill_(5)
    window = biograd.nn.Linear(6, 4, rule="brsf", seed=3)
    window.load_state_dict(full.state_dict())
    assert int(window.feedback_step) == 5
    assert window.feedback_pool.numel() >= window.weight.numel()
