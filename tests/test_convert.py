"""The converter: what it swaps, what it reuses, what it leaves alone and says so."""

import logging

import pytest
import torch
from checks import sweep_rule
from torch import nn

import biograd
from biograd.nn import Conv2d, FeedbackLayer, Linear


def small_net():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )


def rules_of(model):
    return {name: layer.rule for name, layer in biograd.feedback_layers(model)}


def test_converts_every_linear_and_conv_reusing_their_tensors():
    model = small_net()
    weights = [model[0].weight, model[3][0].weight, model[6].weight]
    x = torch.randn(2, 3, 5, 5)
    before = model(x)
    assert biograd.convert(model, "fa") is model
    assert rules_of(model) == {"0": "fa", "3.0": "fa", "6": "fa"}
    after = [model[0].weight, model[3][0].weight, model[6].weight]
    assert all(a is b for a, b in zip(weights, after, strict=True))
    assert torch.equal(model(x), before)


def test_last_and_per_layer_rules_and_patterns():
    model = biograd.convert(small_net(), "ss", last="bp")
    assert rules_of(model) == {"0": "ss", "3.0": "ss", "6": "bp"}
    model = biograd.convert(small_net(), "fa", rules={"3*": "kp", "0": "wm"})
    assert rules_of(model) == {"0": "wm", "3.0": "kp", "6": "fa"}
    model = biograd.convert(small_net(), "fa", exclude="3")  # a parent excludes its children
    assert rules_of(model) == {"0": "fa", "6": "fa"}
    model = biograd.convert(small_net(), "fa", include=["6", "0"])
    assert rules_of(model) == {"0": "fa", "6": "fa"}


def test_conversion_is_idempotent_and_switches_rules():
    model = biograd.convert(small_net(), "fa", seed=1)
    feedback = model[0].feedback
    biograd.convert(model, "fa", seed=1)
    assert model[0].feedback is feedback
    biograd.convert(model, "ss")
    assert rules_of(model) == {"0": "ss", "3.0": "ss", "6": "ss"}
    assert "feedback" not in dict(model.named_buffers(prefix="", recurse=True))
    assert not hasattr(model[0], "feedback")


def test_a_switch_redraws_the_state_in_the_tensors_an_optimiser_holds():
    torch.manual_seed(0)
    model = biograd.convert(small_net(), "kp", seed=1)
    b = model[0].feedback
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    biograd.convert(model, "kp", decay=1e-3, seed=2)  # other options: a switch, B redrawn
    assert model[0].feedback is b
    assert torch.equal(b, biograd.convert(small_net(), "kp", decay=1e-3, seed=2)[0].feedback)
    before = b.detach().clone()
    model(torch.randn(2, 3, 6, 6)).sum().backward()
    optimiser.step()
    assert not torch.equal(model[0].feedback, before)  # the optimiser steps the live B
    biograd.convert(model, "fa", seed=1)  # kp's Parameter becomes fa's buffer
    assert "feedback" in model[0]._buffers and "feedback" not in model[0]._parameters
    assert torch.equal(model[0].feedback, biograd.convert(small_net(), "fa", seed=1)[0].feedback)


def test_feedback_depends_on_seed_and_name_only():
    a = biograd.convert(small_net(), "fa", seed=3)
    torch.manual_seed(99)  # the global stream has no say
    b = biograd.convert(small_net(), "fa", seed=3)
    c = biograd.convert(small_net(), "fa", seed=4)
    assert torch.equal(a[0].feedback, b[0].feedback)
    assert not torch.equal(a[0].feedback, c[0].feedback)
    twins = biograd.convert(nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8)), "fa", seed=3)
    assert not torch.equal(twins[0].feedback, twins[1].feedback)  # same shape, other name


def test_a_bare_layer_comes_back_converted():
    layer = biograd.convert(nn.Conv2d(2, 3, 3), "ss")
    assert isinstance(layer, Conv2d) and layer.rule == "ss"


def test_report_names_what_still_learns_through_weight_transport(caplog):
    class Custom(nn.Linear):  # a subclass with its own forward is left alone
        def forward(self, x):
            return super().forward(x) * 2

    model = nn.Sequential(small_net(), nn.MultiheadAttention(4, 2), Custom(4, 4),
                          nn.Embedding(10, 4))
    with caplog.at_level(logging.INFO, logger="biograd"):
        biograd.convert(model, "ss", last="bp")
    assert "layers converted" in caplog.text
    report = biograd.report(model)
    # the attention and its out_proj convert (out_proj, the last layer, on bp)
    assert [(n, r) for n, _, r in report.layers] == [("0.0", "ss"), ("0.3.0", "ss"),
                                                     ("0.6", "ss"), ("1", "ss"),
                                                     ("1.out_proj", "bp")]
    why = {owner: reason for owner, _, _, reason in report.transport}
    assert set(why) == {"0.1", "1.out_proj", "2", "3"}
    assert why["1.out_proj"] == "on bp"
    assert "custom forward" in why["2"]
    assert "still learning through weight transport" in str(report)


