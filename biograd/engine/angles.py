"""What a run measures of its feedback: the angles between W and B, the angles to
backprop's gradient, and the excess kurtosis of W (angles.jsonl's, metrics.jsonl's and the
epoch line's)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

import biograd

if TYPE_CHECKING:
    from biograd.engine.loop import Context


def _rule_mean(ctx: Context, values: dict[str, float]) -> float:
    """The mean of `values` over the layers on the run's rule (NaN if none)."""
    on_rule = {name for name, layer in biograd.feedback_layers(ctx.model)
               if layer.rule == ctx.cfg.rule}
    picked = [v for k, v in values.items() if k in on_rule and not math.isnan(v)]
    return sum(picked) / len(picked) if picked else math.nan


def angle_text(m: dict[str, Any]) -> str:
    """The epoch line's angle: the mean angle(W, B) (0 under bp, whose B is W), or where the
    rule has none (dfa's B is not W's shape) the mean angle to bp's gradient; nothing where
    neither was measured."""
    for key, label in (("mean_weight_angle", "mean angle(W, B)"),
                       ("mean_gradient_angle", "mean angle to bp's gradient")):
        value = m.get(key)
        if value is not None and math.isfinite(value):
            return f", {label} {value:.1f}°"
    return ""


def step_angles(ctx: Context, epoch: float, step: int) -> dict[str, Any]:
    """The weight angles now, and each converted layer's excess kurtosis of W (the shape of
    its weights' distribution, which ss's angle reads: 0 for Gaussian weights), for
    angles.jsonl."""
    weight = biograd.weight_angles(ctx.model)
    return {"step": step, "epoch": epoch, "weight_angles": weight,
            "mean_weight_angle": _rule_mean(ctx, weight),
            "weight_kurtosis": {name: kurtosis(layer.weight_now()) for name, layer in
                                biograd.feedback_layers(ctx.model)}}


@torch.no_grad()
def kurtosis(w: torch.Tensor) -> float:
    """Excess kurtosis of the entries of w, E[(w - μ)⁴] / σ⁴ - 3 (float64)."""
    w = w.detach().double().flatten()
    centred = w - w.mean()
    var = centred.square().mean()
    return (centred.pow(4).mean() / var.square() - 3).item() if var > 0 else math.nan


def angles(ctx: Context) -> dict[str, Any]:
    """Weight angles, and gradient angles on the fixed batch; means over the run's rule."""
    model, task = ctx.model, ctx.task
    weight = biograd.weight_angles(model)
    gradient = {}
    if task.angle_batch is not None and task.angle_loss is not None:
        was_training = model.training
        model.train()  # the gradients training takes (gradient_angles restores the buffers)
        try:
            gradient = biograd.gradient_angles(model, task.angle_batch, task.angle_loss)
        finally:
            model.train(was_training)
    return {"weight_angles": weight, "gradient_angles": gradient,
            "mean_weight_angle": _rule_mean(ctx, weight),
            "mean_gradient_angle": _rule_mean(ctx, gradient)}
