"""Holding weights to signs in low precision: a held weight is never ±0 (whose sign is 0),
though 1e-10 rounds to 0 in fp16."""

import pytest
import torch
from torch import nn

import biograd
from biograd.dale import dale_layers
from biograd.optim import no_sign_change


def push_across_zero(model, dtype):
    """An SGD step large enough to flip about half of every layer's weights, then
    `biograd.after_step`: the weights the rule or Dale's law holds are the near-zero ones."""
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    for p in model.parameters():
        p.grad = p.detach() * 2 * (torch.rand(p.shape) < 0.5).to(dtype)  # those become -p
    opt.step()
    biograd.after_step(model)
    return opt


def mlp(dtype):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_dale_keeps_every_weight_signed(dtype):
    model = biograd.dale(mlp(dtype), first=True)
    push_across_zero(model, dtype)
    for name, layer in dale_layers(model):
        sign = layer.dale_sign.view(1, -1).expand_as(layer.weight)
        assert torch.equal(layer.weight.detach().sign(), sign), name


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_sign_fixed_keeps_every_weight_signed(dtype):
    model = biograd.convert(mlp(dtype), "sign_fixed")
    start = {n: layer.feedback.sign() for n, layer in biograd.feedback_layers(model)}
    push_across_zero(model, dtype)
    for name, layer in biograd.feedback_layers(model):
        assert torch.equal(layer.weight.detach().sign(), start[name]), name


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_no_sign_change_keeps_every_weight_signed(dtype):
    p = nn.Parameter(torch.randn(200).to(dtype))
    start = p.detach().sign()
    p.grad = p.detach() * 2 * (torch.rand(200) < 0.5).to(dtype)
    no_sign_change(torch.optim.SGD([p], lr=1.0)).step()
    assert torch.equal(p.detach().sign(), start)
    flipped = p.detach().abs() < 1e-3
    assert flipped.sum() > 50  # the clamp held about half of them
