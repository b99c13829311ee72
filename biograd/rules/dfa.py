"""Direct feedback alignment (Nøkland 2016): the output error, projected straight to each layer.

δx_l = B_l e,  e = ∂L/∂ŷ  (N, K), the error at the model's output; B_l: (K, *x_l's shape)

Each converted layer sends, as the gradient of its input x_l, the output error projected by a
fixed random B_l, in place of Bᵀδy: no error travels down through the layers' weights. The
projection enters above the nonlinearity (and BatchNorm) of the layer below, whose backward
applies it as usual, so the layer below learns from δa = (B_l e) ⊙ f'(a): Nøkland's rule, with
B kept on the layer whose input it feeds. A layer's own weight gradient is the true local one
given the error at its output. What else flows: a module that is not converted (BatchNorm, a
ReLU, a residual sum) passes the projected errors on as backprop would, so at a ResNet block's
input the projection of the block's first convolution and what arrives through the identity
shortcut add up; the stem's input gets no gradient (nothing needs one).

B_l is a window of one fixed table of N(0, 1) numbers shared by every layer (TinyDFA's shared
matrix, Launay et al. 2020), starting at an offset drawn from the layer's seed, scaled by
1/√d (d: x_l's size per sample) so that E‖B_l e‖² = ‖e‖²: the projected error has the norm of
the output error, as backprop's has at every layer of a network initialised to preserve it
(He init, constant width). The table is as long as the largest window, d·K, plus its offset
(under 2^20, and under the window), once per model and device: K = 1000 and ResNet-18 at
224² (d up to 64·56·56) make 807 MB in float32. It is drawn on the CPU from a fixed seed, so
B depends only on the layer's seed (in the state dict): identical on every DDP rank, and a
resumed run uses the same B.

The error is taken where the model's output leaves its forward: biograd.convert installs a
forward hook on the model it converts. A model whose output is not one tensor (a dict of
losses, RetinaNet's heads) names the module whose output tensor is ŷ with `error_source`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from biograd._seed import generator, mix
from biograd.rules.base import Feedback, Rule, register

TABLE_SEED = mix("biograd", "dfa", "table")
CHUNK = 1 << 18  # the table is drawn in chunks of this many numbers: it can grow, unchanged
OFFSETS = 1 << 20  # a layer's window of n numbers starts at its seed mod min(OFFSETS, n)


class _Pass:
    """One forward pass in flight: the output error its backward captured."""

    __slots__ = ("error",)

    def __init__(self) -> None:
        self.error: Tensor | None = None


class ErrorSource:
    """Where a model's output error is taken, and the table its dfa layers' B are cut from.

    One per converted model (on the model as `_biograd_error_source`): a forward pre-hook on the
    model starts a pass, which its layers' forwards bind to; a forward hook on the source
    module (the model itself by default) registers a tensor hook on its output that stores
    e = ∂L/∂ŷ, reshaped to (N, K), for that pass's backward.
    """

    def __init__(self, model: nn.Module, source: str = "") -> None:
        module = _module(model, source)  # a wrong name fails before any hook is set
        self.current: _Pass | None = None
        self.tables: dict[tuple[torch.device, torch.dtype], Tensor] = {}
        self.source = source
        self.handles = [model.register_forward_pre_hook(self.start),
                        module.register_forward_hook(self.capture)]

    def __getstate__(self) -> dict[str, Any]:
        """Pickled and deep-copied without its table (derived, and 807 MB for ResNet-18 at
        224² with 1,000 classes) or the pass in flight."""
        return {**self.__dict__, "tables": {}, "current": None}

    def start(self, module: nn.Module, args: Any) -> None:
        self.current = _Pass()

    def capture(self, module: nn.Module, args: Any, output: Any) -> None:
        if not isinstance(output, Tensor):
            where = f"its module {self.source!r}" if self.source else "the model"
            raise TypeError(
                f"dfa takes the output error at the output of {where}, which returned "
                f"{type(output).__name__}, not one tensor: name the module whose output "
                f"tensor is ŷ with biograd.error_source(model, 'head.classifier')")
        if output.requires_grad and self.current is not None:
            current, like = self.current, output.detach()

            def store(grad: Tensor | None) -> None:  # None: an undefined gradient, e = 0
                grad = torch.zeros_like(like) if grad is None else grad.detach()
                current.error = grad.reshape(grad.shape[0], math.prod(grad.shape[1:]))

            output.register_hook(store)

    def table(self, n: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """The first n (or more) numbers of the fixed N(0, 1) table, on `device` in `dtype`."""
        key = (device, dtype)
        have = self.tables.get(key)
        if have is None or have.numel() < n:
            start = 0 if have is None else have.numel() // CHUNK
            chunks = [torch.randn(CHUNK, generator=generator(mix(TABLE_SEED, i)))
                      for i in range(start, -(-n // CHUNK))]
            new = torch.cat(chunks).to(device=device, dtype=dtype)
            have = new if have is None else torch.cat([have, new])
            self.tables[key] = have
        return have

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []
        self.tables.clear()


def _module(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n][:8]
        raise ValueError(f"error_source: the model has no module {name!r} (it has "
                         f"{', '.join(names)}, ...)") from None


def error_source(model: nn.Module, name: str = "") -> ErrorSource:
    """Take the output error of `model`'s dfa layers at the output of its module `name` (""
    the model itself, the default); the module must return one tensor ŷ, and e = ∂L/∂ŷ is
    flattened to (N, K) per sample. Returns the model's ErrorSource (made if it has none).

        biograd.convert(model, "dfa")
        biograd.error_source(model, "head.classification_head")
    """
    found = model.__dict__.get("_biograd_error_source")
    if found is None or found.source != name:
        _module(model, name)  # a wrong name leaves the model as it was
        if found is not None:
            found.remove()
        found = ErrorSource(model, name)
        model.__dict__["_biograd_error_source"] = found
    for layer in model.modules():  # layers converted since the source was made too
        if getattr(layer, "learning_rule", None) is not None and layer.learning_rule.direct:
            layer.__dict__["error_source"] = found
    return found


def release(model: nn.Module) -> None:
    """Remove `model`'s error source and its hooks, if it has one."""
    found = model.__dict__.pop("_biograd_error_source", None)
    if found is not None:
        found.remove()
    for layer in model.modules():
        layer.__dict__.pop("error_source", None)


