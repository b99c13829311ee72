"""Feedback alignment (Lillicrap et al. 2016): B fixed and random, drawn once.

δx = Bᵀ δy. B is a persistent buffer, drawn from the layer's own seeded generator so that
every DDP rank draws the same B.
"""

from dataclasses import dataclass

from biograd.rules.base import Feedback, Rule, random_feedback, register, scale_option, seed_scale


@register
@dataclass(frozen=True)
class FA(Rule):
    """Fixed random feedback.

    Args:
        scale: "seed" (default): conv B ~ N(0, s²) with s = sqrt(2 / (k_h k_w C_out)), linear
            B ~ U(-s, s) with s = 1/sqrt(fan_in), as the seed's code; "weight": N(0, std(W)²).
    """

    scale: str = scale_option()

    name = "fa"
    aliases = ("feedback_alignment",)
    summary = "B fixed random, drawn once (Lillicrap et al. 2016)"
    state = ("feedback",)
    order = 10

    def setup(self, layer, generator) -> None:
        b = random_feedback(layer.weight_now(), generator, self.scale, s=seed_scale(layer))
        layer.put_state("feedback", b)

    def bind(self, layer) -> Feedback:
        b = layer._buffers["feedback"]  # (not __getattr__'s search: host time per layer)
        return Feedback(fixed=b)
