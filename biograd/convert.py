"""Model surgery: put any torchvision or timm model on a learning rule, and report what changed.

`convert` swaps every nn.Linear, nn.Conv1d/2d/3d, nn.ConvTranspose1d/2d/3d,
nn.MultiheadAttention, nn.RNN, nn.GRU, nn.LSTM and their cells (and subclasses that keep
torch's forward, and the layers of other libraries that have a drop-in of their own:
spikingjelly's) for its biograd drop-in, reusing the existing weight tensors; `unconvert` puts
them back. `report` says, for any model, which layers follow which rule and which parameters
still learn through weight transport.
"""

from __future__ import annotations

import fnmatch
import importlib
import logging
import numbers
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.parameter import is_lazy
from torch.utils.hooks import RemovableHandle

from biograd._seed import mix
from biograd.dale import DALE_SIGN, dale_buffers, dale_layers, hold_dale_
from biograd.nn.layers import DROP_INS, FeedbackLayer
from biograd.nn.per_weight import PerWeight, WeightFeedback, holders
from biograd.rules.base import Rule, get_rule
from biograd.rules.dfa import KEY, release, wire

log = logging.getLogger("biograd")

Patterns = str | Sequence[str] | None

#: Modules whose forward reads their children's weights directly (F.linear(x, child.weight)),
#: so converting those children would change nothing: they are left alone and reported.
OPAQUE = {
    # timm: with q/v biases (the default) these run F.linear(x, self.qkv.weight, qkv_bias)
    "timm.models.beit.Attention": "can read qkv's weight directly (F.linear with q/v biases)",
    "timm.models.eva.EvaAttention": "can read qkv's weight directly (F.linear with q/v biases)",
    "timm.models.swin_transformer_v2.WindowAttention": "can read qkv's weight directly (F.linear "
    "with q/v biases)",
    # not a weight read, but as final: torch.func, which biograd's layers do not support
    "spikingjelly.activation_based.layer.container.TLastSeqToANNContainer": "maps its modules "
    "over time with torch.vmap, which biograd's layers do not support (use SeqToANNContainer)",
}

#: Modules whose forward reads their children's weights directly, and the subclass (same state,
#: same outputs) that calls the children as modules instead: `convert` gives every one of them
#: that class (so their children follow the rule), `unconvert` takes it back.
REWIRED = {
    "torchvision.models.swin_transformer.ShiftedWindowAttention":
        "biograd.nn.swin:ShiftedWindowAttention",
    "torchvision.models.swin_transformer.ShiftedWindowAttentionV2":
        "biograd.nn.swin:ShiftedWindowAttentionV2",
    # modules that fold T time steps into the batch for the layers inside them: the subclass
    # tells those layers' rule (a dfa or drtp layer then projects to every step)
    "spikingjelly.activation_based.layer.container.SeqToANNContainer":
        "biograd.nn.spikingjelly:SeqToANNContainer",
    "spikingjelly.activation_based.layer.container.StepModeContainer":
        "biograd.nn.spikingjelly:StepModeContainer",
    "snntorch._neurons.linearleaky.LinearLeaky": "biograd.nn.snntorch:LinearLeaky",
}

#: Layers of other libraries with a drop-in of their own, and the module that registers it in
#: DROP_INS (imported only when such a layer is met): spikingjelly's keep its step modes.
LIBRARY_LAYERS = {
    f"spikingjelly.activation_based.layer.stateless_wrapper.{name}": "biograd.nn.spikingjelly"
    for name in ("Linear", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d",
                 "ConvTranspose3d")
}

#: Subclasses whose own forward computes exactly their torch base's, so they convert like it:
#: timm's Linear (the classifier of its MobileNetV3, GhostNet, ...) differs only under TorchScript.
SAME_FORWARD = {"timm.layers.linear.Linear"}


def _type_name(module: nn.Module) -> str:
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}"


def _drop_in(module: nn.Module) -> type[FeedbackLayer] | None:
    """The biograd class for `module`: its class's own (LIBRARY_LAYERS), or its torch base's
    if its forward is torch's own."""
    where = LIBRARY_LAYERS.get(_type_name(module))
    if where is not None:
        importlib.import_module(where)  # registers the library's classes in DROP_INS
    exact = DROP_INS.get(type(module))
    if exact is not None:
        return exact
    for base, cls in DROP_INS.items():
        if isinstance(module, base):
            if _type_name(module) in SAME_FORWARD:
                return cls
            same = type(module).forward is base.forward
            if same and hasattr(base, "_conv_forward"):
                same = type(module)._conv_forward is base._conv_forward
            return cls if same else None
    return None


