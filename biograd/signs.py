"""Holding weights to signs: the clamps sign_fixed and the no-sign-change optimiser share."""

from __future__ import annotations

import functools

import torch
from torch import Tensor


@torch.no_grad()
def keep_sign_(weight: Tensor, reference: Tensor, eps: float = 1e-10) -> Tensor:
    """In place: where W's sign is opposite to `reference`'s, or W is 0 and the reference is
    not, set W to ±eps with the reference's sign (eps as `floor` raises it). Returns W."""
    flipped = (weight * reference < 0) | ((weight == 0) & (reference != 0))
    held = torch.copysign(weight.new_full((), floor(eps, weight.dtype)), reference)
    weight.copy_(torch.where(flipped, held, weight))
    return weight


@torch.no_grad()
def hold_sign_(weight: Tensor, sign: Tensor, eps: float = 1e-10) -> Tensor:
    """In place: W ← sign · max(sign · W, eps) for a sign tensor of ±1 (no zeros).

    Where W has the sign and |W| >= eps it is unchanged (multiplying by ±1 is exact); where it
    has the other sign, or |W| < eps, it becomes ±eps with the given sign. Three in-place
    passes, no temporary: the fast form of `keep_sign_` for references that are never 0
    (sign_fixed's); unlike it, it also lifts same-signed weights below eps to eps.

    eps is raised to W's dtype's smallest normal number where it is below it (fp16: 6.1e-5),
    so that a held weight never rounds to ±0, whose torch.sign is 0."""
    return weight.mul_(sign).clamp_(min=floor(eps, weight.dtype)).mul_(sign)


@functools.lru_cache(maxsize=64)
def floor(eps: float, dtype: torch.dtype) -> float:
    """eps, or `dtype`'s smallest normal number if eps is below it (1e-10 is 0 in fp16); worked
    out once per pair (torch.finfo is a microsecond, per layer per step)."""
    return max(eps, torch.finfo(dtype).tiny)
