"""Drop-in Linear, Conv1d/2d/3d and ConvTranspose1d/2d/3d whose backward follows a rule.

Each subclasses the torch layer and keeps its constructor and parameter names, so state dicts
load by the same keys; the only additions are the keyword-only `rule` and `seed`, and the
rule's feedback state (registered under the names in `rule.state`).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Collection
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from biograd._seed import generator, mix
from biograd.nn.functional import feedback_conv, feedback_linear
from biograd.rules.base import Rule, get_rule, list_rules

log = logging.getLogger("biograd")


class FeedbackLayer(nn.Module):
    """What every biograd layer adds to its torch layer (a mixin, listed first in the bases).

    Attributes:
        learning_rule: the Rule object; `rule` is its name.
        feedback_seed: the layer's own seed, from which all its random feedback is drawn.
        feedback_step: the step counter of rules that keep one (brsf: draws, wm: mirror
            passes; `step_counter` makes it), an int64 buffer of shape () that stays on the
            CPU wherever the layer goes: reading it never waits on a GPU, and torch.compile
            traces it as a tensor (no recompiling when it moves).

    In the state dict the seed is an int64 tensor (`feedback_seed`) beside the counter and
    the rule's state, so a converted model's state dict holds tensors only.
    """

    learning_rule: Rule
    feedback_seed: int
    feedback_step: Tensor
    #: The parameter the rule acts on (`weight` reads it); MultiheadAttention's in_proj_weight.
    weight_name: ClassVar[str] = "weight"
    #: True where the torch layer's forward reads its children's weights directly
    #: (nn.MultiheadAttention's out_proj): left unconverted, its children are left alone too.
    reads_children: ClassVar[bool] = False

    def __init__(self, *args, rule: str | Rule = "bp", seed: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.set_rule(rule, seed)

    @classmethod
    def from_torch(cls, module: nn.Module, rule: str | Rule, seed: int | None = None):
        """A biograd layer that shares `module`'s parameters, buffers and attributes.

        A module under torch.nn.utils.parametrize (weight_norm, spectral_norm) stays so: the
        forward and the rule both see the weight the parametrisation computes."""
        plain = type(module).__bases__[0] if parametrize.is_parametrized(module) else type(module)
        new = copy_module(module, rebase(module, cls))
        new.__dict__["torch_class"] = plain
        new.set_rule(rule, seed)
        return new

    def to_torch(self) -> nn.Module:
        """The torch layer this one stands for (the class it was converted from), sharing its
        parameters, buffers and attributes; the rule's state is left behind."""
        cls = self.__dict__.get("torch_class") or next(
            base for base in type(self).__mro__ if base in DROP_INS)
        plain = copy_module(self, rebase(self, cls),
                            skip={"learning_rule", "feedback_seed", "torch_class", "_sign_scale",
                                  *(k for k in self.__dict__ if k.startswith("_cached_"))})
        for name in self.learning_rule.state:
            plain._parameters.pop(name, None)
            plain._buffers.pop(name, None)
            plain._non_persistent_buffers_set.discard(name)
        return plain

    @property
    def rule(self) -> str:
        """The name of the layer's learning rule."""
        return self.learning_rule.name

    def set_rule(self, rule: str | Rule, seed: int | None = None) -> None:
        """Switch to `rule`, drawing its state from `seed`.

        Without a seed, one is derived from torch's global stream without advancing it (and
        from W), so a drop-in layer leaves the stream as its torch layer does. Setting the
        rule a layer already has, with no new seed, keeps its state.
        """
        new = get_rule(rule)
        old = self.__dict__.get("learning_rule")
        if old == new and (seed is None or seed == self.feedback_seed):
            return
        if old is not None:  # state the new rule keeps too is rewritten in place (put_state):
            for name in old.state:  # an optimiser holding kp's B keeps stepping the live one
                if name not in new.state:
                    delattr(self, name)
        if seed is None:
            seed = _default_seed(self.weight_now())
        self.__dict__.pop("_sign_scale", None)  # ss's s and brsf's window: the old rule's
        for key in [key for key in self.__dict__ if key.startswith("_cached_")]:
            del self.__dict__[key]  # brsf's window, dfa's projection, sign_fixed's signs
        self.learning_rule, self.feedback_seed = new, int(seed)
        new.setup(self, generator(mix(seed, "setup")))

    def put_state(self, name: str, value: Tensor, learned: bool = False) -> None:
        """Give the rule's state `name` the value `value`: written in place (copy_) into the
        tensor already there, so optimisers and wrappers that hold it keep the live one;
        registered as a buffer (a Parameter if `learned`) when there is none."""
        if name in (self._buffers if learned else self._parameters):  # fa's B, now kp's
            delattr(self, name)
        current = (self._parameters if learned else self._buffers).get(name)
        if current is not None and current.shape == value.shape:
            with torch.no_grad():
                current.copy_(value)
        elif learned:
            self.register_parameter(name, nn.Parameter(value, self.weight_now().requires_grad))
        else:
            self.register_buffer(name, value)

    def weight_now(self) -> Tensor:
        """W as the forward computes it, without moving any state: a parametrisation (e.g.
        spectral_norm's power iteration) is evaluated in eval mode."""
        chain = self._modules.get("parametrizations")
        if chain is None:
            return self.weight
        modes = [(m, m.training) for m in chain.modules()]
        chain.eval()
        try:
            return self.weight
        finally:
            for m, mode in modes:
                m.training = mode

    def scale_shape(self, shape: torch.Size) -> tuple[int, ...]:
        """The weight shape whose seed scale (`sign_scale`) a W of `shape` takes, and whose
        fan-in wm's mirror uses: W's own, but for a layer whose W is not laid out as the torch
        layer's (LocallyConnected2d: that of the convolution it unshares)."""
        return shape

    def feedback_weight(self) -> Tensor:
        """The B this layer's backward uses (W's shape); for brsf, the current step's draw."""
        return self.learning_rule.feedback_weight(self)

    def after_step(self) -> None:
        """What the rule does between optimiser steps (wm's mirror pass, sign_fixed's clamp)."""
        self.learning_rule.after_step(self)

    def _feedback(self):
        return self.learning_rule.bind(self)

    def _explain(self, err: Exception) -> None:
        """Raise torch's error for an autograd feature the layers do not support (torch.func
        transforms, forward-mode AD) again, naming the layer and its rule; else return."""
        if "setup_context" in str(err) or "jvp" in str(err):
            raise RuntimeError(
                f"{type(self).__name__} on rule {self.learning_rule}: torch.func transforms "
                f"(vmap, grad, jacrev, jvp) and forward-mode AD need an autograd.Function with "
                f"setup_context and jvp, which biograd's layers leave out (it would cost about "
                f"120 us per layer per step); put this layer on bp, or biograd.unconvert the "
                f"model, to use them (functional_call and double backward work)"
            ) from err

    def __getstate__(self) -> dict:
        """Pickled and deep-copied without what the rules cache on the layer (`_cached_*`: a
        step's window of brsf's pool, dfa's window of its table: views that a copy would cut
        loose from what they view)."""
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__
        return {k: v for k, v in state.items() if not k.startswith("_cached_")}

    # --- state dicts: the seed and counter travel as int64 tensors -------------------------

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        self.__dict__.pop("_sign_scale", None)  # ss's s in W's dtype, which may have changed
        step = self._buffers.get("feedback_step")
        if step is not None and step.device.type != "cpu":  # .to(), .cuda(): it stays
            self._buffers["feedback_step"] = step.cpu()
        return out

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "feedback_seed"] = torch.tensor(self.feedback_seed)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        rule = self.learning_rule
        old = state_dict.get(prefix + "_extra_state")  # the dict earlier versions wrote
        foreign = sorted(n for n in _all_state() - set(rule.state) if prefix + n in state_dict)
        saved_rule = old.get("rule", rule.name) if isinstance(old, dict) else rule.name
        if foreign or saved_rule != rule.name:
            what = f"rule {saved_rule!r}" if saved_rule != rule.name else \
                f"feedback state {', '.join(foreign)} of another rule"
            error_msgs.append(f"{prefix or 'layer'}: the state holds {what}, but the layer is on "
                              f"{rule.name!r}: convert the model with the same rules before "
                              f"loading")
            return
        # A plain torch checkpoint has no feedback state: keep the layer loadable by the torch
        # layer's keys and derive the feedback from the loaded W, as converting after loading.
        counted = "feedback_step" in rule.state
        absent = [n for n in rule.state if prefix + n not in state_dict and n != "feedback_step"]
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        for key in (prefix + "feedback_seed", prefix + "_extra_state"):
            if key in unexpected_keys:
                unexpected_keys.remove(key)
        for name in (*absent, "feedback_step"):
            if prefix + name in missing_keys:
                missing_keys.remove(prefix + name)
        if isinstance(old, dict):
            self.feedback_seed = int(old["seed"])
        if prefix + "feedback_seed" in state_dict:
            self.feedback_seed = int(state_dict[prefix + "feedback_seed"])
        if absent:
            loaded = counted and prefix + "feedback_step" in state_dict
            step = int(self.feedback_step) if loaded else None
            rule.setup(self, generator(mix(self.feedback_seed, "setup")))
            if step is not None:  # setup starts the counter at 0: keep the loaded one
                self.feedback_step.fill_(step)
            log.debug("%s: no feedback state in the checkpoint, drawn anew", prefix or "layer")
        elif counted and isinstance(old, dict):
            self.feedback_step.fill_(int(old["step"]))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rule={self.learning_rule}"


