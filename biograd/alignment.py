"""How well feedback aligns with the forward weights, and rule gradients with true gradients.

angle(W, B) = arccos(⟨vec W, vec B⟩ / (‖W‖ ‖B‖)), in degrees, computed in float64 in a form
that stays accurate near 0°; NaN where either is all zeros.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from biograd.convert import feedback_layers
from biograd.rules import get_rule
from biograd.rules.drtp import targets

Batch = Any
LossFn = Callable[[nn.Module, Batch], Tensor]


def angle(a: Tensor, b: Tensor) -> float:
    """The angle between two tensors of the same shape, flattened, in degrees."""
    a, b = a.detach().reshape(-1).double(), b.detach().reshape(-1).double()
    na, nb = a.norm(), b.norm()
    if na == 0 or nb == 0:
        return math.nan
    a, b = a / na, b / nb
    # 2·atan2(|a - b|, |a + b|) for unit vectors: accurate near 0° and 180°, unlike acos.
    return math.degrees(2 * math.atan2((a - b).norm().item(), (a + b).norm().item()))


def weight_angles(model: nn.Module) -> dict[str, float]:
    """{layer name: angle between W and the B its backward uses}, in network order.

    For frsf and brsf this is the effective |M|∘sign(W) (brsf: the latest step's draw), not M.
    Layers on bp give 0. Layers on a rule that reads the model's output are left out: on dfa
    and drtp, B maps the output error (the targets) to the layer's input, (K, *input), and has
    no W to be compared with; on dfa_blocks, B = W inside the blocks and the random B sits at
    the blocks' outputs. `gradient_angles` measures them as DFA papers do, by their weight
    updates.
    """
    return {name: angle(layer.weight_now(), layer.feedback_weight()) for name, layer in
            feedback_layers(model) if not layer.learning_rule.reads_output}


def cross_entropy_loss(model: nn.Module, batch: Batch) -> Tensor:
    """The default loss of `gradient_angles`: batch = (inputs, class targets); the targets go
    to the model's layers on drtp first (`biograd.targets`)."""
    inputs, labels = batch
    targets(model, labels)
    return F.cross_entropy(model(inputs), labels)


def gradient_angles(
    model: nn.Module, batch: Batch, loss_fn: LossFn = cross_entropy_loss
) -> dict[str, float]:
    """{layer name: angle between the rule's weight gradient and true backprop's}, degrees.

    Both gradients come from the same batch, the same random draws (dropout) and the same
    starting state; in the backprop pass every converted layer, frozen ones included, runs
    backprop (so dfa_blocks' points are idle: exact backprop end to end). Afterwards the
    model is as it was: buffers (BatchNorm statistics), every rule counter, train/eval mode,
    random streams and any accumulated .grad are untouched, even if `loss_fn` raises. Only
    layers whose rule is not bp are listed; trainable weights only.

    loss_fn(model, batch) -> scalar loss; the default is cross-entropy on (inputs, targets).
    A loss_fn of your own for a model with layers on drtp calls `biograd.targets` before the
    model's forward, as the default does.
    """
    bp = get_rule("bp")
    converted = [(n, m) for n, m in feedback_layers(model) if m.learning_rule != bp]
    layers = [(n, m) for n, m in converted if m.weight_now().requires_grad]
    if not layers:
        return {}
    weights = [m.weight_now() for _, m in layers]
    saved_buffers = [(b, b.detach().clone()) for b in model.buffers()]
    saved_steps = [(m, m.feedback_step.clone()) for _, m in converted  # frozen layers' too
                   if "feedback_step" in m._buffers]
    saved_rules = [(m, m.learning_rule) for _, m in converted]
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.is_cuda})

    def grads() -> tuple[Tensor, ...]:
        try:
            with torch.random.fork_rng(devices=devices):
                loss = loss_fn(model, batch)
                return torch.autograd.grad(loss, weights)
        finally:
            with torch.no_grad():
                for buffer, value in saved_buffers:
                    buffer.copy_(value)
            for m, step in saved_steps:
                m.feedback_step.copy_(step)

    rule_grads = grads()
    try:  # the reference: every converted layer on backprop, trainable or frozen
        for _, m in converted:
            m.learning_rule = bp
        true_grads = grads()
    finally:
        for (_, m), (_, r) in zip(converted, saved_rules, strict=True):
            m.learning_rule = r
    return {n: angle(g, t) for (n, _), g, t in zip(layers, rule_grads, true_grads, strict=True)}
