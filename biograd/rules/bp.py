"""Backpropagation (Rumelhart et al. 1986): B = W, the weight transport the other rules avoid.

A layer on bp runs torch's own op, unchanged; it is the baseline every other rule is measured
against, and the usual choice for the last layer (the seed's default).
"""

from dataclasses import dataclass

from biograd.rules.base import Feedback, Rule, register


@register
@dataclass(frozen=True)
class BP(Rule):
    """δx = Wᵀ δy."""

    name = "bp"
    aliases = ("backprop", "backpropagation")
    summary = "B = W: exact backpropagation (weight transport)"
    transports_weights = True
    order = 0

    def bind(self, layer) -> Feedback:
        return Feedback(make=lambda w: w)
