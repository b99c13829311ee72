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
losses, RetinaNet's heads, snntorch's (spikes, membrane)) names the module whose output holds
ŷ, and which tensor of that output it is, with `error_source`. There is one e per forward of
the model: every call of a layer within that forward sends B e, at every time step of a
spiking network that loops over time inside its forward (`error_source`'s time_dim: e summed
over the steps of a record (T, N, K)); a layer that sees T steps folded into its batch
(spikingjelly's multi-step mode, inside `folded_steps`) sends B e to each.

This file also holds what the other rules that read the model's output share: the hooks and
the table (`ErrorSource`), the projection δx = B s of a signal s (N, K) (`Projection`, whose
subclass chooses s: dfa the error, drtp the targets that `biograd.targets` gives), and the
wiring `convert` runs after converting (`wire`: the source, and dfa_blocks' points).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, fields, is_dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

import biograd.nn.functional as functional  # (partly imported here: read at call time)
from biograd._seed import generator, mix
from biograd.rules.base import Feedback, Rule, register

TABLE_SEED = mix("biograd", "dfa", "table")
CHUNK = 1 << 18  # the table is drawn in chunks of this many numbers: it can grow, unchanged
OFFSETS = 1 << 20  # a window of n numbers starts at its seed mod min(OFFSETS, n)
KEY = "_biograd_error_source"  # where a converted model keeps its ErrorSource (its __dict__)

#: Which tensor of the source module's output is ŷ: None (the output is ŷ), an index or key
#: into a tuple, list or dict output, or a function of the output that returns one of its
#: tensors.
Pick = int | str | Callable[[Any], Tensor] | None

#: T where the layers running now see T time steps in their input's leading dimensions, time
#: first: folded into the batch (T·N, ...) or not (T, N, ...), spikingjelly's multi-step
#: convention; 1 elsewhere. Set by a module that folds time, for the length of its forward
#: (`folded_steps`); read when a dfa or drtp layer binds its feedback.
STEPS: ContextVar[int] = ContextVar("biograd_folded_steps", default=1)


@contextmanager
def folded_steps(steps: int) -> Iterator[None]:
    """Within this block, the layers' inputs hold `steps` time steps, time first ((T·N, ...)
    or (T, N, ...)): a dfa or drtp layer sends each step's rows B s of its sample's s."""
    token = STEPS.set(steps)
    try:
        yield
    finally:
        STEPS.reset(token)


def per_sample(shape: torch.Size | tuple[int, ...], n: int,
               steps: int = 1) -> tuple[int, ...] | None:
    """(n, *one sample's shape) of an input or output of `shape` that holds n samples, batch
    first, or time first with `steps` steps ((T·n, ...) or (T, n, ...)); None where it does
    not."""
    shape = tuple(shape)
    if steps > 1 and shape and shape[0] == steps * n:
        return (n, *shape[1:])
    if steps > 1 and len(shape) > 1 and shape[:2] == (steps, n):
        return (n, *shape[2:])
    return shape if shape and shape[0] == n else None


def every_step(delta: Tensor, shape: torch.Size) -> Tensor:
    """δ (n, ...) of one step, repeated over the time steps of `shape` (see `per_sample`)."""
    if delta.shape == shape:
        return delta
    steps = math.prod(shape) // max(delta.numel(), 1)
    return delta.repeat(steps, *[1] * (delta.dim() - 1)).view(shape)  # contiguous: viewable


class _Pass:
    """One forward pass in flight: the output error its backward captured, and the targets
    given for it (`biograd.targets`): as given until the output is seen, then (N, K)."""

    __slots__ = ("error", "given", "taken", "targets")

    def __init__(self, given: Tensor | None = None) -> None:
        self.error: Tensor | None = None
        self.given = given
        self.targets: Tensor | None = None
        self.taken = False  # an output that requires grad has been seen (its hook is set)


class ErrorSource:
    """Where a model's output signal is taken, and the table its B are cut from.

    One per converted model whose layers are on a rule that `reads_output` (on the model as
    `_biograd_error_source`): a forward pre-hook on the model starts a pass, which its layers'
    forwards bind to, taking the targets given since the last pass (`pending`, set by
    `biograd.targets`); a forward hook on the source module (the model itself by default)
    shapes them to (N, K) and, where a layer reads the output error (dfa, dfa_blocks' points),
    has the backward store e = ∂L/∂ŷ, summed over `time_dim` if given and reshaped to (N, K),
    for that pass (`_store_error`), ŷ being the tensor of the output that `output` picks.
    `points`: dfa_blocks' points, removed with the source.
    """

    def __init__(self, model: nn.Module, source: str = "", output: Pick = None,
                 time_dim: int | None = None) -> None:
        module = _module(model, source)  # a wrong name fails before any hook is set
        _check_pick(output, time_dim)
        self.current: _Pass | None = None
        self.pending: Tensor | None = None
        self.wants_targets = False  # a layer on a rule that projects the targets (drtp)
        self.wants_error = False  # a layer on a rule that projects the error (dfa)
        self.points: list[Any] = []
        self.tables: dict[tuple[torch.device, torch.dtype], Tensor] = {}
        self.source, self.output, self.time_dim = source, output, time_dim
        self.handles = [model.register_forward_pre_hook(self.start),
                        module.register_forward_hook(self.capture)]

    @property
    def where(self) -> tuple[str, Pick, int | None]:
        """(module name, output, time_dim): what `error_source` was given."""
        return self.source, self.output, self.time_dim

    def __getstate__(self) -> dict[str, Any]:
        """Pickled and deep-copied without its table (derived, and 807 MB for ResNet-18 at
        224² with 1,000 classes), the pass in flight or targets not yet taken."""
        return {**self.__dict__, "tables": {}, "current": None, "pending": None}

    def start(self, module: nn.Module, args: Any) -> None:
        self.current, self.pending = _Pass(self.pending), None

    def capture(self, module: nn.Module, args: Any, output: Any) -> None:
        y = output if self.output is None and isinstance(output, Tensor) else self.pick(output)
        current = self.current
        if self.time_dim is not None or (current is not None and current.given is not None):
            shape = self.sample_shape(y)  # (checks time_dim)
            if current is not None and current.given is not None:
                current.targets, current.given = _as_targets(current.given, shape, y), None
        if y.requires_grad and current is not None:
            if current.taken:
                raise RuntimeError(
                    f"dfa, drtp and dfa_blocks take one output error per forward of the model, "
                    f"but {self._named()} ran again within one forward (a loop over time "
                    f"steps?): take ŷ where the steps meet, at the model's output, e.g. "
                    f"biograd.error_source(model, output=1, time_dim=0) for a net returning "
                    f"(spikes, membrane) records stacked over time, (T, N, K)")
            current.taken = True
            if self.wants_error or self.points:  # (drtp alone reads no error)
                _store_error(y, current, self.time_dim)

    def _named(self) -> str:
        return f"its module {self.source!r}" if self.source else "the model"

    def pick(self, output: Any) -> Tensor:
        """ŷ: the tensor of the source module's output that `output` names."""
        chosen = self.output
        if chosen is None:
            y = output
        elif callable(chosen):
            y = chosen(output)
        else:
            try:
                y = output[chosen]
            except (TypeError, IndexError, KeyError):
                raise TypeError(
                    f"error_source: output={chosen!r} picks nothing from the output of "
                    f"{self._named()}, a {type(output).__name__}: give the index or key of ŷ "
                    f"in it, or a function of the output that returns ŷ") from None
        if not isinstance(y, Tensor):
            what = f"which returned {type(y).__name__}" if chosen is None else \
                f"where output={chosen!r} picks {type(y).__name__}"
            raise TypeError(
                f"dfa, drtp and dfa_blocks take their signal at the output of {self._named()}, "
                f"{what}, not one tensor: name the module whose "
                f"output holds ŷ, and which tensor it is, with biograd.error_source(model, "
                f"'head.classifier') or biograd.error_source(model, output=1) (a tuple such as "
                f"snntorch's (spikes, membrane))")
        held = list(_tensors(output)) if callable(chosen) else [y]  # []: a kind not walked
        if held and not any(t is y for t in held):
            raise TypeError(
                f"error_source: the function given as output returned a tensor that the "
                f"output of {self._named()} does not hold (a new one, such as out[1].sum(0)), "
                f"which the loss's backward never passes through: return a tensor of the "
                f"output itself (lambda out: out[1]), and give time_dim for a record stacked "
                f"over time")
        return y

    def sample_shape(self, y: Tensor) -> tuple[int, ...]:
        """ŷ's shape without its time dimension: (N, ...), the shape of e."""
        if self.time_dim is None:
            return tuple(y.shape)
        if not -y.dim() <= self.time_dim < y.dim() or y.dim() < 2:
            raise ValueError(
                f"error_source: time_dim={self.time_dim}, but ŷ at the output of "
                f"{self._named()} has shape {tuple(y.shape)}: give the dimension that counts "
                f"time steps (0 for a record stacked over time, (T, N, K)), beside the batch")
        shape = list(y.shape)
        del shape[self.time_dim]
        return tuple(shape)

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

    def clear_points(self) -> None:
        """Remove dfa_blocks' points (their hooks)."""
        for point in self.points:
            point.remove()
        self.points = []

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []
        self.clear_points()
        self.tables.clear()


def _store_error(y: Tensor, run: _Pass, time_dim: int | None) -> None:
    """Have the backward put e = ∂L/∂ŷ, (N, K), on `run` when it passes ŷ: summed over
    `time_dim` if given, flattened per sample, contiguous (the error of a sum or mean is an
    expanded view, strides 0, which every layer's product B e would otherwise copy)."""
    shape, dtype, device = y.shape, y.dtype, y.device

    def store(grad: Tensor | None) -> None:  # None: an undefined gradient, e = 0
        if grad is None:
            grad = torch.zeros(shape, dtype=dtype, device=device)
        elif grad.requires_grad:  # a backward with create_graph
            grad = grad.detach()
        if time_dim is not None:
            grad = grad.sum(time_dim)
        if grad.dim() != 2:
            grad = grad.reshape(grad.shape[0], math.prod(grad.shape[1:]))
        if not grad.is_contiguous():
            grad = grad.contiguous()
        run.error = grad

    node = y.grad_fn
    if node is None:  # ŷ a leaf
        y.register_hook(store)
        return
    # ŷ the output of a layer on dfa or drtp (a classifier): its own backward stores e, where
    # a hook on its node would cost more than the layer's Function (set at every forward,
    # called in every backward); else a hook on ŷ's node, not the tensor (Tensor.register_hook's
    # Python, its handle and dict, is host time on every forward)
    if time_dim is None and functional.keep_error_at(node, store):
        return
    index = y.output_nr
    node.register_prehook(lambda grads: store(grads[index]))


def _as_targets(y: Tensor, shape: tuple[int, ...], output: Tensor) -> Tensor:
    """The targets y as (N, K) in the output's dtype and on its device: class indices (N,)
    one-hot over K = the output's size per sample, float targets (N, K) (or of the output's
    `shape`, without its time dimension) as they are. A ValueError where they do not fit."""
    n, k = shape[0], math.prod(shape[1:])
    y = y.detach().to(output.device)
    if y.dim() == 1 and not y.is_floating_point() and y.shape[0] == n:
        # compared, not scattered: no device sync and no device-side assert; an index
        # outside [0, K) gives a zero row, which the loss's own check reports
        return (y[:, None] == torch.arange(k, device=y.device)).to(output.dtype)
    if y.is_floating_point() and tuple(y.shape) in ((n, k), shape):
        return y.reshape(n, k).to(output.dtype)
    raise ValueError(
        f"biograd.targets: y has shape {tuple(y.shape)} ({y.dtype}), but the model's output "
        f"has shape {shape}: give class indices of shape ({n},) or float targets of shape "
        f"({n}, {k}), for the batch of that forward")


def _tensors(output: Any, depth: int = 4) -> Iterator[Tensor]:
    """The tensors an output holds: itself, or in its tuples, lists, dicts and dataclasses."""
    if isinstance(output, Tensor):
        yield output
    elif depth:
        if isinstance(output, dict):
            items = output.values()
        elif isinstance(output, (tuple, list)):
            items = output
        elif is_dataclass(output) and not isinstance(output, type):
            items = [getattr(output, f.name) for f in fields(output)]
        else:
            items = []
        for item in items:
            yield from _tensors(item, depth - 1)


def _check_pick(output: object, time_dim: object) -> None:
    """TypeError, saying what each takes, for error_source's output and time_dim."""
    if output is not None and not callable(output) and (
            isinstance(output, bool) or not isinstance(output, (int, str))):
        raise TypeError(f"error_source: output is an index or key into the module's output, "
                        f"or a function of the output that returns ŷ, not {output!r}")
    if time_dim is not None and (isinstance(time_dim, bool) or not isinstance(time_dim, int)):
        raise TypeError(f"error_source: time_dim is the dimension of ŷ that counts time steps "
                        f"(an int), not {time_dim!r}")


def _module(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n][:8]
        raise ValueError(f"error_source: the model has no module {name!r} (it has "
                         f"{', '.join(names)}, ...)") from None


def _rule_of(module: nn.Module) -> Rule | None:
    rule = getattr(module, "learning_rule", None)
    return rule if isinstance(rule, Rule) else None


def error_source(model: nn.Module, name: str = "", output: Pick = None,
                 time_dim: int | None = None) -> ErrorSource:
    """Take the output signal of `model`'s dfa, drtp and dfa_blocks layers at the output of
    its module `name` ("" the model itself, the default). Returns the model's ErrorSource
    (made if it has none).

    Args:
        name: the module whose output holds ŷ; it runs once per forward of the model (a
            module called at every step of a loop over time has no one ŷ: a RuntimeError at
            its second call says to take ŷ at the model's output).
        output: which tensor of that output is ŷ: None (the output is one tensor), an index
            or key into a tuple, list or dict output (1: the membrane of snntorch's
            Leaky(output=True), (spk, mem)), or a function of the output that returns one of
            its tensors (lambda out: out.logits); not a new tensor computed from them, which
            the loss's backward would never pass through (a TypeError says so).
        time_dim: the dimension of ŷ that counts time steps, for a record stacked over time
            (0 for snntorch's torch.stack(mem_rec), (T, N, K)): e = Σ_t ∂L/∂ŷ_t, the error
            of a shift of ŷ at every step (for a loss on the mean over time, a rate, exactly
            its error; on the sum, T times it). None: ŷ's first dimension is the batch.

    e = ∂L/∂ŷ is flattened to (N, K) per sample, one per forward of the model, and every
    call of a layer in that forward, at every time step, sends B e.

        biograd.convert(model, "dfa")
        biograd.error_source(model, "head.classification_head")
        biograd.error_source(snn_model, output=1, time_dim=0)   # (spk_rec, mem_rec)
    """
    found = model.__dict__.get(KEY)
    if found is None or found.where != (name, output, time_dim):
        _module(model, name)  # a wrong name or choice leaves the model as it was
        _check_pick(output, time_dim)
        points = []
        if found is not None:  # dfa_blocks' points move to the new source
            points, found.points = found.points, []
            found.remove()
        found = ErrorSource(model, name, output, time_dim)
        for point in points:
            point.source = found
        found.points = points
        model.__dict__[KEY] = found
    direct = [m for m in model.modules() if (r := _rule_of(m)) is not None and r.direct]
    for layer in direct:  # layers converted since the source was made too
        layer.__dict__["error_source"] = found
    # (getattr: a direct rule of the user's own need not be a Projection)
    found.wants_targets = any(getattr(m.learning_rule, "wants_targets", False) for m in direct)
    found.wants_error = any(getattr(m.learning_rule, "wants_error", False) for m in direct)
    return found


def release(model: nn.Module) -> None:
    """Remove `model`'s error source, its hooks and points, if it has one."""
    found = model.__dict__.pop(KEY, None)
    if found is not None:
        found.remove()
    for layer in model.modules():
        layer.__dict__.pop("error_source", None)
        layer.__dict__.pop("_cached_projection", None)  # it holds the table


def wire(model: nn.Module, seed: int) -> None:
    """Give `model` what the rules of its converted layers need beyond the layers (`convert`
    calls this after converting): an ErrorSource where one rule `reads_output` (its source
    module kept), each distinct rule's `prepare` (dfa_blocks' points, made anew from `seed`,
    the run's); where none does, or nothing reads the source (dfa_blocks with no block: a
    bare layer), no source, hooks or points."""
    rules = {r for m in model.modules() if (r := _rule_of(m)) is not None}
    if any(rule.reads_output for rule in rules):
        found = model.__dict__.get(KEY)
        source = error_source(model, *(found.where if found is not None else ("",)))
        source.clear_points()
        for rule in sorted(rules, key=str):
            rule.prepare(model, source, seed)
        if source.points or any(rule.direct for rule in rules):
            return
    release(model)


def _source_of(layer: nn.Module, rule: Rule) -> ErrorSource:
    found = layer.__dict__.get("error_source")
    if found is None:
        raise RuntimeError(
            f"{type(layer).__name__} on {rule.name} has no model output to take its signal "
            f"from: convert the whole model with biograd.convert(model, {rule.name!r}), which "
            f"hooks the model's output")
    return found


def window(source: ErrorSource, seed: int, k: int, d: int, device: torch.device,
           dtype: torch.dtype) -> Tensor:
    """√d B (k, d), the window of the table that `seed` picks: k·d numbers from an offset
    seed mod min(OFFSETS, k·d). Not yet scaled."""
    start = seed % min(OFFSETS, k * d)
    table = source.table(start + k * d, device, dtype)
    return table[start : start + k * d].view(k, d)


def project(source: ErrorSource, seed: int, s: Tensor, shape: torch.Size) -> Tensor:
    """B s reshaped to `shape` (N, ...): the signal s (N, K) through B (K, d) = the window of
    `seed` scaled by 1/√d, d = prod(shape[1:]); in s's dtype, zeros for an empty batch or
    input."""
    d = math.prod(shape[1:])
    if s.numel() == 0 or d == 0:
        return s.new_zeros(shape)
    b = window(source, seed, s.shape[1], d, s.device, s.dtype)
    # one addmm, the scale its alpha (beta 0: the zero is not read), in place of s @ b and a
    # mul_: one op fewer per layer (a scaled copy of each window, for one mm, made ResNet-18's
    # backward slower: docs/performance.md)
    return torch.addmm(_zero(s.device, s.dtype), s, b, beta=0,
                       alpha=1.0 / math.sqrt(d)).view(shape)


@functools.lru_cache(maxsize=64)
def _zero(device: torch.device, dtype: torch.dtype) -> Tensor:
    """A 0-d zero on `device` in `dtype`, made once: the input `project`'s addmm ignores."""
    return torch.zeros((), device=device, dtype=dtype)


def _project(layer: nn.Module, rule: Projection, source: ErrorSource | None,
             run: _Pass | None, shape: torch.Size, steps: int = 1) -> Tensor:
    """δx = B s for the input x of `shape` (N, ...): s, the rule's signal of the pass `run`;
    with `steps` time steps in x ((T·N, ...) or (T, N, ...)), B s of each sample at each."""
    source = _source_of(layer, rule) if source is None else source
    if run is None:
        raise RuntimeError(f"{type(layer).__name__} on {rule.name} ran outside a forward of the "
                           f"model it was converted in: call the model, not the layer alone")
    s = rule.signal(layer, run)
    # What the last call worked out for this input shape, signal shape, seed and table: the
    # window of B, its scale, x's shape per sample (None: the product's own), so that every
    # call after the first skips the checks and the window's cut (host time per layer, in the
    # backward). Eager only; dropped from copies (`_cached_`) and by `release`, and cut anew
    # where the table grew.
    key = (shape, s.shape, steps, layer.feedback_seed)
    if not torch.compiler.is_compiling():
        delta = reuse(layer.__dict__.get("_cached_projection"), key, source, s)
        if delta is not None:
            return every_step(delta, shape)
    one = per_sample(shape, s.shape[0], steps)
    if one is None:
        raise RuntimeError(
            f"{type(layer).__name__} on {rule.name}: its input has shape {tuple(shape)}, but "
            f"the model's output has {s.shape[0]} samples: {rule.name} needs the batch first "
            f"in every layer's input (batch_first=True for attention; time first, (T, N, ...), "
            f"only in spikingjelly's multi-step layers and containers)")
    d = math.prod(one[1:])
    if not (s.numel() and d):
        return every_step(project(source, layer.feedback_seed, s, torch.Size(one)), shape)
    layer.__dict__["feedback_shape"] = (s.shape[1], *one[1:])
    one = torch.Size(one)
    b = window(source, layer.feedback_seed, s.shape[1], d, s.device, s.dtype)
    if not torch.compiler.is_compiling():
        as_is = one == shape and len(one) == 2  # the product (N, d) is δx itself
        layer.__dict__["_cached_projection"] = kept(source, key, s, b, None if as_is else one)
    return every_step(project(source, layer.feedback_seed, s, one), shape)


def kept(source: ErrorSource, key: tuple, s: Tensor, b: Tensor,
         one: torch.Size | None) -> tuple:
    """What a projection keeps for `reuse`: the table B was cut from, `key` (what it was
    worked out for), and the addmm's inputs: B (K, d) unscaled, its scale 1/√d, and the
    shape per sample to view the product as (None: as it is)."""
    return (source.tables[(s.device, s.dtype)], key,
            (_zero(s.device, s.dtype), b, 1.0 / math.sqrt(b.shape[1]), one))


def reuse(held: tuple | None, key: tuple, source: ErrorSource, s: Tensor) -> Tensor | None:
    """B s from `held` (what `kept` made), if it was made for `key` from the source's table as
    it is (one that grew is a new tensor); else None. Skips the checks and the window's cut:
    host time per layer (dfa, drtp) or block (dfa_blocks) in every backward."""
    if held is None or held[1] != key or held[0] is not source.tables.get((s.device, s.dtype)):
        return None
    zero, b, alpha, one = held[2]
    delta = torch.addmm(zero, s, b, beta=0, alpha=alpha)
    return delta if one is None else delta.view(one)


@dataclass(frozen=True)
class Projection(Rule):
    """The rules whose layers send down δx = B s: a signal s (N, K) taken at the model's
    output, through a fixed random B (K, *x's shape per sample) cut from the shared table; no
    error passes through any weight. A subclass chooses s with `signal` (dfa: the error,
    drtp: the targets)."""

    direct = True
    reads_output = True
    #: True where s is the targets `biograd.targets` gives (the model's source then keeps them)
    wants_targets: ClassVar[bool] = False
    #: True where s is the output error (the model's source then takes it in each backward)
    wants_error: ClassVar[bool] = False

    def signal(self, layer, run: _Pass) -> Tensor:
        """s (N, K) of the forward pass `run`; a RuntimeError saying what to do if it has none."""
        raise NotImplementedError

    def bind(self, layer) -> Feedback:
        source = layer.__dict__.get("error_source")
        run = None if source is None else source.current
        steps = STEPS.get()
        return Feedback(make=None,
                        direct=lambda shape: _project(layer, self, source, run, shape, steps))

    def feedback_weight(self, layer) -> Tensor:
        """B (K, *the layer's input per sample) as the latest backward used it."""
        shape = layer.__dict__.get("feedback_shape")
        if shape is None:
            raise RuntimeError(f"{type(layer).__name__} on {self.name}: B's shape comes from the "
                               f"model's output and the layer's input: run a forward and "
                               f"backward first")
        w = layer.weight_now()
        d = math.prod(shape[1:])
        b = window(_source_of(layer, self), layer.feedback_seed, shape[0], d, w.device, w.dtype)
        return b.mul(1.0 / math.sqrt(d)).view(shape)


@register
@dataclass(frozen=True)
class DFA(Projection):
    """δx = B e: the output error through a fixed random B, no error through the weights."""

    name = "dfa"
    aliases = ("direct_feedback_alignment",)
    summary = "δx = B·e, the output error e through a fixed random B (Nøkland 2016)"
    order = 80
    compile_note = ("dfa's backward reads the output error, which exists only once the "
                    "backward has begun: torch.compile cannot trace it ahead and breaks the "
                    "graph at every dfa layer (the gradients stay right; the speed-up is small)")

    wants_error = True

    def setup(self, layer, generator: torch.Generator) -> None:
        source = layer.__dict__.get("error_source")  # a layer of the model switched to dfa
        if source is not None:
            source.wants_error = True

    def signal(self, layer, run: _Pass) -> Tensor:
        """e = ∂L/∂ŷ (N, K), taken when the backward passed the model's output."""
        if run.error is None:
            raise RuntimeError(
                f"{type(layer).__name__} on dfa: the backward reached this layer before the "
                f"output error was taken: the loss must be computed from the output of the "
                f"model it was converted in (or of its biograd.error_source), not modified in "
                f"place")
        return run.error
