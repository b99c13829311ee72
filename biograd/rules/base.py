"""The learning-rule interface, the registry, and the feedback initialisers the rules share.

A rule decides one thing: the matrix B that a layer's backward sends errors through,
δx = Bᵀ δy, and how B's state is kept and updated. The forward pass and the weight and bias
gradients are always torch's own.
"""

from __future__ import annotations

import functools
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import torch
from torch import Tensor

from biograd._check import problem
from biograd._names import name_key

if TYPE_CHECKING:
    from torch import nn

    from biograd.nn.layers import FeedbackLayer
    from biograd.rules.dfa import ErrorSource


class Feedback(NamedTuple):
    """What one forward pass hands to the backward: how B is got (one of `fixed`,
    `magnitude`, `make`; or, for a direct rule, `direct`), and what a learned B needs.

    make: W -> B, called in the backward, only when the input gradient is needed, so a rule
        that derives B from W keeps no tensor between forward and backward.
    learned: a Parameter B that learns through its .grad: exactly W's gradient (kp), or
        `align`'s, or None.
    direct: for a rule whose input gradient is not Bᵀδy but a projection of a signal taken at
        the model's output (dfa: the error, drtp: the targets): shape of x -> δx, called in
        the backward in place of `make` (then None).
    align: for a learned B with a local rule of its own (the alignment family): (map, W, B,
        W's gradient or None) -> B's gradient, called in the backward with `map`, the layer's
        linear map on the input the forward saw (biograd.nn.functional.LinearMap and kin).
    fixed: B itself, where it does not depend on W (fa, kp, wm, sign_fixed): read as it is.
    magnitude: B = copysign(magnitude, W), W's signs with these magnitudes (ss: s, a 0-d
        tensor in W's dtype; frsf and brsf: |M|, W's shape), made in the backward.
    The two last are what `make` would do, given as data: the backward then makes B with no
    Python call, a bind with no closure (host time per layer per step).
    """

    make: Callable[[Tensor], Tensor] | None = None
    learned: Tensor | None = None
    direct: Callable[[torch.Size], Tensor] | None = None
    align: Callable[[Any, Tensor, Tensor, Tensor | None], Tensor] | None = None
    fixed: Tensor | None = None
    magnitude: Tensor | None = None

    def of(self, weight: Tensor) -> Tensor:
        """B for the forward weight W, as the backward makes it (not for a direct rule)."""
        if self.fixed is not None:
            return self.fixed
        if self.magnitude is not None:
            return torch.copysign(self.magnitude, weight)
        return self.make(weight)


def option(default: Any, *, choices: tuple[str, ...] | None = None,
           low: float | None = None, high: float | None = None,
           above: float | None = None, pattern: str | None = None,
           means: str | None = None) -> Any:
    """A rule option (a dataclass field) with what it accepts: `choices`, or numbers in
    [low, high] (`above`: strictly greater), or strings matching the regular expression
    `pattern` whole (`means`: what that is, in words). The type is the field's annotation."""
    return field(default=default, metadata={"choices": choices, "low": low, "high": high,
                                            "above": above, "pattern": pattern,
                                            "means": means})