def _all_state() -> set[str]:
    """Every state name a registered rule keeps (to tell another rule's in a checkpoint)."""
    return {name for rule in list_rules() for name in get_rule(rule).state}


def _default_seed(weight: Tensor) -> int:
    """A layer seed for a layer made without one: a draw from torch's global stream on W's
    device, taken in a fork so the stream does not advance, mixed with W's shape and sums
    (layers made one after another differ in W even when the stream has not moved)."""
    device = weight.device if weight.device.type != "meta" else torch.device("cpu")
    forked = [] if device.type == "cpu" else [device]
    with torch.random.fork_rng(devices=forked, device_type=device.type if forked else "cuda"):
        peek = int(torch.randint(0, 2**62, (1,), device=device).item())
    sums = ()
    if weight.device.type != "meta":
        w = weight.detach().double()
        sums = (w.sum().item(), w.square().sum().item())
    return mix(peek, *weight.shape, *sums)


class Linear(FeedbackLayer, nn.Linear):
    """nn.Linear (inputs of any number of leading dimensions) with δx = δy B."""

    def forward(self, input: Tensor) -> Tensor:
        rule = self.learning_rule
        if rule.transports_weights:
            return F.linear(input, self.weight, self.bias)
        try:
            return feedback_linear(input, self.weight, self.bias, rule.bind(self))
        except (RuntimeError, NotImplementedError) as err:
            self._explain(err)
            raise


