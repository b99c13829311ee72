"""Dale's law: each presynaptic unit is excitatory or inhibitory, and all its outgoing weights
keep that one sign through training (Cornford et al. 2021, ICLR).

    biograd.dale(model, excitatory=0.8, balance=True)  # before convert or after, either way
    biograd.convert(model, "ss", last="bp")
    biograd.attach(opt, model)                     # or biograd.after_step(model) per step

A unit is an input feature of a Linear (W (out, in): column j), an input channel of a Conv
(W (C_out, C_in/g, *k): column c of output channel o is channel (o // (C_out/g))·(C_in/g) + c)
or of a ConvTranspose (W (C_in, C_out/g, *k): row i of dim 0). Each draws its sign once, +1
with probability `excitatory`, from a CPU generator seeded by (seed, the layer's name): the
same on every DDP rank and at every call. Its weights take that sign at once, magnitudes kept
(a 0 becomes ±1e-10), and after every optimiser step (`after_step`, `attach`) a weight that
would flip is held at ±1e-10 of its unit's sign: W ← s · max(s · W, eps) (in fp16 eps is
6.1e-5, its smallest normal number, as 1e-10 would round to ±0). The signs are the
persistent buffer `dale_sign`, (C_in,) of ±1 in W's dtype: it moves with the layer, is saved
and loaded with it, and `feedback_buffers` names it, so `exclude_feedback_from_ddp` keeps DDP
from broadcasting it.

Why with sign-symmetry (the seed's argument): a synapse's sign is set by its chemistry, so
under Dale's law sign(W) never changes and B = s · sign(W) needs no sign transport at all.
The price: sign(W) then depends on the column alone, so s · sign(W) = s · 1 signᵀ has rank
one, and ss and sign_fixed send each unit ±s Σ_k δ_k, the summed error of the units it
drives, with no word on which of them erred (fa's, frsf's, brsf's, kp's and wm's B keep
their magnitudes' variety). Softmax cross-entropy's errors sum to 0: a Dale classifier on ss
or sign_fixed passes nothing down at all, so keep the classifier on bp (last="bp", the
seed's and the command line's default) or leave it free.

Choices, and why:
- Layers: every Linear, Conv, ConvTranspose and LocallyConnected2d with torch's forward, and
  biograd's own, on any rule or none, as include/exclude pick. A subclass with its own forward
  can compute its weight from W (timm's StdConv2d standardises it), so sign(W) need not be
  the effect's sign: left free and logged. Call dale() before wrapping in DDP: the names
  seed the draws.
- The stem (first=False): the model's first layer is left free. Its inputs are pixels, not
  neurons; and one sign per colour channel leaves every stem filter of one sign within a
  channel, blind to contrast (edges) inside it. first=True holds it too; a bare layer is held.
- The classifier is held: its inputs are the penultimate units, neurons like the others
  (exclude="fc" frees it; do, if it is on ss or sign_fixed, see above). Its outputs are
  not units: only the loss reads them.
- Activations: with inputs x >= 0 (after a ReLU, as every convolution of a ResNet sees) the
  sign of W_ij is the sign of unit j's effect; with signed inputs (tanh, GELU, a normalised
  residual stream) sign(W_ij x_j) varies with x, and the constraint binds parameters but is
  not the biological law. dale() cannot see activations and does not check them.
- BatchNorm after a layer acts on the receiving unit, y_i = γ_i (z_i − μ_i) / σ_i + β_i. The
  mean subtraction only moves unit i's threshold (its inputs keep their Dale signs, and the
  next layer sees ReLU(y) >= 0); but γ_i < 0 reverses every input to unit i, so that unit j
  then excites some targets and inhibits others. Dale's law holds on W exactly, and on the
  effective network where γ >= 0; γ is left free (BatchNorm learns by backprop).
- Initial variance: keeping magnitudes, a fraction p of positive columns gives W a mean: for
  inputs x >= 0 of mean m, E[z_i] = Σ_j s_j |W_ij| m ≈ (2p − 1) n E|W| m, which outgrows the
  spread, about sqrt(n) σ_W rms(x), as the fan-in n grows, so the first step's activations
  and logits grow layer after layer (a 784-256-256-256-10 ReLU MLP on pixels: mean
  activations 0.14, 0.06, 0.03 become 0.14, 0.73, 3.5, and the logits' spread 0.04 becomes
  1.8). Under BatchNorm the shared component swamps the statistics and the gradients vanish
  (ResNet-18 at 32², on bp: |dL/dW| of layer1.0.conv1 50 becomes 4e-9). balance=True
  re-centres: each output unit's inhibitory weights are scaled so that its weights sum to 0
  (E[z_i] = 0 for inputs of equal means), then all its weights by one factor back to their
  former norm (the spread of z_i stays near the plain net's). That gives back activations
  0.14, 0.06, 0.02, a logit spread of 0.04, and a ResNet-18 gradient of 140: use it for any
  net deeper than a few layers.
- Converted layers: dale() sets each one's rule up again from the new W, with the layer's own
  seed, so dale() after convert gives exactly the state of dale() first, then convert:
  sign_fixed's B and clamp come from sign(W) at set-up, wm's B from a first mirror pass of W,
  scale="weight" from W's spread. Refusing would make the order of two calls matter for no
  reason. Learned feedback (kp's, wm's B) and step counters start again: call it before
  training, as a choice of initialisation.
- Parametrised weights: held only where the parametrisation keeps its parameter's signs
  (spectral_norm: W = W_orig / σ, σ > 0, and W_orig is held); weight_norm (g · v / |v|, g of
  either sign) and weights a hook computes are left free, and logged.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.nn.parameter import is_lazy
from torch.nn.utils import parametrize

from biograd._check import problem
from biograd._seed import generator, mix
from biograd.nn.layers import DROP_INS, FeedbackLayer
from biograd.nn.local import LocallyConnected2d
from biograd.signs import floor, hold_sign_

if TYPE_CHECKING:
    from biograd.convert import Patterns

log = logging.getLogger("biograd")

#: The buffer that holds a layer's unit signs.
DALE_SIGN = "dale_sign"

#: The magnitude a weight that would change sign is held at (sign_fixed's).
EPS = 1e-10

#: Parametrisations whose output has their parameter's sign, element by element.
SIGN_KEEPING = {"torch.nn.utils.parametrizations._SpectralNorm"}


def _type_name(obj: object) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _held(module: nn.Module) -> tuple[Tensor | None, str]:
    """The Parameter whose signs are W's signs, or None and why there is none."""
    if parametrize.is_parametrized(module, "weight"):
        chain = module.parametrizations.weight
        if {_type_name(p) for p in chain} <= SIGN_KEEPING:
            return chain.original, ""
        kinds = ", ".join(type(p).__name__ for p in chain)
        return None, f"parametrised weight ({kinds}) whose signs are not its parameter's"
    weight = module._parameters.get("weight")
    if not isinstance(weight, nn.Parameter):
        return None, "weight computed by a hook (torch.nn.utils.weight_norm or the like)"
    if is_lazy(weight):
        raise ValueError(f"{type(module).__name__} is a lazy layer whose weight has no shape "
                         f"yet: run one forward pass before biograd.dale")
    return weight, ""