@dataclass(frozen=True)
class Rule:
    """Base class of the learning rules; subclasses are small frozen dataclasses.

    Class attributes:
        name: the registry name; aliases: other accepted names; summary: one line for docs.
        state: names of the buffers and parameters the rule registers on a layer.
        transports_weights: True only for bp, whose layers run torch's own op unchanged.
        order: position in `list_rules()`.
        compile_note: why torch.compile does not suit the rule ("" where it does); the
            training loop logs it as a warning under --compile.
        writes_weight: True for a rule that writes W between steps (sign_fixed holds its
            signs); the converter leaves a parametrised W, which no one can write, alone.
        direct: True for a rule whose layers' input gradient is a projection of a signal
            taken at the model's output (dfa: the error, drtp: the targets) rather than Bᵀδy:
            the identities on Bᵀδy do not apply to it, and W and B need not have one shape.
        reads_output: True for a rule that takes a signal at the model's output (dfa, drtp,
            dfa_blocks): `convert` hooks the model for it (biograd.rules.dfa.ErrorSource),
            weight angles leave its layers out (their B is not what the rule sends down), and
            detection, whose output is every anchor's, refuses it.
        every_model: False for a rule that some models cannot take (dfa_blocks needs blocks):
            `check` says why, and `biograd compare` with no --rules leaves it out of a model
            that cannot take it.
        transport_why: why a layer on a rule with transports_weights still learns through
            weight transport, as the conversion report says it.
        compared: False for a rule `biograd compare` leaves out when given no --rules: a
            family to compose (alignment, whose defaults learn nothing).
    """

    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    summary: ClassVar[str] = ""
    state: ClassVar[tuple[str, ...]] = ()
    transports_weights: ClassVar[bool] = False
    order: ClassVar[int] = 100
    compile_note: ClassVar[str] = ""
    writes_weight: ClassVar[bool] = False
    direct: ClassVar[bool] = False
    reads_output: ClassVar[bool] = False
    every_model: ClassVar[bool] = True
    transport_why: ClassVar[str] = "on bp"
    compared: ClassVar[bool] = True

    def __post_init__(self) -> None:
        """Every option checked at construction: a ValueError names what it accepts."""
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            value = getattr(self, f.name)
            wrong = problem(hints[f.name], f.metadata, value)
            if wrong:
                raise ValueError(f"{self.name} {f.name}={value!r}: {wrong}")

    def __str__(self) -> str:
        """The name, with the options that differ from their defaults: "wm(samples=128)"."""
        changed = [
            f"{f.name}={getattr(self, f.name)!r}"
            for f in fields(self)
            if getattr(self, f.name) != f.default
        ]
        return f"{self.name}({', '.join(changed)})" if changed else self.name

    def setup(self, layer: FeedbackLayer, generator: torch.Generator) -> None:
        """Register this rule's state on `layer`; random draws come from `generator` (CPU)."""

    def check(self, model: nn.Module) -> None:
        """Raise ValueError, saying what to do, where this rule cannot run on `model`; called
        by `convert` before it changes anything (dfa_blocks: a model with no blocks)."""

    def prepare(self, model: nn.Module, source: ErrorSource, seed: int) -> None:
        """What this rule puts on `model` beyond its layers, given the model's ErrorSource
        (for a rule that `reads_output`) and the run's seed; called by `convert` once per
        distinct rule on the model's layers, after converting (dfa_blocks: its points)."""

    def bind(self, layer: FeedbackLayer) -> Feedback:
        """Called at every forward pass: how the backward will get its B."""
        raise NotImplementedError

    def after_step(self, layer: FeedbackLayer) -> None:
        """Called once after each optimiser step (see `biograd.after_step`)."""

    def after_steps(self, layers: list[FeedbackLayer]) -> None:
        """`after_step` for every layer of a model on this rule at once (`biograd.after_step`
        calls this): by default each layer in turn; a rule whose work is the same few tensor
        ops on every layer runs them once over all of them (torch._foreach_*), not a Python
        call and its ops per layer per step."""
        for layer in layers:
            self.after_step(layer)

    def weight_decays(self, layer: FeedbackLayer) -> dict[str, float]:
        """{parameter name: weight decay} for the layer's parameters whose weight decay the
        rule sets itself (kp's `decay`; an aligning B's 0), for `biograd.weight_decay_groups`;
        the others take the optimiser's."""
        return {}

    def feedback_weight(self, layer: FeedbackLayer) -> Tensor:
        """The B the backward uses (for per-step rules, the one of the latest forward pass)."""
        with torch.no_grad():
            return self.bind_current(layer).of(layer.weight_now()).detach()

    def bind_current(self, layer: FeedbackLayer) -> Feedback:
        """Like `bind`, but without advancing any per-step state."""
        return self.bind(layer)


def step_counter(layer: FeedbackLayer) -> None:
    """Give `layer` a step counter at 0 (`feedback_step`, see FeedbackLayer), for a rule that
    lists "feedback_step" in its state."""
    layer.put_state("feedback_step", torch.zeros((), dtype=torch.int64))


@functools.lru_cache(maxsize=4096)
def sign_scale(shape: torch.Size | tuple[int, ...], out_channels: int | None = None) -> float:
    """The seed's feedback magnitude s for a weight of this shape.

    Convolution (C_out, C_in/g, *k): s = sqrt(2 / (prod(k) * C_out)) (He, fan-out), C_out
    being `out_channels` where given (a transposed convolution's W is (C_in, C_out/g, *k)).
    Linear (out, in): s = 1 / sqrt(in).
    """
    if len(shape) == 2:
        return 1.0 / math.sqrt(shape[1])
    return math.sqrt(2.0 / (math.prod(shape[2:]) * (out_channels or shape[0])))


