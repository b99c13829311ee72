"""Model surgery that removes weight sharing: every Conv2d becomes a LocallyConnected2d.

    model = torchvision.models.resnet18(num_classes=10)
    biograd.unshare(model, torch.randn(1, 3, 32, 32))   # same function, a kernel per position
    biograd.convert(model, "ss")                         # then any rule, as for any model

A locally connected layer needs its input size, so the model is run once on an example input
to learn each convolution's. The unshared model starts computing the convolutional one's
function (each position starts with the convolution's kernel and bias); parameters grow by
about the number of output positions of each layer: `unshared_bytes` says how much before
anything is allocated.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from biograd.convert import Patterns, _matches, _swap, _walk
from biograd.dale import DALE_SIGN
from biograd.nn.local import LocallyConnected2d, output_size, unsharable
from biograd.rules.dfa import error_source

log = logging.getLogger("biograd")


def unshare(model: nn.Module, example_input: Any, include: Patterns = None,
            exclude: Patterns = None) -> nn.Module:
    """Replace every nn.Conv2d of `model` (biograd's Conv2d too, keeping its rule and seed)
    by a LocallyConnected2d holding the convolution's kernel and bias at every position, in
    place; returns the model (a bare Conv2d comes back as a new module).

    Args:
        model: any nn.Module.
        example_input: what the model is called with once (a tuple: several arguments), in
            eval mode and without gradients, to learn each convolution's input size; the
            unshared model takes inputs of that spatial size only.
        include, exclude: fnmatch patterns on qualified module names, as `biograd.convert`'s.

    Raises ValueError, naming the layer, for a convolution with no locally connected form
    here (groups, non-zero padding modes, uneven 'same' padding, a parametrised weight) or
    used at two input sizes: exclude it. A convolution the example input does not reach is
    left as it is. Build the optimiser after unsharing: the parameters are new.
    """
    sizes = _input_sizes(model, example_input, include, exclude)
    before = _count(model)
    new = {}
    for name, conv, size in sizes:
        try:
            layer = new[id(conv)] = LocallyConnected2d.from_conv(conv, size)
        except ValueError as err:
            raise ValueError(f"{name or type(conv).__name__}: {err}") from None
        if DALE_SIGN in conv._buffers:  # (C_in,) both: the channels keep their Dale signs
            layer.register_buffer(DALE_SIGN, conv._buffers[DALE_SIGN].clone())
    model = _swap(model, new)
    found = model.__dict__.get("_biograd_error_source")
    if found is not None:  # the new layers on dfa take the model's output error too
        error_source(model, *found.where)
    log.info("biograd: unshared %d Conv2d layers: %s parameters before, %s after (x%.1f)",
             len(new), f"{before:,}", f"{_count(model):,}", _count(model) / max(before, 1))
    return model


def unshared_bytes(model: nn.Module, example_input: Any, include: Patterns = None,
                   exclude: Patterns = None) -> dict[str, int]:
    """{layer name: bytes of the weight and bias its LocallyConnected2d would hold}, for the
    convolutions `unshare` would replace, computed from shapes (nothing is allocated but one
    forward pass of `model`). Training adds as much again for the gradients, again per
    optimiser state (SGD momentum, Adam's two), and once more for fa, frsf, brsf, sign_fixed,
    kp and wm's B."""
    out = {}
    for name, conv, size in _input_sizes(model, example_input, include, exclude):
        try:
            h, w = output_size(size, conv.kernel_size, conv.stride, unsharable(conv),
                               conv.dilation)
        except ValueError as err:
            raise ValueError(f"{name or type(conv).__name__}: {err}") from None
        numel = h * w * (conv.weight.numel() + (conv.out_channels if conv.bias is not None
                                                else 0))
        out[name] = numel * conv.weight.element_size()
    return out


def _convolutions(model: nn.Module, include: Patterns,
                  exclude: Patterns) -> Iterator[tuple[str, nn.Conv2d]]:
    """(name, module) of every Conv2d to unshare, each module once, under its first name."""
    seen = set()
    for name, module, why in _walk(model):
        if (why is not None or not isinstance(module, nn.Conv2d) or id(module) in seen
                or (include is not None and not _matches(name, include))
                or _matches(name, exclude)):
            continue
        seen.add(id(module))
        yield name, module


def _input_sizes(model: nn.Module, example_input: Any, include: Patterns,
                 exclude: Patterns) -> list[tuple[str, nn.Conv2d, tuple[int, int]]]:
    """(name, conv, (H, W) of its input) for the convolutions to unshare that the example
    input reaches, from one forward pass in eval mode, without gradients; every module's mode
    is restored afterwards. ValueError for a convolution that meets two input sizes."""
    convs = dict(_convolutions(model, include, exclude))
    seen: dict[str, tuple[int, int]] = {}

    def hook(name: str):
        def record(module: nn.Module, args: tuple) -> None:
            size = tuple(args[0].shape[-2:])
            if seen.setdefault(name, size) != size:
                raise ValueError(f"{name or type(module).__name__}: called on inputs of sizes "
                                 f"{seen[name]} and {size}; a locally connected layer takes "
                                 f"one size: exclude it")
        return record

    modes = [(m, m.training) for m in model.modules()]
    handles = [conv.register_forward_pre_hook(hook(name)) for name, conv in convs.items()]
    try:
        model.eval()
        with torch.no_grad():
            model(*example_input) if isinstance(example_input, tuple) else model(example_input)
    finally:
        for handle in handles:
            handle.remove()
        for module, mode in modes:
            module.training = mode
    missed = [name for name in convs if name not in seen]
    if missed:
        log.info("biograd: unshare left %d Conv2d layers the example input does not reach: %s",
                 len(missed), ", ".join(missed))
    return [(name, conv, seen[name]) for name, conv in convs.items() if name in seen]


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
