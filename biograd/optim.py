"""The seed's two optimiser variants, as hooks that wrap any torch optimiser.

Both come from the seed's code (Liao, Leibo & Poggio 2016; Xiao et al. 2019):
- batch Manhattan: the update uses sign(grad) in place of grad (before weight decay and
  momentum, as in the seed's SGD);
- no sign change: a weight whose update would flip its sign is clamped at ±1e-10 of its old
  sign.
They wrap the optimiser with step hooks, so learning-rate schedulers, state dicts and AMP
work unchanged: `opt = no_sign_change(batch_manhattan(torch.optim.SGD(...)))`.

And `weight_decay_groups`, the parameter groups that give rules with their own weight decay
(kp's `decay`; the alignment family's B, none: its decay is a term of its rule) that decay:
`torch.optim.SGD(weight_decay_groups(model), lr=..., ...)`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from biograd.signs import keep_sign_


def weight_decay_groups(model: nn.Module, groups: list[dict[str, Any]] | None = None
                        ) -> list[dict[str, Any]]:
    """`groups` (default: one group of all of `model`'s parameters) with the parameters whose
    rule sets their weight decay (`Rule.weight_decays`: kp's W and B with its `decay`, the
    alignment family's B with 0) moved into groups of that `weight_decay`. Each new group
    keeps its source group's other options (its lr, say).
    A group's "params" may be one tensor or any iterable of tensors (a generator is read
    once), as torch's optimisers take it; the groups returned hold lists."""
    from biograd.convert import feedback_layers

    own: dict[int, float] = {}
    for _, layer in feedback_layers(model):
        for name, decay in layer.learning_rule.weight_decays(layer).items():
            p = getattr(layer, name, None)  # a WeightFeedback's W is its owner's
            if isinstance(p, nn.Parameter):
                own[id(p)] = float(decay)
    out = []
    for group in groups or [{"params": list(model.parameters())}]:
        params = group["params"]  # as torch takes it: one tensor, or any iterable of them
        params = [params] if isinstance(params, torch.Tensor) else list(params)
        plain = [p for p in params if id(p) not in own]
        if plain:
            out.append({**group, "params": plain})
        for decay in sorted({own[id(p)] for p in params if id(p) in own}):
            out.append({**group, "weight_decay": decay,
                        "params": [p for p in params if own.get(id(p)) == decay]})
    return out


def _params(optimizer: Optimizer):
    for group in optimizer.param_groups:
        yield from group["params"]


def batch_manhattan(optimizer: Optimizer) -> Optimizer:
    """Make `optimizer` step on sign(grad) instead of grad; returns the same optimizer."""

    @torch.no_grad()
    def pre(opt, args, kwargs):
        for p in _params(opt):
            if p.grad is not None:
                p.grad.sign_()

    optimizer.register_step_pre_hook(pre)
    return optimizer


def no_sign_change(optimizer: Optimizer, eps: float = 1e-10) -> Optimizer:
    """Clamp any weight whose step would flip its sign at ±eps of its old sign."""
    signs: list[tuple[torch.Tensor, torch.Tensor]] = []

    @torch.no_grad()
    def pre(opt, args, kwargs):
        signs[:] = [(p, p.sign()) for p in _params(opt) if p.grad is not None]

    @torch.no_grad()
    def post(opt, args, kwargs):
        for p, sign in signs:
            keep_sign_(p, sign, eps)
        signs.clear()

    optimizer.register_step_pre_hook(pre)
    optimizer.register_step_post_hook(post)
    return optimizer