def _rewire(model: nn.Module, back: bool = False) -> None:
    """Give every REWIRED module its subclass (imported only when one is found); `back`:
    give each its torch class (the subclass's `torch_class`) again."""
    for module in model.modules():
        if back:
            module.__class__ = vars(type(module)).get("torch_class", type(module))
        elif _type_name(module) in REWIRED:
            where, name = REWIRED[_type_name(module)].split(":")
            module.__class__ = getattr(importlib.import_module(where), name)


def _check_arguments(model: object, rules: object, include: object, exclude: object,
                     seed: object) -> None:
    """TypeError, saying what each takes, for convert's arguments of the wrong kind."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert takes an nn.Module, not {type(model).__name__}")
    if rules is not None and not isinstance(rules, Mapping):
        raise TypeError(f"rules maps name patterns to rules, like {{'layer4.*': 'bp'}}, not "
                        f"{type(rules).__name__}")
    for what, patterns in (("include", include), ("exclude", exclude)):
        if patterns is not None and not isinstance(patterns, str) and not (
                isinstance(patterns, Sequence) and all(isinstance(p, str) for p in patterns)):
            raise TypeError(f"{what} takes a name pattern or a list of them, like "
                            f"'layer4.*', not {patterns!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed is an integer, not {seed!r}")


def _check_patterns(names: list[str], rules: object, include: Patterns,
                    exclude: Patterns) -> None:
    """ValueError for a pattern that matches no convertible layer: a misspelt name would
    otherwise leave the model on another rule than asked, with no word."""
    given = [("rules", p) for p in (rules or {})]
    for what, patterns in (("include", include), ("exclude", exclude)):
        given += [(what, p) for p in ([patterns] if isinstance(patterns, str) else
                                      patterns or [])]
    unmatched = [(what, p) for what, p in given if not any(_matches(n, [p]) for n in names)]
    if unmatched:
        shown = ", ".join(n or "''" for n in names[:4]) + (", ..." if len(names) > 4 else "")
        raise ValueError(
            f"{', '.join(f'{what} pattern {p!r}' for what, p in unmatched)} "
            f"{'matches' if len(unmatched) == 1 else 'match'} no convertible layer: the "
            f"layers are named like {shown or 'nothing (the model has none)'} "
            f"(see model.named_modules())")


def _matches(name: str, patterns: Patterns) -> bool:
    """True if `name` or one of its ancestors ("layer1" for "layer1.0.conv1") matches."""
    if patterns is None:
        return False
    if isinstance(patterns, str):
        patterns = [patterns]
    parts = name.split(".")
    prefixes = [".".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch.fnmatchcase(p, pat) for p in prefixes for pat in patterns)


def _walk(module: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module, str | None]]:
    """(name, module, why it cannot be converted or None), not descending into opaque parents."""
    why = OPAQUE.get(_type_name(module))
    yield prefix, module, why
    for name, child in module.named_children():
        full = f"{prefix}.{name}" if prefix else name
        if why is not None:
            for sub_name, sub in child.named_modules(prefix=full):
                yield sub_name, sub, f"inside {type(module).__name__}, which {why}"
        else:
            yield from _walk(child, full)


def _computed_weight(module: nn.Module, name: str = "weight") -> bool:
    """True where W (the parameter `name`) is computed rather than held (weight_norm)."""
    return not isinstance(module._parameters.get(name), nn.Parameter)


def _convertible(model: nn.Module) -> list[tuple[str, nn.Module, type[FeedbackLayer]]]:
    """(name, module, biograd class) of every layer that can follow a rule, each module once
    (a module used twice is converted once, under its first name), in registration order. A
    layer with several weights (an LSTM) is one, its weights' rules part of it."""
    found, seen = [], set()
    for name, module, why in _walk(model):
        if why is not None or id(module) in seen or isinstance(module, WeightFeedback):
            continue
        cls = type(module) if isinstance(module, (FeedbackLayer, PerWeight)) else \
            _drop_in(module)
        if cls is not None:
            seen.add(id(module))
            found.append((name, module, cls))
    return found