def _units(module: nn.Module) -> int:
    """The number of presynaptic units: input features or input channels."""
    return module.in_features if isinstance(module, nn.Linear) else module.in_channels


def unit_signs(layer: nn.Module) -> Tensor:
    """The layer's Dale signs laid out to broadcast against its W.

    Linear W (out, in): (1, in). ConvTranspose W (C_in, C_out/g, *k): (C_in, 1, ...).
    Conv W (C_out, C_in/g, *k): (C_out, C_in/g, 1, ...), the sign of channel
    (o // (C_out/g))·(C_in/g) + c at [o, c]. LocallyConnected2d W (P, C_out, C_in·kh·kw):
    (1, 1, C_in·kh·kw), each channel's sign repeated over its kh·kw taps (unfold's order).
    """
    sign = layer._buffers[DALE_SIGN]
    if isinstance(layer, nn.Linear):
        return sign.view(1, -1)
    if isinstance(layer, LocallyConnected2d):
        return sign.repeat_interleave(math.prod(layer.kernel_size)).view(1, 1, -1)
    ones = (1,) * len(layer.kernel_size)
    if layer.transposed:
        return sign.view(-1, 1, *ones)
    groups, c_out = layer.groups, layer.out_channels
    per_group = sign.view(groups, 1, -1).expand(groups, c_out // groups, -1)
    return per_group.reshape(c_out, -1, *ones)  # (C_out, C_in/g, 1, ...)


def dale_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(qualified name, layer) for every layer of `model` that holds Dale signs."""
    for name, module in model.named_modules():
        if DALE_SIGN in module._buffers:
            yield name, module


def dale_buffers(model: nn.Module) -> list[str]:
    """Qualified names of every `dale_sign` buffer of `model` (derived from the seed on every
    rank, like feedback: DDP must not broadcast them)."""
    return [f"{name}.{DALE_SIGN}" if name else DALE_SIGN for name, _ in dale_layers(model)]


@torch.no_grad()
def hold_dale_(model: nn.Module, layers: list[nn.Module] | None = None) -> None:
    """In place: hold every Dale layer's weights to their units' signs,
    W ← s · max(s · W, eps). `biograd.after_step` calls it after every optimiser step, with
    `layers`, the model's modules that hold Dale signs, found in its one walk of the model."""
    for layer in model.modules() if layers is None else layers:
        if DALE_SIGN not in layer._buffers:
            continue
        weight, why = _held(layer)
        if weight is None:
            name = next(n for n, m in model.named_modules() if m is layer) or "layer"
            raise ValueError(f"{name}: holds Dale signs but has a {why}: remove the "
                             f"parametrisation, or its dale_sign buffer")
        hold_sign_(weight, unit_signs(layer), EPS)


def _balance_(weight: Tensor, layer: nn.Module) -> int:
    """In place: scale each output unit's negative weights so that its weights sum to 0, then
    all of them back to their former norm. Returns how many units had no weights of one sign
    and were left as they were."""
    if isinstance(layer, LocallyConnected2d):  # output unit (p, o): [p, o, :]
        rows = weight.detach().reshape(-1, 1, 1, weight.shape[-1])
    elif isinstance(layer, nn.Linear) or not layer.transposed:
        rows = weight.detach().reshape(weight.shape[0], 1, 1, -1)  # output unit o: [o, :, :, :]
    else:  # (C_in, C_out/g, *k): output channel (g, o) gathers [g, :, o, :]
        groups = layer.groups
        rows = weight.detach().reshape(groups, weight.shape[0] // groups, weight.shape[1], -1)
    dims = (1, 3)
    excite = rows.clamp(min=0).sum(dims, keepdim=True)
    inhibit = rows.neg().clamp(min=0).sum(dims, keepdim=True)
    both = (excite > 0) & (inhibit > 0)
    ratio = torch.where(both, excite / inhibit.clamp(min=torch.finfo(rows.dtype).tiny), 1.0)
    balanced = torch.where(rows < 0, rows * ratio, rows)
    norm = rows.square().sum(dims, keepdim=True).sqrt()
    balanced = balanced * (norm / balanced.square().sum(dims, keepdim=True).sqrt())
    weight.copy_(balanced.reshape(weight.shape))
    return int((~both).sum())


def dale(
    model: nn.Module,
    excitatory: float = 0.8,
    seed: int = 0,
    include: Patterns = None,
    exclude: Patterns = None,
    *,
    first: bool = False,
    balance: bool = False,
) -> nn.Module:
    """Put `model`'s Linear, Conv and ConvTranspose layers under Dale's law, in place; returns
    the model. See the module docstring for which layers, and why.

    Args:
        model: any nn.Module, converted (biograd.convert) or not.
        excitatory: the probability that a unit is excitatory, in (0, 1].
        seed: the run's seed; each layer's signs are drawn from (seed, its name).
        include, exclude: fnmatch patterns on qualified module names, as `convert`'s.
        first: also hold the model's first layer in registration order, the stem, whose
            inputs are the data (default: left free; a bare layer is always held).
        balance: re-centre each output unit's weights to sum 0, keeping their norm and signs.

    Calling it again draws again (the same signs for the same seed). From then on
    `biograd.after_step(model)` (or `biograd.attach(optimizer, model)`) holds the signs.
    """
    from biograd.convert import _drop_in, _matches  # convert imports this module

    wrong = problem(float, {"above": 0, "high": 1}, excitatory)
    if wrong:
        raise ValueError(f"dale excitatory={excitatory!r}: {wrong} (the fraction of units "
                         f"that are excitatory)")
    layers = [(n, m) for n, m in model.named_modules()
              if isinstance(m, (*DROP_INS, LocallyConnected2d))]
    stem = layers[0][0] if layers and layers[0][1] is not model else None
    held, free, positive, total = 0, [], 0, 0
    chosen: list[tuple[str, nn.Module, torch.Tensor]] = []
    for name, module in layers:
        if (include is not None and not _matches(name, include)) or _matches(name, exclude):
            continue
        if name == stem and not first:
            free.append(f"{name} (the stem: its inputs are data, not neurons)")
            continue
        if isinstance(module, nn.MultiheadAttention):
            free.append(f"{name} (attention's in-projection: its inputs, a normalised "
                        f"residual stream, are signed; its out_proj is a Linear of its own)")
            continue
        if isinstance(module, (nn.RNNBase, nn.RNNCellBase)):
            free.append(f"{name} (recurrent: its inputs and hidden state, tanh's, are signed, "
                        f"and one matrix feeds several gates)")
            continue
        if not isinstance(module, FeedbackLayer) and _drop_in(module) is None:
            free.append(f"{name} (own forward: W's sign may not be its effect's)")
            continue
        weight, why = _held(module)  # raises for a lazy layer: before any layer changes
        if weight is None:
            free.append(f"{name} ({why})")
            continue
        owner = next((n for n, _, w in chosen if w is weight), None)
        if owner is not None:  # tied: one tensor cannot hold two layers' signs
            free.append(f"{name} (its weight is {owner}'s, held to {owner}'s signs)")
            continue
        chosen.append((name, module, weight))
    for name, module, weight in chosen:
        draw = torch.rand(_units(module), generator=generator(mix(seed, name, "dale")))
        sign = torch.where(draw < excitatory, 1.0, -1.0).to(weight.device, weight.dtype)
        if DALE_SIGN in module._buffers and module._buffers[DALE_SIGN].shape == sign.shape:
            module._buffers[DALE_SIGN].copy_(sign)  # in place: whoever holds it keeps it
        else:
            module.register_buffer(DALE_SIGN, sign)
        with torch.no_grad():
            weight.abs_().clamp_(min=floor(EPS, weight.dtype)).mul_(unit_signs(module))
            if balance:
                unbalanced = _balance_(weight, module)
                if unbalanced:
                    log.info("%s: %d output units see one sign only: not balanced",
                             name or "layer", unbalanced)
                hold_sign_(weight, unit_signs(module), EPS)
        if isinstance(module, FeedbackLayer):  # set up from the new W, as converting now would
            module.learning_rule.setup(module, generator(mix(module.feedback_seed, "setup")))
        held, positive, total = held + 1, positive + int((sign > 0).sum()), total + sign.numel()
    log.info("biograd: Dale's law on %d layers, %d of %d units excitatory; left free: %s",
             held, positive, total, ", ".join(free) or "none")
    return model
