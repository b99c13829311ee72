"""The alignment family (Kunin et al. 2020, "Two Routes to Scalable Credit Assignment without
Weight Symmetry"): B learned by a local regulariser R(B) of the layer's own input.

∂R/∂B = 2·decay·B − self·W − amp·WΣ + 2·sparse·BΣ + 2·null·WΣWᵀB  (+ W's gradient if tied)

in torch's layout (W, B: (out, in), y = W x, δx = Bᵀ δy), with Σ = Σ_n x_n x_nᵀ / N the input's
second moment over the N samples of the batch, a convolution's positions summed (its x_n: every
patch of sample n). Kunin et al. write it for y = x W̃ and B̃ = Bᵀ; the primitives, in their
words and ours:

    decay   ‖B‖²                       2B
    self    −tr(BᵀW)                   −W
    amp     −Σ_n ⟨B x_n, W x_n⟩ / N    −WΣ
    sparse  Σ_n ‖B x_n‖² / N           2BΣ
    null    Σ_n ‖Bᵀ W x_n‖² / N        2WΣWᵀB

x and W are constants to R: it moves B only, and B gets no task gradient (unless `tied`: B
also takes W's gradient, Kolen-Pollack). The gradient is computed in the layer's backward from
the input its forward saved (no extra pass through the network): per term, a product with the
layer's own op or one of its adjoints (`biograd.nn.functional.LinearMap`; a convolution's
through aten.convolution_backward). B is a Parameter, so the user's optimiser, its momentum,
schedule, AMP, DDP's all-reduce and checkpoints handle it as kp's; its decay is the `decay`
term, so `biograd.weight_decay_groups` (and biograd's training) give it no weight decay of the
optimiser's.

With `noise`, the input is replaced, per layer and step, by i.i.d. normal or uniform noise of
standard deviation `sigma` of x's shape (drawn from the layer's seed and step counter, the same
on every DDP rank): weight mirrors in this family's terms.

Fixed points with W and the input distribution held (tests/test_alignment_family.py): SA
(decay α, self β) B = (β/2α) W; AA (sparse α, amp β) B = (β/2α) W on Σ's range; IA (amp α,
null β, decay γ) B = (α/2) (β WΣWᵀ + γ I)⁻¹ WΣ.
"""

from __future__ import annotations

import math
import warnings
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

NOISE = ("none", "normal", "uniform")


def coefficient(default: float) -> float:
    """A primitive's coefficient: a number >= 0."""
    return option(default, low=0)