def _swap(model: nn.Module, new: Mapping[int, nn.Module]) -> nn.Module:
    """Put new[id(m)] in every place that holds module m; returns the (new) model."""
    model = new.get(id(model), model)
    for parent in [*model.modules(), *new.values()]:  # a new module's children too
        for attr, child in parent._modules.items():
            if child is not None and id(child) in new:
                parent._modules[attr] = new[id(child)]
    return model


def convert(
    model: nn.Module,
    rule: str | Rule,
    *,
    rules: Mapping[str, str | Rule] | None = None,
    last: str | Rule | None = None,
    include: Patterns = None,
    exclude: Patterns = None,
    seed: int = 0,
    **options: object,
) -> nn.Module:
    """Put `model`'s Linear, Conv and ConvTranspose layers on a learning rule, in place;
    returns the model.

    Args:
        model: any nn.Module (a bare Linear or Conv comes back as a new module).
        rule: the rule for every layer (a name from `list_rules()` or a Rule instance).
        rules: per-layer choices, {pattern: rule}; the first matching pattern wins.
        last: the rule of the model's last convertible layer in registration order (the
            classifier of torchvision and timm models), whatever include and exclude pick;
            "bp" keeps it on backprop, as the seed's code did. A last layer that include or
            exclude leave out stays as it is; a `rules` pattern matching it wins over last.
        include, exclude: fnmatch patterns on qualified module names; a pattern matching a
            module matches everything inside it ("layer4", "*.downsample.*").
        seed: the run's seed; each layer's feedback is drawn from (seed, its name), so every
            DDP rank, and every conversion of the same model, gets the same feedback.
        **options: options of `rule` when it is a name, e.g. convert(m, "wm", samples=128).

    Converting again is a no-op for layers already on the asked rule (their feedback is kept);
    layers on another rule switch. A module used in several places stays one module, with one
    feedback. A parametrised weight (torch.nn.utils.parametrize's weight_norm, spectral_norm)
    stays parametrised: the forward and the feedback use the weight it computes; a rule that
    writes W (sign_fixed) leaves such a layer alone, and the report says so. The existing
    Parameter objects are reused, but rules add state (kp a Parameter): build the optimiser
    after converting. A model with layers on dfa, drtp or dfa_blocks gets the forward hooks
    that take its output error and targets (see `biograd.error_source`, `biograd.targets`);
    on dfa_blocks, its blocks get their points (a rule's `check` refuses a model it cannot
    run on, here dfa_blocks' with no blocks, before anything changes). The report of what
    changed is logged at INFO on the "biograd" logger; `report(model)` gives it at any time.
    """
    _check_arguments(model, rules, include, exclude, seed)
    default = get_rule(rule, **options)
    choices = {pat: get_rule(r) for pat, r in (rules or {}).items()}
    last_rule = None if last is None else get_rule(last)
    _rewire(model)
    convertible = _convertible(model)
    _check_patterns([name for name, _, _ in convertible], rules, include, exclude)
    for asked in {default, *choices.values(), *([last_rule] if last_rule else [])}:
        asked.check(model)
    last_name = convertible[-1][0] if convertible else None
    new: dict[int, nn.Module] = {}
    # converted layers changing rule
    switches: list[tuple[FeedbackLayer | PerWeight, Rule, int]] = []
    held: list[str] = []  # modules left as they are whose forward reads their children's W
    for name, module, cls in convertible:
        if any(name.startswith(f"{h}.") for h in held):
            continue
        if cls.reads_children and not isinstance(module, FeedbackLayer):
            held.append(name)  # until it is converted below
        if (include is not None and not _matches(name, include)) or _matches(name, exclude):
            continue
        weight = module._parameters.get(cls.weight_name)  # None where parametrised
        if is_lazy(weight):
            raise ValueError(f"{name or type(module).__name__}: a lazy layer, whose weight has "
                             f"no shape yet: run one forward pass of the model before "
                             f"biograd.convert")
        if weight is not None and weight.is_meta:
            raise ValueError(f"{name or type(module).__name__}: on the meta device, where the "
                             f"rule's feedback would be drawn as nothing (to_empty leaves it "
                             f"uninitialised): materialise the model's weights first "
                             f"(to_empty and initialise or load them), then biograd.convert")
        chosen = next((r for pat, r in choices.items() if _matches(name, pat)), None)
        if chosen is None:
            chosen = last_rule if last_rule is not None and name == last_name else default
        layer_seed = mix(seed, name)
        if isinstance(module, (FeedbackLayer, PerWeight)):
            rules = [h.learning_rule for h in holders(module)] or [module.learning_rule]
            if any(r != chosen for r in rules):
                switches.append((module, chosen, layer_seed))  # once nothing can fail
            continue
        if chosen.writes_weight and _computed_weight(module, cls.weight_name):
            log.info("%s: left alone: %s writes W, which its parametrisation computes",
                     name or type(module).__name__, chosen.name)
            continue
        try:
            new[id(module)] = cls.from_torch(module, chosen, layer_seed)
        except ValueError as err:
            raise ValueError(f"{name or type(module).__name__}: {err}") from None
        if held and held[-1] == name:
            held.pop()
    for module, chosen, layer_seed in switches:
        module.set_rule(chosen, layer_seed)
    model = _swap(model, new)
    _forget_library_caches(model)
    wire(model, seed)  # the output's hooks and dfa_blocks' points, or none left
    _warn_rank_one_classifier(model, last_name)
    log.info("%s", report(model))
    return model


