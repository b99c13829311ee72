"""Holding weights to signs: the clamps sign_fixed and the no-sign-change optimiser share."""

from __future__ import annotations

import torch
from torch import Tensor


@torch.no_grad()
def keep_sign_(weight: Tensor, reference: Tensor, eps: float = 1e-10) -> Tensor:
    """In place: where W's sign is opposite to `reference`'s, or W is 0 and the reference is
    not, set W to ±eps with the reference's sign. Returns W."""
    flipped = (weight * reference < 0) | ((weight == 0) & (reference != 0))
    weight.copy_(torch.where(flipped, torch.copysign(weight.new_full((), eps), reference), weight))
    return weight


@torch.no_grad()
def hold_sign_(weight: Tensor, sign: Tensor, eps: float = 1e-10) -> Tensor:
    """In place: W ← sign · max(sign · W, eps) for a sign tensor of ±1 (no zeros).

    Where W has the sign and |W| >= eps it is unchanged (multiplying by ±1 is exact); where it
    has the other sign, or |W| < eps, it becomes ±eps with the given sign. Three in-place
    passes, no temporary: the fast form of `keep_sign_` for references that are never 0
    (sign_fixed's); unlike it, it also lifts same-signed weights below eps to eps."""
    return weight.mul_(sign).clamp_(min=eps).mul_(sign)