def test_plain_torch_checkpoint_loads_and_feedback_follows_loaded_weights():
    source = small_net()
    state = source.state_dict()
    model = biograd.convert(small_net(), "sign_fixed")
    model.load_state_dict(state, strict=True)  # no feedback keys: derived from the loaded W
    assert torch.equal(torch.sign(model[0].feedback), torch.sign(source[0].weight))
    for key in state:
        assert torch.equal(model.state_dict()[key], state[key]), key


def test_loading_state_of_another_rule_says_what_to_do():
    state = biograd.convert(small_net(), "fa").state_dict()
    model = biograd.convert(small_net(), "ss")
    with pytest.raises((ValueError, RuntimeError), match="convert the model with the same rules"):
        model.load_state_dict(state, strict=False)


def test_drop_in_keeps_torch_signature_and_keys():
    layer = Linear(4, 3, bias=False, dtype=torch.float64, rule="kp")
    assert layer.weight.dtype == torch.float64 and layer.bias is None
    assert set(layer.state_dict()) == {"weight", "feedback", "feedback_seed"}
    conv = Conv2d(4, 6, 3, stride=2, padding=1, groups=2, padding_mode="reflect", rule="fa")
    assert isinstance(conv, nn.Conv2d) and conv.groups == 2 and conv.padding_mode == "reflect"


# --- converter gaps: parametrised weights, shared modules, `last`, transposed convolutions ---

PARAMETRIZE = {
    "weight_norm": lambda m: nn.utils.parametrizations.weight_norm(m),
    "spectral_norm": lambda m: nn.utils.parametrizations.spectral_norm(m),
    "old_weight_norm": lambda m: nn.utils.weight_norm(m),  # the hook-based, deprecated one
}


def parametrised_net(how):
    torch.manual_seed(0)
    return nn.Sequential(PARAMETRIZE[how](nn.Conv2d(3, 4, 3, padding=1)), nn.ReLU(),
                         nn.Flatten(), PARAMETRIZE[how](nn.Linear(4 * 5 * 5, 3)))


@pytest.mark.filterwarnings("ignore:.*weight_norm.*deprecated")
@pytest.mark.parametrize("how", list(PARAMETRIZE))
@pytest.mark.parametrize("rule", biograd.list_rules())
def test_parametrised_layers_convert_and_learn_through_their_parametrisation(how, rule):
    reference, model = parametrised_net(how), parametrised_net(how)
    biograd.convert(model, sweep_rule(rule, blocks="0"), seed=0)
    layers = dict(biograd.feedback_layers(model))
    if biograd.get_rule(rule).writes_weight:  # sign_fixed cannot write a computed W
        assert not layers
        why = {owner: reason for owner, _, _, reason in biograd.report(model).transport}
        assert "parametrised" in why["0"] and rule in why["0"]
        return
    assert set(layers) == {"0", "3"}
    reference.eval(), model.eval()  # spectral_norm: no power iteration, same u on both
    x = torch.randn(2, 3, 5, 5)
    assert torch.equal(model(x), reference(x))
    model.train(), reference.train()
    biograd.targets(model, torch.tensor([0, 2]))  # drtp's; a no-op for every other rule
    model(x).square().sum().backward()
    reference(x).square().sum().backward()
    grads = dict(reference.named_parameters())
    for name, p in model.named_parameters():
        if name.startswith("3.") and "feedback" not in name:  # the top layer sees true errors
            torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-5, atol=1e-6)
        assert p.grad is not None, name
    for name, layer in layers.items():  # B follows the weight the parametrisation computes
        if rule in ("ss", "brsf", "frsf", "bp"):
            w = layer.weight_now()
            assert torch.equal(torch.sign(layer.feedback_weight()), torch.sign(w)), name
    before = {n: b.clone() for n, b in model.named_buffers()}
    biograd.weight_angles(model)  # in train mode: spectral_norm's power iteration must not run
    for n, b in model.named_buffers():
        assert torch.equal(b, before[n]), n


def test_a_module_used_twice_stays_one_module():
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared, nn.ReLU(), nn.Linear(4, 2))
    biograd.convert(model, "fa", last="bp")
    assert model[0] is model[2] and isinstance(model[0], FeedbackLayer)
    assert rules_of(model) == {"0": "fa", "4": "bp"}
    assert model[0].weight is shared.weight