def _warn_rank_one_classifier(model: nn.Module, last_name: str | None) -> None:
    """Warn where the last layer is under Dale's law on a rule whose B is sign(W): one sign
    per input unit makes B rank one, B = 1 sᵀ, so δx = s Σ δy, which is 0 for softmax
    cross-entropy (its output error sums to zero): the classifier would send nothing down."""
    layer = dict(model.named_modules()).get(last_name) if last_name is not None else None
    if isinstance(layer, FeedbackLayer) and DALE_SIGN in layer._buffers and \
            layer.learning_rule.name in ("ss", "sign_fixed"):
        log.warning("%s, the last layer, is on %s under Dale's law: its feedback sign(W) has "
                    "one sign per input unit (rank one), so under softmax cross-entropy, whose "
                    "output error sums to zero, it sends no error down: put it on bp "
                    "(last='bp', --last-rule bp)", last_name or type(layer).__name__,
                    layer.learning_rule.name)


def unconvert(model: nn.Module) -> nn.Module:
    """Put `model` back on plain torch, in place; returns the model (a bare biograd layer
    comes back as a new torch layer).

    Every biograd layer becomes the torch class it was converted from (nn.Linear for one made
    as biograd.nn.Linear), sharing the same Parameter objects, so an optimiser built before
    keeps stepping them; the feedback state is dropped. The state dict then has the torch
    model's keys: it loads into the plain model with strict=True (a model under Dale's law
    keeps its `dale_sign` buffers and their hold: load those with strict=False).
    """
    release(model)
    _rewire(model, back=True)
    new = {id(m): m.to_torch() for m in model.modules() if isinstance(m, PerWeight) or
           (isinstance(m, FeedbackLayer) and not isinstance(m, WeightFeedback))}
    model = _swap(model, new)
    _forget_library_caches(model)
    return model


def _forget_library_caches(model: nn.Module) -> None:
    """Clear what other libraries cached about `model`'s modules before they were swapped:
    spikingjelly's reset_net keeps, per network, the modules it resets (the neurons, which
    converting keeps as they are, so nothing goes stale; cleared all the same, as its docs ask
    after module swaps). Nothing is imported: a library not loaded has cached nothing."""
    functional = sys.modules.get("spikingjelly.activation_based.functional")
    forget = getattr(functional, "invalidate_reset_cache", None)
    if forget is not None:
        for module in model.modules():
            forget(module)