@register
@dataclass(frozen=True)
class Alignment(Rule):
    """δx = Bᵀ δy, B.grad = ∂R/∂B for R = decay·‖B‖² − self·tr(BᵀW) + amp·(−⟨Bx, Wx⟩)
    + sparse·‖Bx‖² + null·‖BᵀWx‖², each averaged over the batch (see the module's docstring).

        biograd.convert(model, biograd.rules.Alignment(decay=1e-3, amp=1e-3, noise="normal"))

    Args:
        decay, self, amp, sparse, null: the primitives' coefficients (default 0).
        noise: "none" (the layer's own input), "normal" or "uniform": i.i.d. noise of x's
            shape and standard deviation `sigma` in its place, new at every step.
        sigma: the noise's standard deviation (default 1).
        tied: B also takes W's gradient (Kolen-Pollack's rule is decay with tied=True).
        positions: "sum" (Kunin's): R is summed over a convolution's output positions and a
            sequence's tokens, so Σ grows with their number P; "mean": averaged over them,
            so the x-dependent terms keep one size in every layer.
        scale: how the initial B is drawn, as FA's ("seed" or "weight").
    """

    decay: float = coefficient(0.0)
    self: float = coefficient(0.0)
    amp: float = coefficient(0.0)
    sparse: float = coefficient(0.0)
    null: float = coefficient(0.0)
    noise: str = option("none", choices=NOISE)
    sigma: float = option(1.0, above=0)
    tied: bool = option(False)
    positions: str = option("sum", choices=("sum", "mean"))
    scale: str = scale_option()

    name = "alignment"
    aliases = ("kunin",)
    summary = "B learned by a local regulariser of the layer's input (Kunin et al. 2020)"
    order = 72
    compared = False  # every coefficient 0: compose a member, or take sa, aa or ia

    @property
    def state(self) -> tuple[str, ...]:
        return ("feedback",) if self.noise == "none" else ("feedback", "feedback_step")

    @property
    def compile_note(self) -> str:
        return ("" if self.noise == "none" else
                f"{self.name}(noise={self.noise!r}) seeds its noise from a step counter at "
                f"every step, which torch.compile cannot trace: it recompiles at every step. "
                f"Train it without --compile.")

    def setup(self, layer, generator) -> None:
        if self.noise != "none":
            step_counter(layer)
        b = random_feedback(layer.weight_now(), generator, self.scale, s=seed_scale(layer))
        layer.put_state("feedback", b, learned=True)

    def weight_decays(self, layer) -> dict[str, float]:
        return {"feedback": 0.0}  # B's decay is the `decay` term

    def bind(self, layer) -> Feedback:
        b = layer._parameters["feedback"]  # (not __getattr__'s search: host time per layer)
        seed = None
        if self.noise != "none":
            seed = mix(layer.feedback_seed, "align", int(layer.feedback_step))
        scaler = layer.__dict__.get("loss_scaler")

        def align(layer_map, w: Tensor, b: Tensor, grad_w: Tensor | None) -> Tensor:
            g = self.gradient(layer_map, w, b, seed)
            if scaler is not None:  # B.grad is unscaled with the task's gradients
                g = g * _scale_of(scaler, g)
            elif g.dtype == torch.float16:
                warnings.warn(f"{self.name} under float16 autocast: a GradScaler divides B's "
                              f"alignment gradient by its scale unless it is attached: "
                              f"biograd.attach(optimizer, model, scaler=scaler)", stacklevel=2)
            return g + grad_w if self.tied and grad_w is not None else g

        return Feedback(learned=b, align=align, fixed=b)

    @torch.no_grad()
    def after_step(self, layer) -> None:
        if self.noise != "none":
            layer.feedback_step.add_(1)  # the next step's noise

    @torch.no_grad()
    def after_steps(self, layers) -> None:
        """Every layer's counter moved in one call; nothing, without noise (not a call per
        layer that does nothing: 60 µs a step on ResNet-18 at 1/8 width)."""
        if self.noise != "none":
            torch._foreach_add_([layer._buffers["feedback_step"] for layer in layers], 1)

    def gradient(self, layer_map, w: Tensor, b: Tensor, seed: int | None = None) -> Tensor:
        """∂R/∂B on the input of `layer_map` (noise drawn from `seed` in its place, if given),
        in the input's dtype. w, b: W and B of one shape."""
        x = layer_map.x
        w, b = w.detach().to(x.dtype), b.detach().to(x.dtype)
        out = b * (2 * self.decay) if self.decay else torch.zeros_like(b)
        if self.self:
            out.sub_(w, alpha=self.self)
        if not (self.amp or self.sparse or self.null):
            return out
        if seed is not None:
            layer_map = layer_map.on(self.draw(x, seed))
        yw = layer_map.forward(w) if self.amp or self.null else None  # W x: (N, out, ...)
        yb = layer_map.forward(b) if self.sparse else None
        y = yw if yw is not None else yb
        # the samples; or with positions="mean", every position of every sample: N·P
        n = max(layer_map.samples if self.positions == "sum" else y.numel() // y.shape[1], 1)
        if self.amp or self.sparse:  # one weight gradient for both: (2·sparse B x − amp W x)
            up = yw * (-self.amp / n) if self.amp else None
            if self.sparse:
                yb.mul_(2 * self.sparse / n)
                up = yb if up is None else up.add_(yb)
            out.add_(layer_map.weight_grad(up))
        if self.null:  # the weight gradient of upstream W x at input Bᵀ W x
            back = layer_map.input_grad(yw, b)
            out.add_(layer_map.weight_grad(yw, back), alpha=2 * self.null / n)
        return out

    def draw(self, x: Tensor, seed: int) -> Tensor:
        """Noise of x's shape, dtype and device, mean 0 and standard deviation sigma."""
        gen = generator(seed, x.device)
        if self.noise == "normal":
            return torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype
                               ).mul_(self.sigma)
        half = math.sqrt(3.0) * self.sigma  # U(-a, a) has standard deviation a / √3
        return torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype
                          ).mul_(2 * half).sub_(half)


def _scale_of(scaler, like: Tensor) -> Tensor | float:
    """A GradScaler's current scale, as a tensor on the device (no sync), or 1 if disabled."""
    if not scaler.is_enabled():
        return 1.0
    scale = getattr(scaler, "_scale", None)  # set by the scaler's first scale(loss)
    return 1.0 if scale is None else scale.to(like.dtype)


@register
@dataclass(frozen=True)
class SA(Alignment):
    """Symmetric alignment: R = decay·‖B‖² − self·tr(BᵀW); B → (self / 2·decay) W."""

    decay: float = coefficient(1e-3)
    self: float = coefficient(2e-3)

    name = "sa"
    aliases = ("symmetric_alignment",)
    summary = "B learned: decay·‖B‖² − self·tr(BᵀW), B → W (Kunin's symmetric alignment)"
    order = 73
    compared = True


@register
@dataclass(frozen=True)
class AA(Alignment):
    """Activation alignment: R = sparse·‖Bx‖² − amp·⟨Bx, Wx⟩; B → (amp / 2·sparse) W on the
    input's span."""

    sparse: float = coefficient(1e-3)
    amp: float = coefficient(2e-3)

    name = "aa"
    aliases = ("activation_alignment",)
    summary = "B learned: sparse·‖Bx‖² − amp·⟨Bx, Wx⟩, B → W on x's span (Kunin)"
    order = 74
    compared = True


@register
@dataclass(frozen=True)
class IA(Alignment):
    """Information alignment: R = −amp·⟨Bx, Wx⟩ + null·‖BᵀWx‖² + decay·‖B‖²;
    B → (amp/2) (null·WΣWᵀ + decay·I)⁻¹ WΣ."""

    amp: float = coefficient(2e-3)
    null: float = coefficient(1e-3)
    decay: float = coefficient(1e-3)

    name = "ia"
    aliases = ("information_alignment",)
    summary = "B learned: −amp·⟨Bx, Wx⟩ + null·‖BᵀWx‖² + decay·‖B‖² (Kunin's information alignment)"
    order = 75
    compared = True
