"""Batch random-magnitude sign feedback, brSF (Moskovitz et al. 2018; biotorch's naming).

B_t = |M_t| ∘ sign(W): W's current signs with random magnitudes drawn afresh at every
optimiser step t, in `biograd.after_step` (so every forward and backward of one step, with
gradient accumulation too, use one B). Every draw comes from the layer's seed and t, so all DDP
ranks use the same B_t, and a resumed run continues the same sequence. The forward only reads
the step counter: torch.compile traces it as an input.

A full draw costs a random number per weight per step (about 44 ms for ResNet-18's 11.7M
weights on one CPU core, 20% of a step). By default (fresh="window") M_t is instead a window
of a per-layer pool of |M| values, |M| drawn once like FA's B, at an offset that moves every
step: every entry of M_t is a new pick among the pool, and B_t costs what frSF's B costs.
The offset walks the pool's windows with a stride coprime with their number, drawn from the
layer's seed (`window_walk`), so the step counter, a tensor, gives it without a hash:
torch.compile traces it with no recompiling (the eager path slices a view at the same offset).
Checkpoints written before this walk (which drew each offset from a hash) load, and continue
on the walk. fresh="full" draws the whole M_t with torch.rand on W's device at every step; it
needs a Python seed per step, so torch.compile recompiles it: train it eagerly.
"""

import functools
import math
from dataclasses import dataclass

import torch

from biograd._seed import generator, mix
from biograd.rules.base import (
    Feedback,
    Rule,
    option,
    random_feedback,
    register,
    scale_option,
    seed_scale,
    sign_scale,
    step_counter,
)

#: pool entries beyond W's size: the number of distinct windows is SLACK + 1.
SLACK = 4096


@register
@dataclass(frozen=True)
class BRSF(Rule):
    """δx = (|M_t| ∘ sign(W))ᵀ δy, M_t new at every step.

    Args:
        fresh: "window" (default, free) or "full" (a full random draw per step, exact).
        scale: how magnitudes are drawn, as FA's B ("seed" or "weight").
    """

    fresh: str = option("window", choices=("window", "full"))
    scale: str = scale_option()

    name = "brsf"
    aliases = ("batch_random_sign_feedback",)
    summary = "B = |M_t|∘sign(W), M_t random, drawn afresh at every step"
    order = 40
    @property
    def compile_note(self) -> str:
        return ("" if self.fresh == "window" else
                "brsf(fresh='full') seeds a generator from its step counter at every step, "
                "which torch.compile cannot trace: it recompiles at every step until torch's "
                "limit. Train it without --compile, or use the default fresh='window'.")

    @property
    def state(self) -> tuple[str, ...]:
        return ("feedback_pool", "feedback_step") if self.fresh == "window" else (
            "feedback_step",)

    def setup(self, layer, generator) -> None:
        step_counter(layer)
        if self.fresh == "window":
            w, s = layer.weight_now(), seed_scale(layer)
            pool = random_feedback(w, generator, self.scale, size=(w.numel() + SLACK,), s=s)
            layer.put_state("feedback_pool", pool.abs_())

    def bind(self, layer) -> Feedback:
        """Eager: |M_t| a view of the pool at a Python offset (free); under torch.compile, the
        same window gathered at a tensor offset (no recompiling); fresh="full": drawn."""
        buffers = layer._buffers
        step = buffers["feedback_step"]  # on the CPU, see FeedbackLayer
        if self.fresh == "full":
            return Feedback(self._full(layer, int(step)))
        pool = buffers["feedback_pool"]
        if torch.compiler.is_compiling():
            return Feedback(self._gathered(layer, step, pool))
        # the window of this step, cut once in W's shape: the step counter's version moves
        # with every after_step (and load), so a step's forwards reuse it (host time per layer)
        cached = layer.__dict__.get("_cached_window")
        if cached is None or cached[0] is not step or cached[1] != step._version \
                or cached[2] is not pool:
            # W's shape and strides kept from the last cut: one as_strided per step
            shape = layer.weight_now().shape if cached is None else cached[4]
            stride, shift = window_walk(layer.feedback_seed)
            start = (int(step) * stride + shift) % (SLACK + 1)
            window = pool.as_strided(shape, _contiguous(shape), pool.storage_offset() + start)
            cached = (step, step._version, pool, window, shape)
            layer.__dict__["_cached_window"] = cached
        return Feedback(magnitude=cached[3])

    def _full(self, layer, step: int):
        """make for fresh="full": |M_t| drawn whole from the layer's seed and t."""
        seed = mix(layer.feedback_seed, "brsf", step)
        scale, shape_of = self.scale, layer.scale_shape
        out_channels = getattr(layer, "out_channels", None)
        return lambda w: torch.copysign(random_feedback(
            w, generator(seed, w.device), scale,
            s=sign_scale(shape_of(w.shape), out_channels)).abs_(), w)

    @staticmethod
    def _gathered(layer, step: torch.Tensor, pool: torch.Tensor):
        """make under torch.compile: the step's window gathered at a tensor offset."""
        n = pool.numel() - SLACK
        stride, shift = window_walk(layer.feedback_seed)
        start = (step * stride + shift).remainder(SLACK + 1).to(pool.device)
        return lambda w: torch.copysign(
            pool.index_select(0, torch.arange(n, device=pool.device) + start).view_as(w), w)

    @torch.no_grad()
    def after_step(self, layer) -> None:
        layer.feedback_step.add_(1)  # the next step's draw

    @torch.no_grad()
    def after_steps(self, layers) -> None:
        torch._foreach_add_([layer._buffers["feedback_step"] for layer in layers], 1)


@functools.lru_cache(maxsize=4096)
def _contiguous(shape: torch.Size) -> tuple[int, ...]:
    """The strides of a contiguous tensor of `shape`."""
    return tuple(math.prod(shape[i + 1:]) for i in range(len(shape)))


@functools.lru_cache(maxsize=4096)
def window_walk(seed: int) -> tuple[int, int]:
    """(stride, shift) of a layer's walk over the pool's SLACK + 1 windows: at step t the
    window starts at (t * stride + shift) mod (SLACK + 1). The stride is coprime with
    SLACK + 1, so the walk visits every window before it repeats one."""
    stride, shift = 1 + seed % SLACK, (seed >> 16) % (SLACK + 1)
    while math.gcd(stride, SLACK + 1) != 1:
        stride += 1
    return stride, shift
