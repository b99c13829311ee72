"""The converter: what it swaps, what it reuses, what it leaves alone and says so."""

import logging

import pytest
import torch
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
    assert [(n, r) for n, _, r in report.layers] == [("0.0", "ss"), ("0.3.0", "ss"),
                                                     ("0.6", "bp")]
    why = {owner: reason for owner, _, _, reason in report.transport}
    assert set(why) == {"0.1", "0.6", "1", "1.out_proj", "2", "3"}
    assert why["0.6"] == "on bp"
    assert "custom forward" in why["2"]
    assert "directly" in why["1"] and "inside MultiheadAttention" in why["1.out_proj"]
    assert not isinstance(model[1].out_proj, FeedbackLayer)
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
    assert set(layer.state_dict()) == {"weight", "feedback", "_extra_state"}
    conv = Conv2d(4, 6, 3, stride=2, padding=1, groups=2, padding_mode="reflect", rule="fa")
    assert isinstance(conv, nn.Conv2d) and conv.groups == 2 and conv.padding_mode == "reflect"
