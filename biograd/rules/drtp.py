"""Direct random target projection (Frenkel, Lefebvre & Bol 2021, "Learning without feedback").

δx_l = B_l y*,  y* (N, K) the one-hot targets of the batch; B_l: (K, *x_l's shape), as dfa's

dfa with the targets in place of the output error e = ∂L/∂ŷ (their code, ChFrenkel/
DirectRandomTargetProjection function.py: `labels.mm(B)` against dfa's `(y - labels).mm(B)`,
the same sign). Each converted layer sends, as the gradient of its input, the targets
projected by the same fixed random B_l that dfa would use (a window of the shared table, from
the layer's seed, scaled by 1/√d), so the layer below learns from δa = (B_l y*) ⊙ f'(a). The
hidden layers' updates need neither the output error nor any weight above them: nothing waits
for the forward pass to finish (no update locking). A layer's own weight gradient is the true
local one given the error at its output; the last layer, on drtp as well, learns from the
true loss gradient at its output and sends B y* down.

The targets reach the layers with one call per batch, before the model's forward:

    biograd.targets(model, y)            # y: class indices (N,) or float targets (N, K)
    loss = F.cross_entropy(model(x), y)  # this forward keeps them for its backward

K is the size per sample of the model's output (or of its `error_source`), seen at that
forward; class indices are one-hot over it. The targets do not scale with the loss: where the
loss averages over the batch (cross-entropy's default), dfa's e carries a factor 1/N and
drtp's y* does not.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from biograd.rules.base import register
from biograd.rules.dfa import KEY, Projection, _Pass

#: The attributes of the wrappers `targets` looks through: DDP's and torch.compile's.
WRAPPERS = ("module", "_orig_mod")


@register
@dataclass(frozen=True)
class DRTP(Projection):
    """δx = B y*: the one-hot targets through a fixed random B, no error through the weights."""

    name = "drtp"
    aliases = ("direct_random_target_projection",)
    summary = ("δx = B·y*, the one-hot targets y* through a fixed random B (Frenkel et al. "
               "2021); needs biograd.targets(model, y) before each forward")
    order = 85
    wants_targets = True
    compile_note = ("drtp's backward reads the targets kept by the forward pass that "
                    "biograd.targets preceded: torch.compile breaks the graph at every drtp "
                    "layer (the gradients stay right; the speed-up is small)")

    def signal(self, layer, run: _Pass) -> Tensor:
        """y* (N, K), given by `biograd.targets` before this pass's forward."""
        if run.targets is None:
            raise RuntimeError(
                f"{type(layer).__name__} on drtp: no targets for this forward pass: call "
                f"biograd.targets(model, y) before each forward of the model (each forward "
                f"takes the targets given since the one before)")
        return run.targets


def targets(model: nn.Module, y: Tensor) -> None:
    """Give the next forward pass of `model` its targets, for its layers on drtp.

    model: the converted model, or a DistributedDataParallel or torch.compile wrapper of it;
    y: class indices (N,), one-hot over K = the model output's size per sample, or float
    targets (N, K) taken as they are. Checked against the output when the forward has run
    (a ValueError where N or K differ). A no-op on a model with no layer on drtp, so a loop
    can always call it.

        biograd.targets(model, y)
        F.cross_entropy(model(x), y).backward()
    """
    if not isinstance(y, Tensor):
        raise TypeError(f"biograd.targets(model, y): y is a tensor of class indices (N,) or "
                        f"of targets (N, K), not {type(y).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"biograd.targets(model, y): model is the converted nn.Module, not "
                        f"{type(model).__name__}")
    while KEY not in model.__dict__:
        inner = next((model._modules[a] for a in WRAPPERS if a in model._modules), None)
        if inner is None:
            return  # no layer reads the model's output
        model = inner
    source = model.__dict__[KEY]
    if source.wants_targets:
        source.pending = y
