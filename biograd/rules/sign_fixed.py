"""Sign-fixed feedback (Moskovitz et al. 2018; the direction the seed names in its conclusion).

B = s · sign(W₀), the signs of W at conversion, fixed; and after every optimiser step the
forward weights are held to those same signs (a weight that would flip is clamped at ±1e-10 of
its sign; in fp16 at 6.1e-5, its smallest normal number), so feedback never needs to learn
W's signs: no weight transport, not even of signs.
Where W₀ is exactly 0, the sign is drawn at random.
"""

from dataclasses import dataclass

import torch

from biograd.rules.base import Feedback, Rule, option, register, scale_option, seed_scale
from biograd.signs import hold_sign_


@register
@dataclass(frozen=True)
class SignFixed(Rule):
    """δx = (s · sign(W₀))ᵀ δy, and sign(W) = sign(W₀) for ever.

    Args:
        eps: the magnitude a weight that would change sign is clamped at.
        scale: "seed" (default): the seed's s; "weight": s = rms(W₀).
    """

    eps: float = option(1e-10, above=0)
    scale: str = scale_option()

    name = "sign_fixed"
    aliases = ("sign_fixed_fa", "signfixed")
    summary = "B = s·sign(W₀) fixed; W kept to the signs of W₀"
    state = ("feedback",)
    order = 50
    writes_weight = True

    def setup(self, layer, generator) -> None:
        w = layer.weight_now().detach()
        coin = torch.rand(w.shape, generator=generator, device=generator.device) < 0.5
        sign = torch.where(w == 0, coin.to(w.device).to(w.dtype).mul_(2).sub_(1), w.sign())
        s = w.square().mean().sqrt().item() if self.scale == "weight" else seed_scale(layer)
        layer.put_state("feedback", sign.mul_(s or seed_scale(layer)))
        self.after_step(layer)

    def bind(self, layer) -> Feedback:
        b = layer._buffers["feedback"]  # (not __getattr__'s search: host time per layer)
        return Feedback(fixed=b)

    def after_step(self, layer) -> None:
        hold_sign_(layer.weight, torch.sign(layer.feedback), self.eps)
