"""DFA between blocks (TinyDFA's "macro" placement, Launay et al. 2020): backprop inside each
block, the projected output error at each block's output, nothing between blocks.

δh_b = B_b e,  e = ∂L/∂ŷ (N, K);  h_b (N, *shape_b) the output of block b, B_b: (K, d_b)

At the output h_b of each chosen block (a ResNet's residual block, a Transformer's encoder
block) the gradient arriving from above is replaced by B_b e, and the backward inside the block
is exact backprop from there: its converted layers run torch's own op (B = W), so every
parameter inside learns what backprop would teach it were ∂L/∂h_b equal to B_b e. No error
passes from a block to the one below. B_b is a window of dfa's shared N(0, 1) table scaled by
1/√d_b (d_b = h_b's size per sample), starting at an offset drawn from the block's seed,
mix(s, block name) with s the seed of the block's first converted layer (itself mix(run
seed, layer name), and in the state dict): every DDP rank agrees, a loaded or resumed model
projects as the saved one did, and nothing else is kept (no buffers, no state-dict entries).

What flows outside the blocks: the head after the last block (a ResNet's pooling and fc, a
ViT's final LayerNorm and head) gets the true loss gradient; the stem before the first block
gets backprop through the first block from its point. A block's own input gradient is still
computed, as backprop computes it, and then replaced at the point below.

Blocks (option `blocks`): "auto" takes every torchvision ResNet BasicBlock and Bottleneck
(`layer1.0`, ...), torchvision ViT EncoderBlock (`encoder.layers.encoder_layer_0`, ...), timm
ViT Block (`blocks.0`, ...), biograd's resnet_small BasicBlock and the recurrent encoder of
its lstm and gru (`encoder`: B e at the final hidden state, backprop through time inside),
outermost matches only; otherwise comma-separated fnmatch patterns on qualified module names
("layer*.?,head"), again outermost matches only; a bare layer has none (on dfa_blocks it is
plain backprop). A point acts while a converted layer inside its block is on dfa_blocks:
`biograd.gradient_angles`, which puts every converted layer on bp for its reference pass,
gets true backprop, and converting the model to another rule removes the points. The output
error is taken by dfa's hooks (biograd.rules.dfa.ErrorSource).
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from biograd._seed import mix
from biograd.rules.base import Feedback, Rule, option, register
from biograd.rules.dfa import (
    STEPS,
    ErrorSource,
    _Pass,
    _rule_of,
    every_step,
    kept,
    per_sample,
    project,
    reuse,
    window,
)

#: The classes blocks="auto" finds (by qualified name: timm need not be installed).
AUTO = (
    "torchvision.models.resnet.BasicBlock",
    "torchvision.models.resnet.Bottleneck",
    "torchvision.models.vision_transformer.EncoderBlock",
    "timm.models.vision_transformer.Block",
    "biograd.models.resnet.BasicBlock",
    "biograd.models.sequence.FinalState",
)
AUTO_TEXT = ("torchvision's ResNet BasicBlock and Bottleneck and ViT EncoderBlock, timm's "
             "ViT Block, biograd's resnet_small BasicBlock and its lstm's and gru's encoder")


def _known(module: nn.Module) -> bool:
    return any(f"{c.__module__}.{c.__qualname__}" in AUTO for c in type(module).__mro__)


def find_blocks(model: nn.Module, blocks: str = "auto") -> list[str]:
    """The qualified names of `model`'s blocks, outermost matches only, in registration order:
    blocks="auto" by class (see AUTO), else comma-separated fnmatch patterns on the names. A
    ValueError, saying how modules are named, where none is found or a pattern matches none;
    none for a bare layer (a model that is one convertible layer, such as nn.Linear or
    nn.MultiheadAttention), which on dfa_blocks is backprop."""
    from biograd.nn.layers import DROP_INS, FeedbackLayer

    if isinstance(model, (FeedbackLayer, *DROP_INS)):
        return []
    named = [(n, m) for n, m in model.named_modules() if n]  # the model itself is no block
    if blocks == "auto":
        picked = [n for n, m in named if _known(m)]
        if not picked:
            raise ValueError(
                f"dfa_blocks found no block in {type(model).__name__}: blocks='auto' knows "
                f"{AUTO_TEXT}; {_naming(named)}")
    else:
        patterns = blocks.split(",")
        unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n, _ in named)]
        if unmatched:
            raise ValueError(
                f"dfa_blocks blocks pattern {', '.join(map(repr, unmatched))} matches no "
                f"module of {type(model).__name__}; {_naming(named)}")
        picked = [n for n, _ in named if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    outermost: list[str] = []
    for name in picked:  # named_modules lists a parent before its children
        if not any(name.startswith(f"{kept}.") for kept in outermost):
            outermost.append(name)
    return outermost


def _naming(named: list[tuple[str, nn.Module]]) -> str:
    """How the modules are named, and how to name blocks, for an error message."""
    shown = ", ".join(n for n, _ in named[:6]) + (", ..." if len(named) > 6 else "")
    top = [(n, m) for n, m in named if "." not in n]
    containers = [f"{n}.*" for n, m in top if next(m.children(), None) is not None]
    example = ",".join(containers[:2] or [n for n, _ in top[:2]] or ["layer1.*"])
    return (f"its modules are named like {shown or 'nothing (it has none)'} (see "
            f"model.named_modules()): name the blocks with comma-separated patterns on those "
            f"names, like get_rule('dfa_blocks', blocks='{example}') or --rule-options "
            f"'{{dfa_blocks: {{blocks: \"{example}\"}}}}'")


class Point:
    """The DFA point at the output of block `name`: while a converted layer inside the block
    is on dfa_blocks, the gradient that reaches the block's output h (N, ...) in the backward
    is replaced by B e, B (K, d) the window of `seed` scaled by 1/√d, e the output error of
    the same forward pass (`source`). `layers`: the block's converted layers, first first."""

    def __init__(self, source: ErrorSource, name: str, block: nn.Module,
                 layers: list[nn.Module]) -> None:
        self.source, self.name, self.layers = source, name, tuple(layers)
        self.feedback_shape: tuple[int, ...] | None = None  # (K, *h's shape per sample)
        self.like: tuple[torch.device, torch.dtype] | None = None  # e's, at the last backward
        # the block's modules that may step over time (spikingjelly's), found once: at every
        # forward only their mode is read, not the block's every module (host time per block)
        self.stepped = tuple(m for m in block.modules() if _may_step(m))
        self._seed: tuple[int, int] | None = None  # (the first layer's seed, mix of it)
        self._kept: tuple | None = None  # dfa's `kept`, for `project`
        self.handle = block.register_forward_hook(self.hook)

    @property
    def seed(self) -> int:
        """mix(the seed of the block's first converted layer, the block's name)."""
        first = self.layers[0].feedback_seed
        if self._seed is None or self._seed[0] != first:
            self._seed = (first, mix(first, self.name))
        return self._seed[1]

    def active(self) -> bool:
        return any(isinstance(layer.learning_rule, DFABlocks) for layer in self.layers)

    def hook(self, module: nn.Module, args: Any, output: Any) -> None:
        if not self.active():
            return
        if not isinstance(output, Tensor):
            raise TypeError(f"dfa_blocks: block {self.name!r} returned "
                            f"{type(output).__name__}, not one tensor: name blocks whose "
                            f"output is one tensor (the option blocks)")
        run = self.source.current
        if run is not None and output.requires_grad:
            steps = _steps(self.stepped, output)
            # a tensor hook, not one on h's node: it runs before h.retain_grad()'s, so that
            # h.grad shows B e, what the block's backward is given
            output.register_hook(lambda grad: self.project(run, grad, steps))

    def project(self, run: _Pass, grad: Tensor, steps: int = 1) -> Tensor:
        """B e in place of `grad`, the gradient from above at the block's output (B e of each
        sample at each of `steps` time steps, time first)."""
        e = run.error
        if e is None:
            raise RuntimeError(
                f"dfa_blocks: the backward reached block {self.name!r} before the output error "
                f"was taken: a block must lie below the model's output (not be its last "
                f"module), and the loss be computed from that output, not modified in place")
        # what the last backward worked out for these shapes and this seed (dfa's `kept`)
        key = (grad.shape, e.shape, steps, self.layers[0].feedback_seed)
        delta = reuse(self._kept, key, self.source, e)
        if delta is not None:
            return every_step(delta, grad.shape).to(grad.dtype)
        one = per_sample(grad.shape, e.shape[0], steps)
        if one is None:
            raise RuntimeError(
                f"dfa_blocks: block {self.name!r} returned shape {tuple(grad.shape)}, but the "
                f"model's output has {e.shape[0]} samples: dfa_blocks needs the batch first "
                f"in every block's output (time first, (T, N, ...), only in spikingjelly's "
                f"multi-step mode)")
        one = torch.Size(one)
        d = math.prod(one[1:])
        if e.numel() and d:
            self.feedback_shape, self.like = (e.shape[1], *one[1:]), (e.device, e.dtype)
            b = window(self.source, self.seed, e.shape[1], d, e.device, e.dtype)
            self._kept = kept(self.source, key, e, b, one)
        delta = project(self.source, self.seed, e, one)
        return every_step(delta, grad.shape).to(grad.dtype)

    def feedback_weight(self) -> Tensor:
        """B (K, *the block's output per sample) as the latest backward used it."""
        if self.feedback_shape is None or self.like is None:
            raise RuntimeError(f"dfa_blocks: the B of block {self.name!r} takes its shape from "
                               f"the output error and the block's output: run a forward and "
                               f"backward first")
        k, d = self.feedback_shape[0], math.prod(self.feedback_shape[1:])
        b = window(self.source, self.seed, k, d, *self.like)
        return b.mul(1.0 / math.sqrt(d)).view(self.feedback_shape)

    def remove(self) -> None:
        self.handle.remove()