class _ConvMixin(FeedbackLayer):
    """The shared forward of Conv1d/2d/3d: torch's padding, then `feedback_conv`."""

    def forward(self, input: Tensor) -> Tensor:
        rule = self.learning_rule
        if rule.transports_weights:
            return self._conv_forward(input, self.weight, self.bias)
        padding = self.padding
        if self.padding_mode == "zeros" and padding.__class__ is not str:
            x, pads = input, ()  # the common case: the convolution pads with zeros
        else:
            x, padding, pads = self._pad(input)
        feedback = rule.bind(self)
        if pads and feedback.direct is not None:
            feedback = feedback._replace(direct=_unpadded(feedback.direct, input.shape, pads))
        try:
            return feedback_conv(x, self.weight, self.bias, feedback, self.stride, padding,
                                 self.dilation, self.groups)
        except (RuntimeError, NotImplementedError) as err:
            self._explain(err)
            raise

    def _pad(self, input: Tensor) -> tuple[Tensor, tuple[int, ...], tuple[int, ...]]:
        """The padded input, the zero padding the convolution itself applies, and the padding
        applied here (F.pad's order; () for none).

        As torch does: non-zero padding modes pad explicitly; 'same' whose total padding is
        odd pads the extra element on the right, then pads symmetrically (aten's
        _convolution_mode), so outputs match torch's bit for bit.
        """
        padding = self.padding
        if self.padding_mode == "zeros" and padding.__class__ is not str:
            return input, padding, ()  # the common case: the convolution pads with zeros
        n = len(self.kernel_size)
        if self.padding_mode != "zeros":
            pads = self._reversed_padding_repeated_twice
            return F.pad(input, pads, mode=self.padding_mode), (0,) * n, tuple(pads)
        pads = self._reversed_padding_repeated_twice  # (left, right) per dim, last dim first
        left = tuple(pads[2 * (n - 1 - i)] for i in range(n))
        extra = [0] * (2 * n)
        for i in range(n):
            extra[2 * (n - 1 - i) + 1] = pads[2 * (n - 1 - i) + 1] - left[i]
        if any(extra):
            return F.pad(input, extra), left, tuple(extra)
        return input, left, ()


