"""Sign-symmetry, uSF (Liao, Leibo & Poggio 2016; the seed, Xiao et al. 2019).

B = s · sign(W), recomputed from the current W in the backward, with the seed's per-layer
magnitude s (`sign_scale`). It keeps no state and saves no tensor beyond what the torch layer
saves: B exists only while the backward runs.
"""

from dataclasses import dataclass

import torch

from biograd.rules.base import Feedback, Rule, register, sign_scale


def signed(magnitude: float, weight: torch.Tensor) -> torch.Tensor:
    """magnitude · sign(W) in one pass. At W = ±0 it gives ±magnitude, where sign() gives 0."""
    return torch.copysign(weight.new_full((), magnitude), weight)


@register
@dataclass(frozen=True)
class SS(Rule):
    """δx = (s · sign(W))ᵀ δy."""

    name = "ss"
    aliases = ("usf", "sign_symmetry")
    summary = "B = s·sign(W), the seed's sign-symmetry (uSF)"
    order = 20

    def bind(self, layer) -> Feedback:
        s = sign_scale(layer.weight.shape)
        return Feedback(make=lambda w: signed(s, w))