@dataclass
class Report:
    """What follows which rule in a model, and what still learns through weight transport.

    layers: (name, class, rule) for every biograd layer.
    transport: (owner, class, parameter count, why) for every module whose own parameters
        learn by backprop: BatchNorm, LayerNorm, embeddings, layers on bp, layers that could
        not be converted.
    dale: (name, excitatory input units, input units) for every layer under Dale's law
        (`biograd.dale`).
    blocks: the blocks whose outputs take the projected output error (dfa_blocks' points).
    """

    layers: list[tuple[str, str, str]] = field(default_factory=list)
    transport: list[tuple[str, str, int, str]] = field(default_factory=list)
    dale: list[tuple[str, int, int]] = field(default_factory=list)
    blocks: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        rules: dict[str, int] = {}
        for _, _, r in self.layers:
            rules[r] = rules.get(r, 0) + 1
        on = ", ".join(f"{n} on {r}" for r, n in rules.items()) or "none"
        groups: dict[tuple[str, str], list[int]] = {}
        for _, kind, n, why in self.transport:
            count = groups.setdefault((kind, why), [0, 0])
            count[0], count[1] = count[0] + 1, count[1] + n
        total = sum(n for _, _, n, _ in self.transport)
        lines = [
            f"biograd: {len(self.layers)} layers converted ({on}); still learning through "
            f"weight transport: {total:,} parameters in {len(self.transport)} modules"
        ]
        lines += [f"  {m} x {kind} ({n:,} params): {why}" for (kind, why), (m, n) in
                  groups.items()]
        if self.dale:
            excitatory, units = (sum(d[i] for d in self.dale) for i in (1, 2))
            layers = f"{len(self.dale)} layer{'s' if len(self.dale) > 1 else ''}"
            lines.append(f"  under Dale's law: {layers}, {excitatory:,} of {units:,} input "
                         f"units excitatory")
        if self.blocks:
            shown = ", ".join(self.blocks[:4]) + (", ..." if len(self.blocks) > 4 else "")
            lines.append(f"  dfa blocks: {len(self.blocks)} ({shown}), each output taking the "
                         f"projected output error in place of the gradient from above")
        return "\n".join(lines)


def feedback_layers(model: nn.Module) -> Iterator[tuple[str, FeedbackLayer]]:
    """(qualified name, layer) for every biograd layer of `model`, in registration order."""
    for name, module in model.named_modules():
        if isinstance(module, FeedbackLayer):
            yield name, module


def report(model: nn.Module) -> Report:
    """The conversion report of `model`, computed from the model as it is now."""
    out = Report()
    for name, module, why in _walk(model):
        own = sum(p.numel() for p in module.parameters(recurse=False) if p.requires_grad)
        kind = type(module).__name__
        if isinstance(module, FeedbackLayer):
            out.layers.append((name, kind, str(module.learning_rule)))
            if module.learning_rule.transports_weights and own:
                out.transport.append((name, kind, own, module.learning_rule.transport_why))
        elif isinstance(module, PerWeight):  # its weights are the layers of its `per_weight`
            moving = [h for h in holders(module) if h.learning_rule.transports_weights]
            if moving and own:  # on bp throughout: all of it, as a Linear on bp
                count = own if len(moving) == len(holders(module)) else sum(
                    h.weight.numel() for h in moving if h.weight.requires_grad)
                out.transport.append((name, kind, count, moving[0].learning_rule.transport_why))
        elif own:
            out.transport.append((name, kind, own, why or _why_not(module)))
    for name, module in dale_layers(model):
        sign = module._buffers[DALE_SIGN]
        out.dale.append((name, int((sign > 0).sum()), sign.numel()))
    source = model.__dict__.get(KEY)
    out.blocks = [] if source is None else [point.name for point in source.points]
    return out


def _why_not(module: nn.Module) -> str:
    """Why a module with parameters of its own follows no rule."""
    if not isinstance(module, tuple(DROP_INS)):
        return "not a Linear, Conv or ConvTranspose: learns by backprop"
    cls = _drop_in(module)
    if cls is None:
        return "custom forward, not converted"
    if isinstance(module, nn.MultiheadAttention) and not module._qkv_same_embed_dim:
        return "separate q, k and v weights (kdim, vdim), which no rule supports: not converted"
    if _computed_weight(module, cls.weight_name):
        return ("parametrised weight, not converted: it was excluded, or its rule writes W "
                "(sign_fixed), which a parametrisation computes")
    return "not converted (left out by include/exclude, or not asked)"


def feedback_buffers(model: nn.Module) -> list[str]:
    """Qualified names of every feedback buffer of `model` (fa's B, frsf's |M|, brsf's pool,
    wm's and sign_fixed's B, brsf's and wm's step counters, and Dale's `dale_sign` on any
    layer): state that every rank derives from the shared seed, so DDP must not broadcast it.
    kp's B, a Parameter whose gradient DDP all-reduces, is not one."""
    return [f"{name}.{key}" if name else key for name, layer in feedback_layers(model)
            for key in layer.learning_rule.state if key in layer._buffers] + dale_buffers(model)


