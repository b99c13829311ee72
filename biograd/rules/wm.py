"""Weight mirrors (Akrout et al. 2019): B learned in a mirror phase between training steps.

After each optimiser step the layer receives noise ξ at its input, responds y = W ξ, and B
moves towards the Hebbian estimate y ξᵀ: B ← B + η (y ξᵀ / N − B). With unit Gaussian noise
E[y ξᵀ / N] = W, so B turns towards W with no weight transport: B is an exponential average
of the estimates, of time constant 1/rate passes. B starts random, drawn like FA's (so the
network starts as under FA and errors keep their size), and the mirror passes turn it towards
W over about 1/rate steps. (Starting from one full estimate instead, whose noise is
sqrt(fan_in / N) times W's size, sends exploding errors down a deep network; starting from
zero, vanishing ones.)

Cost and accuracy: a pass is two matrix products of N × fan_in × fan_out, 4·N·|W| flops. The
estimate averages about 2N/rate samples, so the angle to W settles near
atan(sqrt(fan_in · rate / (2N))): about 6° for fan_in 288, 23° for fan_in 4608, with the
defaults; raise `samples` or lower `rate` for wide layers.

Akrout's toy code uses uniform noise of amplitude 0.1 and η_B = 0.01 without normalising by the
noise variance; here the estimate is normalised, so `rate` is a rate, whatever the noise scale.
The noise comes from the layer's seed and the pass count: identical on every DDP rank.
"""

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from biograd._seed import generator, mix
from biograd.rules.base import (
    Feedback,
    Rule,
    option,
    random_feedback,
    register,
    scale_option,
    seed_scale,
    step_counter,
)


def mirror_estimate(weight: Tensor, samples: int, gen: torch.Generator,
                    fan_in: int | None = None) -> Tensor:
    """One mirror pass: y ξᵀ / N for N unit-Gaussian noise vectors ξ; E[result] = W.

    W is seen as (units, fan_in), fan_in by default prod(W.shape[1:]) (a convolution's
    C_in·k·k); a LocallyConnected2d's (P, C_out, C_in·k·k) has fan_in C_in·k·k, one unit per
    position and channel (its `scale_shape`)."""
    fan_in = math.prod(weight.shape[1:]) if fan_in is None else fan_in
    w = weight.detach().reshape(-1, fan_in)  # (out, fan_in); conv: W per output unit
    xi = torch.randn(samples, w.shape[1], generator=gen, device=gen.device, dtype=w.dtype)
    y = xi @ w.T  # (N, out): the layer's response to the noise
    return (y.T @ xi).div_(samples).view_as(weight)


@register
@dataclass(frozen=True)
class WM(Rule):
    """δx = Bᵀ δy, B ← B + η (y ξᵀ / N − B) after every step.

    Args:
        samples: N, noise vectors per mirror pass (default 64).
        rate: the rate η (default 0.005): B averages about the last 1/rate passes.
        scale: how the initial B is drawn, as FA's ("seed" or "weight").
    """

    samples: int = option(64, low=1)
    rate: float = option(0.005, above=0, high=1)
    scale: str = scale_option()

    name = "wm"
    aliases = ("weight_mirror", "weight_mirrors")
    summary = "B learned in a mirror phase: noise in, B towards y ξᵀ (Akrout et al. 2019)"
    state = ("feedback", "feedback_step")
    order = 70

    def _estimate(self, layer) -> Tensor:
        seed = mix(layer.feedback_seed, "wm", int(layer.feedback_step))
        w = layer.weight_now()
        fan_in = math.prod(layer.scale_shape(w.shape)[1:])
        return mirror_estimate(w, self.samples, generator(seed, w.device), fan_in)

    def setup(self, layer, generator) -> None:
        step_counter(layer)
        b = random_feedback(layer.weight_now(), generator, self.scale, s=seed_scale(layer))
        layer.put_state("feedback", b)
        self.after_step(layer)

    def bind(self, layer) -> Feedback:
        b = layer._buffers["feedback"]  # (not __getattr__'s search: host time per layer)
        return Feedback(fixed=b)

    @torch.no_grad()
    def after_step(self, layer) -> None:
        layer.feedback_step.add_(1)
        layer.feedback.lerp_(self._estimate(layer), self.rate)
