"""Fixed random-magnitude sign feedback, frSF (Moskovitz et al. 2018; biotorch's naming).

B = |M| ∘ sign(W): W's current signs with fixed random magnitudes M, drawn once like FA's B.
Only |M| is stored; B is formed in the backward in one pass (copysign).
"""

from dataclasses import dataclass

from biograd.rules.base import Feedback, Rule, random_feedback, register, scale_option, seed_scale


@register
@dataclass(frozen=True)
class FRSF(Rule):
    """δx = (|M| ∘ sign(W))ᵀ δy, M fixed.

    Args:
        scale: how M is drawn, as FA's B ("seed" or "weight").
    """

    scale: str = scale_option()

    name = "frsf"
    aliases = ("fixed_random_sign_feedback",)
    summary = "B = |M|∘sign(W), M random, drawn once"
    state = ("feedback_magnitude",)
    order = 30

    def setup(self, layer, generator) -> None:
        w = layer.weight_now()
        m = random_feedback(w, generator, self.scale, s=seed_scale(layer)).abs_()
        layer.put_state("feedback_magnitude", m)

    def bind(self, layer) -> Feedback:
        m = layer._buffers["feedback_magnitude"]
        return Feedback(magnitude=m)