def exclude_feedback_from_ddp(model: nn.Module) -> list[str]:
    """Tell DDP, before it wraps `model`, to leave every feedback buffer alone (it would send
    them all from rank 0 at every forward: 44.6 MiB for ResNet-18 under fa, as much as the
    gradients). BatchNorm statistics stay as DDP keeps them. Returns the names excluded.

        biograd.convert(model, "fa", seed=0)          # the same seed on every rank
        biograd.exclude_feedback_from_ddp(model)
        model = DistributedDataParallel(model, device_ids=[rank])
    """
    from torch.nn.parallel import DistributedDataParallel

    names = feedback_buffers(model)
    kept = list(getattr(model, "_ddp_params_and_buffers_to_ignore", []))
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
        model, sorted(set(kept) | set(names)))
    return names


def after_step(model: nn.Module) -> None:
    """Run what each layer's rule needs between optimiser steps; call once after each step.

    wm: one mirror pass; sign_fixed: clamp W to its fixed signs; every other rule: nothing.
    Layers under Dale's law (biograd.dale), on any rule or none, are held to their units'
    signs first, so that wm mirrors the W that will be used.
    """
    dale, work = [], {}
    for module in _each_module(model):
        if DALE_SIGN in module._buffers:
            dale.append(module)
        if isinstance(module, FeedbackLayer):
            rule = module.learning_rule
            kind = type(rule)
            if kind.after_step is not Rule.after_step or kind.after_steps is not Rule.after_steps:
                work.setdefault(rule, []).append(module)
    if dale:
        hold_dale_(model, dale)
    for rule, layers in work.items():  # a rule's layers at once (Rule.after_steps)
        rule.after_steps(layers)


def _each_module(model: nn.Module) -> list[nn.Module]:
    """model.modules() without the qualified names it builds (this runs at every step):
    every module once, in the same order; a list built in one loop (a generator's resumption
    per module was half the walk's time)."""
    out: list[nn.Module] = []
    seen: set[int] = set()
    stack = [model]
    pop, push, add, keep = stack.pop, stack.extend, seen.add, out.append
    while stack:
        module = pop()
        key = id(module)
        if key in seen:
            continue
        add(key)
        keep(module)
        children = module._modules
        if children:
            push(reversed([m for m in children.values() if m is not None]))
    return out


def attach(optimizer: torch.optim.Optimizer, model: nn.Module,
           scaler: torch.amp.GradScaler | None = None) -> _Detach:
    """Run `after_step(model)` after every `optimizer.step()`, from the optimiser's step
    post-hook: a Lightning, Hugging Face Trainer, accelerate or hand-written loop then needs
    no other change. Returns a handle whose `remove()` detaches it. Attaching the same model
    to the same optimiser again returns the handle it has (after_step still runs once a step).

        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        biograd.attach(opt, model)

    A step a gradient scaler skips (fp16 overflow) runs no optimiser step, and so no
    after_step: brsf draws no new B, wm mirrors nothing, for a step that did not happen.

    scaler: the GradScaler of an fp16 loop. The alignment family's B learns from a gradient
    of its own, not the loss's, which the scaler would divide by its scale with the rest:
    its layers multiply that gradient by the scale when they have the scaler.
    """
    if not isinstance(optimizer, torch.optim.Optimizer) or not isinstance(model, nn.Module):
        raise TypeError(f"attach(optimizer, model) takes a torch optimiser and a module, not "
                        f"{type(optimizer).__name__} and {type(model).__name__}")
    if scaler is not None:
        if not isinstance(scaler, torch.amp.GradScaler):
            raise TypeError(f"attach's scaler is a torch.amp.GradScaler, not "
                            f"{type(scaler).__name__}")
        for _, layer in feedback_layers(model):
            layer.__dict__["loss_scaler"] = scaler
    attached = optimizer.__dict__.setdefault("_biograd_attached", {})
    if id(model) in attached:
        return attached[id(model)]

    def hook(opt, args, kwargs) -> None:
        after_step(model)

    inner = optimizer.register_step_post_hook(hook)
    handle = _Detach(inner, attached, id(model))
    attached[id(model)] = handle
    return handle


class _Detach:
    """The handle `attach` returns: `remove()` stops the hook."""

    def __init__(self, inner: RemovableHandle, attached: dict, key: int) -> None:
        self.inner, self.attached, self.key = inner, attached, key

    def remove(self) -> None:
        self.inner.remove()
        self.attached.pop(self.key, None)

    def __enter__(self) -> _Detach:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
