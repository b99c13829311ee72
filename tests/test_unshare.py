"""biograd.unshare: every Conv2d becomes a LocallyConnected2d computing the same function."""

import logging

import pytest
import torch
import torchvision
from torch import nn

import biograd
from biograd.nn import Conv2d, LocallyConnected2d
from biograd.unshare import unshared_bytes

pytestmark = pytest.mark.usefixtures("one_thread")


def small_cnn():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False), nn.ReLU(),
        nn.Conv2d(8, 6, 3, padding="same", dilation=2), nn.ReLU(),
        nn.Conv2d(6, 4, 2, padding="valid"), nn.Flatten(), nn.LazyLinear(3),
    )


def lc_names(model):
    return [n for n, m in model.named_modules() if isinstance(m, LocallyConnected2d)]


def test_small_cnn_computes_the_same_function_and_memory_is_as_planned(caplog):
    model = small_cnn()
    x = torch.randn(2, 3, 9, 9)
    model(x)  # the lazy layer takes its size
    model.train()
    stats = model[1].running_mean.clone()
    with torch.no_grad():
        expected = model.eval()(x)
    model.train()
    planned = unshared_bytes(model, x)
    rng = torch.get_rng_state()
    with caplog.at_level(logging.INFO, logger="biograd"):
        assert biograd.unshare(model, x) is model
    assert torch.equal(torch.get_rng_state(), rng)  # the kernels are copied, nothing drawn
    assert lc_names(model) == ["0", "3", "5", "7"] == list(planned)
    assert "unshared 4 Conv2d layers" in caplog.text and "parameters before" in caplog.text
    assert model.training and torch.equal(model[1].running_mean, stats)  # the probe left no trace
    for name in planned:
        layer = model.get_submodule(name)
        assert planned[name] == sum(p.numel() * p.element_size() for p in layer.parameters())
    torch.testing.assert_close(model.eval()(x), expected)


def test_resnet18_unshares_then_trains_on_a_rule():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    before = sum(p.numel() for p in model.parameters())
    biograd.unshare(model, x)
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)
    assert len(lc_names(model)) == 20
    assert sum(p.numel() for p in model.parameters()) > 3 * before

    biograd.convert(model, "ss")
    report = biograd.report(model)
    assert {(kind, rule) for _, kind, rule in report.layers} == {
        ("LocallyConnected2d", "ss"), ("Linear", "ss")}
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    model.train()
    nn.functional.cross_entropy(model(x), torch.tensor([1, 2])).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    opt.step()
    assert torch.isfinite(model(x)).all()


def test_convert_then_unshare_keeps_rule_and_seed():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(),
                          nn.Linear(4 * 3 * 3, 2))
    biograd.convert(model, "fa", rules={"2": "kp"}, seed=5)
    seeds = [model[i].feedback_seed for i in (0, 2)]
    x = torch.randn(1, 3, 7, 7)
    with torch.no_grad():
        expected = model(x)
    biograd.unshare(model, x)
    assert [(type(model[i]), model[i].rule, model[i].feedback_seed) for i in (0, 2)] == [
        (LocallyConnected2d, "fa", seeds[0]), (LocallyConnected2d, "kp", seeds[1])]
    assert model[0].feedback.shape == model[0].weight.shape  # drawn for the new W
    torch.testing.assert_close(model(x), expected)
    model(x).sum().backward()
    assert torch.equal(model[2].feedback.grad, model[2].weight.grad)


def test_include_exclude_and_a_bare_convolution():
    model = nn.Sequential(nn.Sequential(nn.Conv2d(3, 3, 3)), nn.Conv2d(3, 2, 1))
    x = torch.randn(1, 3, 5, 5)
    biograd.unshare(model, x, exclude="0")
    assert lc_names(model) == ["1"]
    model = nn.Sequential(nn.Sequential(nn.Conv2d(3, 3, 3)), nn.Conv2d(3, 2, 1))
    biograd.unshare(model, x, include="0.*")
    assert lc_names(model) == ["0.0"]
    conv = Conv2d(3, 2, 3, rule="ss")
    conv.bias.requires_grad_(False)  # frozen stays frozen
    new = biograd.unshare(conv, x)
    assert isinstance(new, LocallyConnected2d) and new.rule == "ss"
    assert new.weight.requires_grad and not new.bias.requires_grad
    torch.testing.assert_close(new(x), conv(x))


def test_a_shared_convolution_is_one_layer_at_one_size_and_refused_at_two():
    conv = nn.Conv2d(2, 2, 3, padding=1)
    model = nn.Sequential(conv, nn.ReLU(), conv)
    x = torch.randn(1, 2, 5, 5)
    biograd.unshare(model, x)
    assert model[0] is model[2] and isinstance(model[0], LocallyConnected2d)

    class TwoSizes(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 3, padding=1)

        def forward(self, x):
            return self.conv(self.conv(x)[..., ::2, ::2])

    with pytest.raises(ValueError, match=r"^conv: called on inputs of sizes \(5, 5\) and "
                                         r"\(3, 3\).*exclude it"):
        biograd.unshare(TwoSizes(), x)


@pytest.mark.parametrize("conv, match", [
    (nn.Conv2d(4, 4, 3, groups=2), "groups=2.*exclude it"),
    (nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), "padding_mode='reflect'.*exclude"),
    (nn.Conv2d(4, 4, 2, padding="same"), "padding='same' with kernel \\(2, 2\\) pads unevenly"),
    (nn.utils.parametrizations.weight_norm(nn.Conv2d(4, 4, 3)), "a parametrised weight.*exclude"),
])
def test_what_has_no_locally_connected_form_is_refused_naming_the_layer(conv, match):
    model = nn.Sequential(nn.Identity(), conv)
    x = torch.randn(1, 4, 6, 6)
    with pytest.raises(ValueError, match=rf"^1: {match}"):
        biograd.unshare(model, x)
    biograd.unshare(model, x, exclude="1")  # and excluding it is the way through
    assert not lc_names(model)


def two_convs():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                         nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 3))


def test_unshare_after_dfa_and_after_dale_is_unshare_before_them():
    """Either order gives one model: the unshared layers take dfa's output error, and keep
    their channels' Dale signs."""
    x, y = torch.randn(2, 2, 5, 5), torch.tensor([0, 2])
    after = biograd.unshare(biograd.convert(biograd.dale(two_convs(), first=True), "dfa"), x)
    before = biograd.convert(biograd.dale(biograd.unshare(two_convs(), x), first=True), "dfa")
    assert after.state_dict().keys() == before.state_dict().keys()
    for (name, a), b in zip(after.state_dict().items(), before.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name
    for model in (after, before):
        torch.nn.functional.cross_entropy(model(x), y).backward()
        biograd.after_step(model)  # Dale's hold, on the unshared layers too
    for a, b in zip(after.parameters(), before.parameters(), strict=True):
        assert torch.equal(a.grad, b.grad)
    assert isinstance(after[2], LocallyConnected2d) and "dale_sign" in after[2]._buffers


def test_unshared_bytes_refuses_what_unshare_refuses():
    from torch.nn.utils import parametrizations

    model = nn.Sequential(nn.Conv2d(2, 4, 3), parametrizations.spectral_norm(nn.Conv2d(4, 4, 3)))
    x = torch.randn(1, 2, 8, 8)
    for measure in (biograd.unshare, unshared_bytes):
        with pytest.raises(ValueError, match=r"^1: a parametrised weight"):
            measure(model, x)
