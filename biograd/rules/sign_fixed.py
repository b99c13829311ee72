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
from biograd.signs import floor, hold_sign_


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
        hold_sign_(layer.weight, signs_of(layer), self.eps)

    @torch.no_grad()
    def after_steps(self, layers) -> None:
        """`hold_sign_` on every layer. Small layers (up to ONE_BY_ONE weights), and every
        layer on a GPU, each pass one call over all those of a device and dtype
        (torch._foreach_*): a step bound by host time pays a few calls where it paid four
        per layer (ResNet-18 at 1/8 width on the CPU: 0.10 ms where it was 0.37). Larger
        layers on the CPU one by one, each W's passes while it is in cache (ResNet-18: 15 ms
        a step, where the grouped passes took 23)."""
        groups: dict[tuple, tuple[list, list]] = {}
        for layer in layers:
            w = layer.weight
            if w.device.type == "cpu" and w.numel() > ONE_BY_ONE:
                self.after_step(layer)
                continue
            ws, ss = groups.setdefault((w.device, w.dtype), ([], []))
            ws.append(w)
            ss.append(signs_of(layer))
        for (_, dtype), (ws, ss) in groups.items():
            hold_signs_(ws, ss, floor(self.eps, dtype))


#: the most weights a layer may have for its clamp to join the grouped calls on the CPU, and
#: for sign(B) to be kept between steps (256 KiB in fp32)
ONE_BY_ONE = 2**16


def signs_of(layer) -> torch.Tensor:
    """sign(B) for `layer`'s clamp. B is fixed: a layer of at most ONE_BY_ONE weights keeps it
    between steps (a pass less; made anew when B is replaced or written, as a load does)."""
    b = layer._buffers["feedback"]
    if b.numel() > ONE_BY_ONE:
        return torch.sign(b)
    kept = layer.__dict__.get("_cached_signs")
    if kept is None or kept[0] is not b or kept[1] != b._version:
        kept = (b, b._version, torch.sign(b))
        layer.__dict__["_cached_signs"] = kept
    return kept[2]


def hold_signs_(weights: list[torch.Tensor], signs: list[torch.Tensor], eps: float) -> None:
    """In place: `hold_sign_(W, sign, eps)` for every pair, each pass one call over all (one
    device and dtype; eps as `floor` gives it for that dtype)."""
    torch._foreach_mul_(weights, signs)
    torch._foreach_clamp_min_(weights, eps)
    torch._foreach_mul_(weights, signs)
