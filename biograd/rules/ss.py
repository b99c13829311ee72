"""Sign-symmetry, uSF (Liao, Leibo & Poggio 2016; the seed, Xiao et al. 2019).

B = s · sign(W), recomputed from the current W in the backward, with the seed's per-layer
magnitude s (`sign_scale`). It keeps no state and saves no tensor beyond what the torch layer
saves: B exists only while the backward runs.
"""

from dataclasses import dataclass

import torch

from biograd.rules.base import Feedback, Rule, register, scale_option, sign_scale


def signed(magnitude: float, weight: torch.Tensor) -> torch.Tensor:
    """magnitude · sign(W) in one pass. At W = ±0 it gives ±magnitude, where sign() gives 0."""
    return torch.copysign(weight.new_full((), magnitude), weight)


@register
@dataclass(frozen=True)
class SS(Rule):
    """δx = (s · sign(W))ᵀ δy.

    Args:
        scale: "seed" (default): the seed's s; "weight": s = rms(W), recomputed with B, so
            that B has W's size. Layers initialised far below the seed's s (RetinaNet's heads,
            N(0, 0.01²) against s ≈ 0.03) otherwise multiply the error at every layer.
    """

    scale: str = scale_option()

    name = "ss"
    aliases = ("usf", "sign_symmetry")
    summary = "B = s·sign(W), the seed's sign-symmetry (uSF)"
    order = 20

    def bind(self, layer) -> Feedback:
        if self.scale == "weight":
            return Feedback(make=lambda w: torch.copysign(w.detach().square().mean().sqrt(), w))
        shape_of, out_channels = layer.scale_shape, getattr(layer, "out_channels", None)
        return Feedback(make=lambda w: signed(sign_scale(shape_of(w.shape), out_channels), w))