def _unpadded(direct, shape: torch.Size, pads: tuple[int, ...]):
    """A direct rule's δx for a convolution that padded its input explicitly by `pads` (F.pad's
    order): the projection onto the input as it came (`shape`), zero over the padding, so the
    padding's backward hands the layer below the projection itself."""
    def project(_: torch.Size) -> Tensor:
        return F.pad(direct(shape), pads)
    return project


class _ConvTransposeMixin(FeedbackLayer):
    """The shared forward of ConvTranspose1d/2d/3d (zero padding only, as torch's)."""

    def forward(self, input: Tensor, output_size: list[int] | None = None) -> Tensor:
        if self.learning_rule.transports_weights:
            return super().forward(input, output_size)  # the torch layer's
        n = len(self.kernel_size)
        output_padding = self._output_padding(input, output_size, self.stride, self.padding,
                                              self.kernel_size, n, self.dilation)
        try:
            return feedback_conv(input, self.weight, self.bias, self._feedback(), self.stride,
                                 self.padding, self.dilation, self.groups, transposed=True,
                                 output_padding=output_padding)
        except (RuntimeError, NotImplementedError) as err:
            self._explain(err)
            raise


class Conv1d(_ConvMixin, nn.Conv1d):
    """nn.Conv1d with δx = conv_transpose(δy, B)."""


class Conv2d(_ConvMixin, nn.Conv2d):
    """nn.Conv2d with δx = conv_transpose(δy, B)."""


class Conv3d(_ConvMixin, nn.Conv3d):
    """nn.Conv3d with δx = conv_transpose(δy, B)."""


class ConvTranspose1d(_ConvTransposeMixin, nn.ConvTranspose1d):
    """nn.ConvTranspose1d with δx = conv(δy, B)."""


class ConvTranspose2d(_ConvTransposeMixin, nn.ConvTranspose2d):
    """nn.ConvTranspose2d with δx = conv(δy, B)."""


class ConvTranspose3d(_ConvTransposeMixin, nn.ConvTranspose3d):
    """nn.ConvTranspose3d with δx = conv(δy, B)."""


#: torch layer -> biograd layer, most specific first (the converter's lookup table).
DROP_INS: dict[type[nn.Module], type[FeedbackLayer]] = {
    nn.Linear: Linear,
    nn.Conv1d: Conv1d,
    nn.Conv2d: Conv2d,
    nn.Conv3d: Conv3d,
    nn.ConvTranspose1d: ConvTranspose1d,
    nn.ConvTranspose2d: ConvTranspose2d,
    nn.ConvTranspose3d: ConvTranspose3d,
}


#: torch's hook dicts on every Module: the user's handles remove hooks from these dicts.
HOOK_DICTS = frozenset(k for k, v in nn.Module().__dict__.items()
                       if "hooks" in k and isinstance(v, dict))


def copy_module(module: nn.Module, cls: type[nn.Module], skip: Collection[str] = ()) -> nn.Module:
    """A `cls` with `module`'s attributes (but `skip`): the same parameters, buffers and
    submodules, in dicts of its own, so either can gain or lose one without the other; the
    hook dicts themselves are shared, so that a handle the user holds from a hook registered
    before converting (or unconverting) still removes it."""
    new = cls.__new__(cls)
    for key, value in module.__dict__.items():
        if key in HOOK_DICTS:
            new.__dict__[key] = value
        elif key not in skip:
            new.__dict__[key] = copy.copy(value) if isinstance(value, (dict, set)) else value
    return new


def rebase(module: nn.Module, base: type[nn.Module]) -> type[nn.Module]:
    """The class a copy of `module` on `base` needs: `base`, or for a module under
    torch.nn.utils.parametrize, the class torch made for it (one per module: it holds the
    properties that compute the parametrised tensors) with `base` in place of its own base."""
    if not parametrize.is_parametrized(module):
        return base
    cls = type(module)
    namespace = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
    return type(cls.__name__, (base,), namespace)
