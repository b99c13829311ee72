"""Sign-symmetry, uSF (Liao, Leibo & Poggio 2016; the seed, Xiao et al. 2019).

B = s · sign(W), recomputed from the current W in the backward, with the seed's per-layer
magnitude s (`sign_scale`). It keeps no state (s, which W's shape sets, is worked out at the
first forward and kept on the layer as a 0-d tensor in W's dtype) and saves no tensor beyond
what the torch layer saves: B exists only while the backward runs.
"""

import functools
from dataclasses import dataclass

import torch

from biograd.rules.base import Feedback, Rule, register, scale_option, seed_scale


@functools.lru_cache(maxsize=4096)
def _scalar(value: float, dtype: torch.dtype) -> torch.Tensor:
    """value as a 0-d CPU tensor of `dtype`, made once: copysign takes it with W of any device
    (a 0-d CPU tensor is a scalar to a CUDA op), in W's own dtype fastest (a float64 one costs
    the mixed-type path, 0.8 us more); making one per layer per step is host time."""
    return torch.tensor(value, dtype=dtype)


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
        m = layer.__dict__.get("_sign_scale")
        if m is None:  # s from W's shape, once per layer (not while torch.compile traces)
            m = _scalar(seed_scale(layer), layer.weight_now().dtype)
            if not torch.compiler.is_compiling():
                layer.__dict__["_sign_scale"] = m  # dropped when the layer's dtype may change
        return Feedback(magnitude=m)
