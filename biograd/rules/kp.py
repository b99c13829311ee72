"""Kolen-Pollack (Kolen & Pollack 1994; Akrout et al. 2019): B learns W's own increments.

B ← B − η dW − ηλB. B is a Parameter whose .grad is exactly W's gradient, so the optimiser,
its weight decay, AMP loss scaling and the DDP all-reduce all update it with no extra code.
Under SGD with weight decay, W − B shrinks by (1 − ηλ) every step and B turns towards W;
under Adam the per-element scaling differs between W and B and that identity no longer holds.

λ sets how fast B aligns: with momentum β, W − B shrinks by about exp(−Σ η_t λ / (1 − β)) over
a run, so a short run needs a larger λ than the weight decay that suits the rest of the
network. `decay` gives the kp layers' W and B their own λ (biograd's training loop puts them in
an optimiser group of their own; `biograd.weight_decay_groups` does it for any loop).
"""

from dataclasses import dataclass

from biograd.rules.base import (
    Feedback,
    Rule,
    option,
    random_feedback,
    register,
    scale_option,
    seed_scale,
)


@register
@dataclass(frozen=True)
class KP(Rule):
    """δx = Bᵀ δy, B.grad = W.grad.

    Args:
        scale: how the initial B is drawn, as FA's ("seed" or "weight").
        decay: λ, the weight decay of this layer's W and B (default None: the optimiser's).
    """

    scale: str = scale_option()
    decay: float | None = option(None, low=0)

    name = "kp"
    aliases = ("kolen_pollack",)
    summary = "B learned: B.grad = W.grad, decays with W (Kolen-Pollack)"
    state = ("feedback",)
    order = 60

    def setup(self, layer, generator) -> None:
        b = random_feedback(layer.weight_now(), generator, self.scale, s=seed_scale(layer))
        layer.put_state("feedback", b, learned=True)

    def weight_decays(self, layer) -> dict[str, float]:
        if self.decay is None:
            return {}
        return {layer.weight_name: self.decay, "feedback": self.decay}

    def bind(self, layer) -> Feedback:
        b = layer._parameters["feedback"]  # (not __getattr__'s search: host time per layer)
        return Feedback(learned=b, fixed=b)