def test_last_names_the_models_last_layer_whatever_is_filtered():
    model = biograd.convert(small_net(), "fa", last="bp", exclude=["6"])
    assert rules_of(model) == {"0": "fa", "3.0": "fa"}  # the classifier is left alone
    model = biograd.convert(small_net(), "fa", last="bp", include=["0", "3"])
    assert rules_of(model) == {"0": "fa", "3.0": "fa"}
    model = biograd.convert(small_net(), "fa", last="bp", rules={"6": "ss"})
    assert rules_of(model) == {"0": "fa", "3.0": "fa", "6": "ss"}  # a pattern wins over last


TRANSPOSED = [
    (nn.ConvTranspose1d(4, 6, 3, stride=2, padding=1, output_padding=1), (2, 4, 5)),
    (nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, groups=2, dilation=2), (2, 4, 5, 5)),
    (nn.ConvTranspose3d(2, 4, 2, stride=2), (1, 2, 3, 3, 3)),
]


@pytest.mark.parametrize(("layer", "shape"), TRANSPOSED, ids=lambda v: type(v).__name__)
def test_transposed_convolutions_convert(layer, shape):
    model = biograd.convert(nn.Sequential(layer), "fa")
    assert isinstance(model[0], FeedbackLayer) and isinstance(model[0], type(layer))
    assert not biograd.report(model).transport


def test_a_lazy_layer_is_refused_until_a_forward_gives_it_a_shape():
    model = nn.Sequential(nn.Linear(4, 5), nn.LazyLinear(3))
    with pytest.raises(ValueError, match=r"^1: a lazy layer.*run one forward pass"):
        biograd.convert(model, "fa")
    model(torch.randn(2, 4))
    assert isinstance(biograd.convert(model, "fa")[1], biograd.nn.Linear)


def test_a_model_on_the_meta_device_is_refused_until_its_weights_exist():
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    with pytest.raises(ValueError, match=r"^0: on the meta device.*materialise"):
        biograd.convert(model, "fa")
    assert not any(isinstance(m, FeedbackLayer) for m in model.modules())
    model.to_empty(device="cpu")
    for layer in (model[0], model[2]):
        layer.reset_parameters()
    model = biograd.convert(model, "fa")
    assert torch.isfinite(model[0].feedback).all() and model[0].feedback.abs().sum() > 0


@pytest.mark.parametrize("kwargs", [{"rules": {"6": "bp", "3.O": "kp"}}, {"include": ["0", "7"]},
                                    {"exclude": "classifier"}])
def test_a_pattern_that_matches_no_layer_is_refused(kwargs):
    model = small_net()
    with pytest.raises(ValueError, match=r"pattern .* matches no convertible layer: the layers "
                                         r"are named like 0, 3\.0, 6 "):
        biograd.convert(model, "fa", **kwargs)
    assert not any(isinstance(m, FeedbackLayer) for m in model.modules())


def test_a_refused_conversion_changes_nothing():
    model = biograd.convert(nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)), "fa")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.append(nn.LazyLinear(2))
    with pytest.raises(ValueError, match="lazy layer"):
        biograd.convert(model, "ss")
    assert [layer.rule for _, layer in biograd.feedback_layers(model)] == ["fa", "fa"]
    for key, value in before.items():
        assert torch.equal(model.state_dict()[key], value), key


def test_hooks_registered_before_converting_are_removed_by_their_handles():
    model, calls = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)), []
    handle = model[0].register_forward_hook(lambda *_: calls.append("before"))
    biograd.convert(model, "fa")
    model(torch.randn(2, 3))
    handle.remove()
    model(torch.randn(2, 3))
    handle = model[0].register_forward_hook(lambda *_: calls.append("converted"))
    biograd.unconvert(model)
    model(torch.randn(2, 3))
    handle.remove()
    model(torch.randn(2, 3))
    assert calls == ["before", "converted"]


@pytest.mark.parametrize(("call", "match"), [
    (lambda m: biograd.convert("model", "fa"), "takes an nn.Module"),
    (lambda m: biograd.convert(m, "fa", rules=["0"]), "rules maps name patterns"),
    (lambda m: biograd.convert(m, "fa", include=3), "include takes a name pattern"),
    (lambda m: biograd.convert(m, "fa", seed=1.5), "seed is an integer"),
    (lambda m: biograd.attach(m, torch.optim.SGD(m.parameters(), lr=0.1)),
     r"attach\(optimizer, model\)"),
])
def test_arguments_of_the_wrong_kind_say_what_they_take(call, match):
    model = nn.Sequential(nn.Linear(2, 3))
    with pytest.raises(TypeError, match=match):
        call(model)
    assert type(model[0]) is nn.Linear and "_biograd_attached" not in model.__dict__
