"""Kolen-Pollack (Kolen & Pollack 1994; Akrout et al. 2019): B learns W's own increments.

B ← B − η dW − ηλB. B is a Parameter whose .grad is exactly W's gradient, so the optimiser,
its weight decay, AMP loss scaling and the DDP all-reduce all update it with no extra code.
Under SGD with weight decay, W − B shrinks by (1 − ηλ) every step and B turns towards W;
under Adam the per-element scaling differs between W and B and that identity no longer holds.
"""

from dataclasses import dataclass

from torch import nn

from biograd.rules.base import Feedback, Rule, random_feedback, register


@register
@dataclass(frozen=True)
class KP(Rule):
    """δx = Bᵀ δy, B.grad = W.grad.

    Args:
        scale: how the initial B is drawn, as FA's ("seed" or "weight").
    """

    scale: str = "seed"

    name = "kp"
    aliases = ("kolen_pollack",)
    summary = "B learned: B.grad = W.grad, decays with W (Kolen-Pollack)"
    state = ("feedback",)
    order = 60

    def setup(self, layer, generator) -> None:
        b = random_feedback(layer.weight, generator, self.scale)
        layer.register_parameter("feedback", nn.Parameter(b, layer.weight.requires_grad))

    def bind(self, layer) -> Feedback:
        b = layer.feedback
        return Feedback(make=lambda w: b, learned=b)
