"""Drop-in Linear, Conv1d, Conv2d and Conv3d whose backward follows a learning rule.

Each subclasses the torch layer and keeps its constructor and parameter names, so state dicts
load by the same keys; the only additions are the keyword-only `rule` and `seed`, and the
rule's feedback state (registered under the names in `rule.state`).
"""

from __future__ import annotations

import copy
import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from biograd._seed import generator, mix
from biograd.nn.functional import feedback_conv, feedback_linear
from biograd.rules.base import Rule, get_rule

log = logging.getLogger("biograd")


class FeedbackLayer(nn.Module):
    """What every biograd layer adds to its torch layer (a mixin, listed first in the bases).

    Attributes:
        learning_rule: the Rule object; `rule` is its name.
        feedback_seed: the layer's own seed, from which all its random feedback is drawn.
        feedback_step: a per-step counter some rules keep (brsf: draws, wm: mirror passes).
    """

    learning_rule: Rule
    feedback_seed: int
    feedback_step: int

    def __init__(self, *args, rule: str | Rule = "bp", seed: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.set_rule(rule, seed)

    @classmethod
    def from_torch(cls, module: nn.Module, rule: str | Rule, seed: int | None = None):
        """A biograd layer that shares `module`'s parameters, buffers and attributes."""
        new = cls.__new__(cls)
        for key, value in module.__dict__.items():  # hooks and the like: own copies
            new.__dict__[key] = copy.copy(value) if isinstance(value, (dict, set)) else value
        new.set_rule(rule, seed)
        return new

    @property
    def rule(self) -> str:
        """The name of the layer's learning rule."""
        return self.learning_rule.name

    def set_rule(self, rule: str | Rule, seed: int | None = None) -> None:
        """Switch to `rule`, drawing its state from `seed` (default: torch's global stream).

        Setting the rule a layer already has, with no new seed, keeps its state.
        """
        new = get_rule(rule)
        old = self.__dict__.get("learning_rule")
        if old == new and (seed is None or seed == self.feedback_seed):
            return
        if old is not None:
            for name in old.state:
                delattr(self, name)
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)).item())
        self.learning_rule, self.feedback_seed, self.feedback_step = new, int(seed), 0
        new.setup(self, generator(mix(seed, "setup")))

    def feedback_weight(self) -> Tensor:
        """The B this layer's backward uses (W's shape); for brsf, the latest step's draw."""
        return self.learning_rule.feedback_weight(self)

    def after_step(self) -> None:
        """What the rule does between optimiser steps (wm's mirror pass, sign_fixed's clamp)."""
        self.learning_rule.after_step(self)

    def _feedback(self):
        return self.learning_rule.bind(self)

    # --- state dicts: the seed and counter travel as extra state ---------------------------

    def get_extra_state(self) -> dict:
        return {"rule": self.rule, "seed": self.feedback_seed, "step": self.feedback_step}

    def set_extra_state(self, state: dict) -> None:
        if state.get("rule", self.rule) != self.rule:
            raise ValueError(
                f"this state was saved from a layer on rule {state['rule']!r}, but the layer "
                f"is on {self.rule!r}: convert the model with the same rules before loading"
            )
        self.feedback_seed, self.feedback_step = int(state["seed"]), int(state["step"])

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # A plain torch checkpoint has no feedback state: keep the layer loadable by the torch
        # layer's keys and derive the feedback from the loaded W, as converting after loading.
        names = [prefix + n for n in self.learning_rule.state] + [prefix + "_extra_state"]
        absent = [k for k in names if k not in state_dict]
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        for key in absent:
            if key in missing_keys:
                missing_keys.remove(key)
        if any(k != prefix + "_extra_state" for k in absent):
            rule, self.__dict__["learning_rule"] = self.learning_rule, None
            for name in rule.state:
                delattr(self, name)
            self.learning_rule, self.feedback_step = rule, 0
            rule.setup(self, generator(mix(self.feedback_seed, "setup")))
            log.debug("%s: no feedback state in the checkpoint, drawn anew", prefix or "layer")

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rule={self.learning_rule}"


class Linear(FeedbackLayer, nn.Linear):
    """nn.Linear (inputs of any number of leading dimensions) with δx = δy B."""

    def forward(self, input: Tensor) -> Tensor:
        if self.learning_rule.transports_weights:
            return nn.Linear.forward(self, input)
        return feedback_linear(input, self.weight, self.bias, self._feedback())


class _ConvMixin(FeedbackLayer):
    """The shared forward of Conv1d/2d/3d: torch's padding, then `feedback_conv`."""

    def forward(self, input: Tensor) -> Tensor:
        if self.learning_rule.transports_weights:
            return self._conv_forward(input, self.weight, self.bias)
        x, padding = self._pad(input)
        return feedback_conv(
            x, self.weight, self.bias, self._feedback(),
            self.stride, padding, self.dilation, self.groups,
        )

    def _pad(self, input: Tensor) -> tuple[Tensor, tuple[int, ...]]:
        """The padded input and the zero padding the convolution itself applies.

        As torch does: non-zero padding modes pad explicitly; 'same' whose total padding is
        odd pads the extra element on the right, then pads symmetrically (aten's
        _convolution_mode), so outputs match torch's bit for bit.
        """
        n = len(self.kernel_size)
        if self.padding_mode != "zeros":
            x = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return x, (0,) * n
        if not isinstance(self.padding, str):
            return input, tuple(self.padding)
        pads = self._reversed_padding_repeated_twice  # (left, right) per dim, last dim first
        left = tuple(pads[2 * (n - 1 - i)] for i in range(n))
        extra = [0] * (2 * n)
        for i in range(n):
            extra[2 * (n - 1 - i) + 1] = pads[2 * (n - 1 - i) + 1] - left[i]
        return (F.pad(input, extra) if any(extra) else input), left


class Conv1d(_ConvMixin, nn.Conv1d):
    """nn.Conv1d with δx = conv_transpose(δy, B)."""


class Conv2d(_ConvMixin, nn.Conv2d):
    """nn.Conv2d with δx = conv_transpose(δy, B)."""


class Conv3d(_ConvMixin, nn.Conv3d):
    """nn.Conv3d with δx = conv_transpose(δy, B)."""


#: torch layer -> biograd layer, most specific first (the converter's lookup table).
DROP_INS: dict[type[nn.Module], type[FeedbackLayer]] = {
    nn.Linear: Linear,
    nn.Conv1d: Conv1d,
    nn.Conv2d: Conv2d,
    nn.Conv3d: Conv3d,
}