def seed_scale(layer: FeedbackLayer) -> float:
    """The seed's s for `layer`: `sign_scale` of the shape its W is scaled as
    (`FeedbackLayer.scale_shape`), with its own output channels."""
    return sign_scale(layer.scale_shape(layer.weight_now().shape),
                      getattr(layer, "out_channels", None))


#: How random and sign feedback is scaled: the seed's s, or W's own size.
SCALES = ("seed", "weight")


def scale_option() -> Any:
    """The `scale` option the rules share (see `random_feedback`)."""
    return option("seed", choices=SCALES)


def random_feedback(
    weight: Tensor,
    generator: torch.Generator,
    scale: str = "seed",
    size: tuple[int, ...] | None = None,
    s: float | None = None,
) -> Tensor:
    """A random B for `weight` (of `size`, default W's shape) on `generator`'s device.

    The result has W's dtype and lives on W's device.
    scale="seed": the seed's FA initialisation: convolution N(0, s²), linear U(-s, s), with s
        given, or by default `sign_scale` of W's shape (`seed_scale(layer)` for a layer).
    scale="weight": N(0, std(W)²), the standard deviation of W as it is now (what kept a
        RetinaNet under FA from diverging, see REFERENCE.md).
    """
    size = tuple(weight.shape) if size is None else size
    kw = {"generator": generator, "device": generator.device}
    s = sign_scale(weight.shape) if s is None else s
    if scale == "seed":
        if weight.dim() == 2:
            b = torch.rand(size, **kw).mul_(2 * s).sub_(s)
        else:
            b = torch.randn(size, **kw).mul_(s)
    elif scale == "weight":
        std = weight.detach().float().std().item() if weight.numel() > 1 else 0.0
        b = torch.randn(size, **kw).mul_(std or s)
    else:
        raise ValueError(f"unknown feedback scale {scale!r}: use 'seed' or 'weight'")
    return b.to(device=weight.device, dtype=weight.dtype)


# --- registry -------------------------------------------------------------------------------

_RULES: dict[str, type[Rule]] = {}
_NAMES: dict[str, str] = {}


def register(cls: type[Rule]) -> type[Rule]:
    """Class decorator: make a rule available by its name and aliases."""
    for key in map(name_key, (cls.name, *cls.aliases)):
        if key in _NAMES and _NAMES[key] != cls.name:
            raise ValueError(f"rule name {key!r} is already taken by {_NAMES[key]!r}")
        _NAMES[key] = cls.name
    _RULES[cls.name] = cls
    return cls


def list_rules() -> list[str]:
    """The registered rule names, in the order of the docs table."""
    return sorted(_RULES, key=lambda n: (_RULES[n].order, n))


def compared_rules() -> list[str]:
    """The rules `biograd compare` trains when given none: every registered rule that is
    `compared`, in `list_rules()` order."""
    return [name for name in list_rules() if _RULES[name].compared]


def rules_table() -> str:
    """The markdown table of the registered rules, as the README shows it."""
    lines = ["| rule | aliases | feedback B in the backward | state on the layer |",
             "| --- | --- | --- | --- |"]
    for name in list_rules():
        cls = _RULES[name]
        state = ", ".join(f"`{s}`" for s in cls().state)
        cells = [f"`{name}`", ", ".join(cls.aliases), cls.summary, state or "none"]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def rule_class(name: str) -> type[Rule]:
    """The rule class registered under `name` or one of its aliases."""
    key = name_key(name)
    if key not in _NAMES:
        raise ValueError(f"unknown rule {name!r}: choose one of {', '.join(list_rules())}")
    return _RULES[_NAMES[key]]


def get_rule(spec: str | Rule, **options: object) -> Rule:
    """A rule instance from a name (with options) or an instance (returned as is)."""
    if isinstance(spec, Rule):
        if options:
            raise ValueError("options go with a rule name, not with a rule instance")
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"a rule is a name or a biograd Rule, not {type(spec).__name__}")
    cls = rule_class(spec)
    try:
        return cls(**options)
    except TypeError as err:
        raise ValueError(f"bad options for rule {cls.name!r}: {err}") from None
