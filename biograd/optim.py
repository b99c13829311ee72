"""The seed's two optimiser variants, as hooks that wrap any torch optimiser.

Both come from the seed's code (Liao, Leibo & Poggio 2016; Xiao et al. 2019):
- batch Manhattan: the update uses sign(grad) in place of grad (before weight decay and
  momentum, as in the seed's SGD);
- no sign change: a weight whose update would flip its sign is clamped at ±1e-10 of its old
  sign.
They wrap the optimiser with step hooks, so learning-rate schedulers, state dicts and AMP
work unchanged: `opt = no_sign_change(batch_manhattan(torch.optim.SGD(...)))`.
"""

from __future__ import annotations

import torch
from torch.optim import Optimizer

from biograd.functional import keep_sign_


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
