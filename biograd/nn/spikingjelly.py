"""spikingjelly's layers on a rule: its Linear, Conv and ConvTranspose with their step modes.

spikingjelly 2.0.0's `layer.Conv2d(nn.Conv2d, base.StepModule)` (and Linear, Conv1d/3d,
ConvTranspose1d/2d/3d) is torch's layer with a `step_mode`: 's' takes one step (N, ...), 'm'
a sequence (T, N, ...), which its forward folds into the batch, (T·N, ...), for one call of
torch's forward (Linear takes (T, N, ...) as it is). Each class here is the biograd drop-in and
the spikingjelly class in one: spikingjelly's forward first, whose call of torch's forward
lands on the drop-in's, so the folding, `step_mode`, `functional.set_step_mode` and every
isinstance check on spikingjelly's classes stay as they were, and only the backward changes.
`biograd.convert` gives every such layer its class here (imported only when it meets one);
`unconvert` gives back spikingjelly's own, with its step_mode.

In multi-step mode each layer tells a dfa or drtp layer that its input holds T steps, time
first, so each sample's projection B s reaches the sample at every step (`folded_steps`); so do
the containers that fold time for the plain torch layers inside them (SeqToANNContainer, and
StepModeContainer in 'm' when stateless), which `convert` rewires to the subclasses here.

Not converted, and why: WSConv2d and WSLinear (weight standardisation) compute their weight
in their own forward, which no drop-in runs (the report says "custom forward, not
converted"); the layers inside TLastSeqToANNContainer, which maps them over time with
torch.vmap, which biograd's autograd functions do not support (`convert`'s OPAQUE).
"""

from __future__ import annotations

from typing import Any

from spikingjelly.activation_based import layer as sj
from torch import Tensor

from biograd.nn import layers
from biograd.nn.layers import DROP_INS
from biograd.rules.base import Rule
from biograd.rules.dfa import folded_steps


def _steps(x: Any) -> int:
    """T of a sequence (T, N, ...), or of the first of a tuple of them."""
    return (x[0] if isinstance(x, (tuple, list)) else x).shape[0]


class _TimeSteps:
    """What each layer here adds to the two it combines: a constructor that takes `rule` and
    `seed` beside spikingjelly's arguments, and in multi-step mode, its T told to a rule that
    projects a signal to the input (dfa, drtp: B s at every step)."""

    def __init__(self, *args, rule: str | Rule = "bp", seed: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)  # spikingjelly's, then torch's (on bp)
        self.set_rule(rule, seed)

    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        if self.step_mode != "m" or not self.learning_rule.direct:
            return super().forward(x, *args, **kwargs)
        with folded_steps(_steps(x)):
            return super().forward(x, *args, **kwargs)


class Linear(_TimeSteps, sj.Linear, layers.Linear):
    """spikingjelly's layer.Linear with δx = δy B; x: (N, in) or, multi-step, (T, N, in)."""


class Conv1d(_TimeSteps, sj.Conv1d, layers.Conv1d):
    """spikingjelly's layer.Conv1d with δx = conv_transpose(δy, B); multi-step x (T, N, C, L)."""


class Conv2d(_TimeSteps, sj.Conv2d, layers.Conv2d):
    """spikingjelly's layer.Conv2d with δx = conv_transpose(δy, B); multi-step x (T, N, C, H,
    W)."""


class Conv3d(_TimeSteps, sj.Conv3d, layers.Conv3d):
    """spikingjelly's layer.Conv3d with δx = conv_transpose(δy, B); multi-step x (T, N, C, D,
    H, W)."""


class ConvTranspose1d(_TimeSteps, sj.ConvTranspose1d, layers.ConvTranspose1d):
    """spikingjelly's layer.ConvTranspose1d with δx = conv(δy, B)."""


class ConvTranspose2d(_TimeSteps, sj.ConvTranspose2d, layers.ConvTranspose2d):
    """spikingjelly's layer.ConvTranspose2d with δx = conv(δy, B)."""


class ConvTranspose3d(_TimeSteps, sj.ConvTranspose3d, layers.ConvTranspose3d):
    """spikingjelly's layer.ConvTranspose3d with δx = conv(δy, B)."""


#: spikingjelly's class -> ours, after torch's own (the converter looks a class up exactly first)
DROP_INS.update({sj.Linear: Linear, sj.Conv1d: Conv1d, sj.Conv2d: Conv2d, sj.Conv3d: Conv3d,
                 sj.ConvTranspose1d: ConvTranspose1d, sj.ConvTranspose2d: ConvTranspose2d,
                 sj.ConvTranspose3d: ConvTranspose3d})


class SeqToANNContainer(sj.SeqToANNContainer):
    """spikingjelly's SeqToANNContainer (T steps folded into the batch for the stateless
    modules inside), telling their dfa and drtp layers so."""

    torch_class = sj.SeqToANNContainer  # what `unconvert` gives back

    def forward(self, x_seq: Tensor) -> Tensor:
        with folded_steps(_steps(x_seq)):
            return super().forward(x_seq)


class StepModeContainer(sj.StepModeContainer):
    """spikingjelly's StepModeContainer, telling the dfa and drtp layers inside when it folds
    T steps into the batch (multi-step mode, stateless)."""

    torch_class = sj.StepModeContainer

    def forward(self, x: Tensor) -> Tensor:
        if self.step_mode != "m" or self.stateful:
            return super().forward(x)
        with folded_steps(_steps(x)):
            return super().forward(x)