def _steps(stepped: tuple[nn.Module, ...], output: Tensor) -> int:
    """T where a block's output holds T time steps first: a block in spikingjelly's
    multi-step mode ((T, N, ...): a module inside it, among `stepped`, has step_mode 'm', or
    takes only that, as its SeqToANNContainer), or one inside a module that folds time into
    the batch (`folded_steps`); else 1."""
    if stepped and output.dim() > 1 and any(_multi_step(m) for m in stepped):
        return output.shape[0]
    return STEPS.get()


def _may_step(module: nn.Module) -> bool:
    """Whether `module` has a step mode (spikingjelly's layers and containers)."""
    return hasattr(module, "step_mode") or callable(getattr(module, "supported_step_mode", None))


def _multi_step(module: nn.Module) -> bool:
    supported = getattr(module, "supported_step_mode", None)
    return getattr(module, "step_mode", None) == "m" or (
        callable(supported) and tuple(supported()) == ("m",))


def points(model: nn.Module) -> dict[str, Point]:
    """{block name: its Point} of a model converted to dfa_blocks ({} for any other)."""
    from biograd.rules.dfa import KEY

    source = model.__dict__.get(KEY)
    return {} if source is None else {p.name: p for p in source.points}


@register
@dataclass(frozen=True)
class DFABlocks(Rule):
    """Backprop inside blocks, B e at each block's output, nothing between blocks.

    Args:
        blocks: "auto" (torchvision's ResNet and ViT blocks, timm's ViT blocks, biograd's
            resnet_small blocks), or comma-separated fnmatch patterns on qualified module
            names ("layer*.?"); outermost matches only.
    """

    blocks: str = option("auto", pattern=r"auto|[^,\s]+(,[^,\s]+)*",
                         means="'auto' or comma-separated module-name patterns, no spaces, "
                               "like 'layer*.?,head'")

    name = "dfa_blocks"
    aliases = ("dfa_macro", "dfa_between_blocks")
    summary = ("B = W inside each block; at each block's output the gradient from above is "
               "replaced by B·e (TinyDFA's macro placement)")
    transports_weights = True
    reads_output = True
    every_model = False
    transport_why = "backprop inside (or around) the dfa blocks"
    order = 90
    compile_note = ("dfa_blocks replaces each block's output gradient by the projected output "
                    "error, which exists only once the backward has begun: torch.compile "
                    "breaks the graph at every block (the gradients stay right)")

    def bind(self, layer) -> Feedback:
        return Feedback(make=lambda w: w)  # B = W (the layer runs torch's own op)

    def check(self, model: nn.Module) -> None:
        find_blocks(model, self.blocks)

    def prepare(self, model: nn.Module, source: ErrorSource, seed: int) -> None:
        """A Point at each block that holds a layer on dfa_blocks (one per block, whatever
        the rules asking for it); its seed comes from its layers' (see Point.seed), which
        `seed` gave them."""
        taken = {p.name for p in source.points}
        for name in find_blocks(model, self.blocks):
            block = model.get_submodule(name)
            layers = [m for m in block.modules() if _rule_of(m) is not None]
            if name in taken or not any(isinstance(m.learning_rule, DFABlocks) for m in layers):
                continue
            source.points.append(Point(source, name, block, layers))
            taken.add(name)