def _source_of(layer: nn.Module) -> ErrorSource:
    found = layer.__dict__.get("error_source")
    if found is None:
        raise RuntimeError(
            f"{type(layer).__name__} on dfa has no output error to project: convert the "
            f"whole model with biograd.convert(model, 'dfa'), which hooks the model's output")
    return found


def _window(source: ErrorSource, layer: nn.Module, k: int, shape: tuple[int, ...],
            device: torch.device, dtype: torch.dtype) -> Tensor:
    """√d B (k, d) of `layer`: its window of the table, not yet scaled (d = prod(shape))."""
    d = math.prod(shape)
    start = layer.feedback_seed % min(OFFSETS, k * d)
    table = source.table(start + k * d, device, dtype)
    layer.__dict__["feedback_shape"] = (k, *shape)
    return table[start : start + k * d].view(k, d)


def _project(layer: nn.Module, source: ErrorSource | None, run: _Pass | None,
             shape: torch.Size) -> Tensor:
    """δx = (B e) for the input x of `shape` (N, ...): e of the pass `run`."""
    source = _source_of(layer) if source is None else source
    if run is None:
        raise RuntimeError(f"{type(layer).__name__} on dfa ran outside a forward of the model "
                           f"it was converted in: call the model, not the layer alone")
    e = run.error
    if e is None:
        raise RuntimeError(
            f"{type(layer).__name__} on dfa: the backward reached this layer before the output "
            f"error was taken: the loss must be computed from the output of the model it was "
            f"converted in (or of its biograd.error_source), not modified in place")
    n, rest = shape[0], tuple(shape[1:])
    if e.shape[0] != n:
        raise RuntimeError(
            f"{type(layer).__name__} on dfa: its input has shape {tuple(shape)}, but the "
            f"output error has {e.shape[0]} samples: dfa needs the batch first in every layer's "
            f"input (batch_first=True for attention)")
    if e.numel() == 0 or math.prod(rest) == 0:  # an empty batch, or an empty input
        return e.new_zeros(shape)
    b = _window(source, layer, e.shape[1], rest, e.device, e.dtype)
    return (e @ b).mul_(1.0 / math.sqrt(b.shape[1])).view(shape)


@register
@dataclass(frozen=True)
class DFA(Rule):
    """δx = B e: the output error through a fixed random B, no error through the weights."""

    name = "dfa"
    aliases = ("direct_feedback_alignment",)
    summary = "δx = B·e, the output error e through a fixed random B (Nøkland 2016)"
    order = 80
    direct = True
    compile_note = ("dfa's backward reads the output error, which exists only once the "
                    "backward has begun: torch.compile cannot trace it ahead and breaks the "
                    "graph at every dfa layer (the gradients stay right; the speed-up is small)")

    def bind(self, layer) -> Feedback:
        source = layer.__dict__.get("error_source")
        run = None if source is None else source.current
        return Feedback(make=None, direct=lambda shape: _project(layer, source, run, shape))

    def feedback_weight(self, layer) -> Tensor:
        """B (K, *the layer's input per sample) as the latest backward used it."""
        shape = layer.__dict__.get("feedback_shape")
        if shape is None:
            raise RuntimeError(f"{type(layer).__name__} on dfa: B's shape comes from the output "
                               f"error and the layer's input: run a forward and backward first")
        w = layer.weight_now()
        b = _window(_source_of(layer), layer, shape[0], shape[1:], w.device, w.dtype)
        return b.mul(1.0 / math.sqrt(b.shape[1])).view(shape)
