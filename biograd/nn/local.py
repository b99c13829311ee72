"""A locally connected layer: a convolution whose kernel differs at every output position.

    cols = unfold(x)                                  (N, C_in·kh·kw, P), P = H_out·W_out
    y[:, :, p] = W[p] cols[:, :, p] + b[:, p]         W: (P, C_out, C_in·kh·kw), b: (C_out, P)

No weight sharing (Bartunov et al. 2018 ran FA and target propagation in such networks): each
output unit has its own weights, as a neuron has its own synapses. The unfold and its fold
stay in autograd (exact); under a rule other than bp the per-position product sends the
error through B (W's shape), δcols[:, :, p] = δy[:, :, p] B[p]. Feedback is scaled as the
convolution's it replaces (`scale_shape`): ss's s = sqrt(2 / (kh·kw·C_out)), not a figure
computed from the 3-D W.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair
from torch.nn.utils import parametrize

from biograd.nn.functional import feedback_local, local_product, project_input
from biograd.nn.layers import FeedbackLayer, copy_module
from biograd.rules.base import Rule

IntPair = int | tuple[int, int]


class LocallyConnected2d(FeedbackLayer):
    """Conv2d without weight sharing, for inputs of one size (C_in, H, W) given up front.

    Args:
        in_channels, out_channels, kernel_size, stride, padding (zeros), dilation: as
            nn.Conv2d's (ints or pairs).
        input_size: (H, W) or an int: the spatial size of every input.
        bias: a bias per output channel and position, (C_out, H_out, W_out).
        rule, seed: the learning rule and the layer's seed, as every biograd layer's.

    Parameters: weight (P, C_out, C_in·kh·kw), P = H_out·W_out positions in row-major order;
    bias (C_out, H_out, W_out). Initialised as nn.Conv2d's, independently at each position:
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = C_in·kh·kw. Input (N, C_in, H, W) or
    (C_in, H, W); output (N, C_out, H_out, W_out) or (C_out, H_out, W_out).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        input_size: IntPair,
        stride: IntPair = 1,
        padding: IntPair = 0,
        bias: bool = True,
        *,
        dilation: IntPair = 1,
        rule: str | Rule = "bp",
        seed: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        nn.Module.__init__(self)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.input_size = _pair(kernel_size), _pair(input_size)
        self.stride, self.padding, self.dilation = _pair(stride), _pair(padding), _pair(dilation)
        if min(in_channels, out_channels) < 1:
            raise ValueError(f"{type(self).__name__}: in_channels={in_channels} and "
                             f"out_channels={out_channels} must be positive")
        self.output_size = output_size(self.input_size, self.kernel_size, self.stride,
                                       self.padding, self.dilation)
        positions = self.output_size[0] * self.output_size[1]
        fan_in = in_channels * self.kernel_size[0] * self.kernel_size[1]
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(positions, out_channels, fan_in, **factory))
        self.bias = (nn.Parameter(torch.empty(out_channels, *self.output_size, **factory))
                     if bias else None)
        self.reset_parameters()
        self.set_rule(rule, seed)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, input_size: IntPair) -> LocallyConnected2d:
        """The layer that computes what `conv` computes on inputs of `input_size`: its kernel
        and bias copied to every position; a biograd Conv2d's rule and seed kept (its rule's
        state drawn again, for the new W). Raises ValueError for what has no such form here
        (groups, non-zero padding modes, uneven 'same' padding)."""
        padding = unsharable(conv)
        rule = getattr(conv, "learning_rule", None)
        seed = getattr(conv, "feedback_seed", None)
        weight = conv.weight.detach()
        with torch.device("meta"):  # no draw: the values are the convolution's
            new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, input_size,
                      conv.stride, padding, conv.bias is not None, dilation=conv.dilation,
                      dtype=weight.dtype)
        new = new.to_empty(device=weight.device)
        with torch.no_grad():  # unfold orders a patch (C_in, kh, kw), as W's flattening
            new.weight.copy_(weight.reshape(1, conv.out_channels, -1).expand_as(new.weight))
            new.weight.requires_grad_(conv.weight.requires_grad)
            if conv.bias is not None:
                new.bias.copy_(conv.bias.detach()[:, None, None].expand_as(new.bias))
                new.bias.requires_grad_(conv.bias.requires_grad)
        new.set_rule(rule or "bp", seed)  # from bp, which keeps no state
        new.train(conv.training)
        return new

    def reset_parameters(self) -> None:
        """nn.Conv2d's initialisation at every position: U(±1/sqrt(C_in·kh·kw))."""
        bound = 1 / math.sqrt(self.weight.shape[-1])
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def scale_shape(self, shape: torch.Size) -> tuple[int, ...]:
        """(C_out, C_in, kh, kw): feedback is scaled as the convolution's."""
        return (self.out_channels, self.in_channels, *self.kernel_size)

    def to_torch(self) -> LocallyConnected2d:
        """No torch layer computes this one: the same layer on bp (plain torch ops), sharing
        its parameters; the rule's state is left behind."""
        plain = copy_module(self, type(self))
        plain.set_rule("bp", self.feedback_seed)
        return plain

    def forward(self, input: Tensor) -> Tensor:
        batched = input.dim() == 4
        c_h_w = (self.in_channels, *self.input_size)
        if input.dim() not in (3, 4) or input.shape[-3:] != c_h_w:
            raise ValueError(f"{type(self).__name__} takes (N, C, H, W) or (C, H, W) inputs "
                             f"with (C, H, W) = {c_h_w}, got {tuple(input.shape)}: give it "
                             f"inputs of the size it was made for")
        x = input if batched else input.unsqueeze(0)
        feedback = None if self.learning_rule.transports_weights else self._feedback()
        if feedback is not None and feedback.direct is not None and x.requires_grad:
            x = project_input(x, feedback.direct)  # dfa: δx = B e on the input, not on cols
        cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)
        bias = None if self.bias is None else self.bias.view(self.out_channels, -1)
        if feedback is None:
            y = local_product(cols, self.weight, bias)
        else:
            try:
                y = feedback_local(cols, self.weight, bias, feedback)
            except (RuntimeError, NotImplementedError) as err:
                self._explain(err)
                raise
        y = y.view(x.shape[0], self.out_channels, *self.output_size)
        return y if batched else y.squeeze(0)

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"input_size={self.input_size}, stride={self.stride}")
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.bias is None:
            s += ", bias=False"
        return f"{s}, rule={self.learning_rule}"


def output_size(input_size: tuple[int, int], kernel_size: tuple[int, int],
                stride: tuple[int, int], padding: tuple[int, int],
                dilation: tuple[int, int]) -> tuple[int, int]:
    """(H_out, W_out) as nn.Conv2d computes it; ValueError for sizes that give none."""
    name = LocallyConnected2d.__name__
    for what, value in [("kernel_size", kernel_size), ("input_size", input_size),
                        ("stride", stride), ("dilation", dilation)]:
        if min(value) < 1:
            raise ValueError(f"{name}: {what}={value} must be positive")
    if min(padding) < 0:
        raise ValueError(f"{name}: padding={padding} must be 0 or more")
    out = []
    for size, k, s, p, d in zip(input_size, kernel_size, stride, padding, dilation, strict=True):
        span = d * (k - 1) + 1
        if size + 2 * p < span:
            raise ValueError(f"{name}: input_size {input_size} with padding {padding} is "
                             f"smaller than the kernel's span {span}: use a smaller kernel or "
                             f"a larger input")
        out.append((size + 2 * p - span) // s + 1)
    return out[0], out[1]


def unsharable(conv: nn.Conv2d) -> tuple[int, int]:
    """The zero padding of a convolution `from_conv` can unshare; ValueError for one it cannot
    (groups, non-zero padding modes, uneven 'same' padding, a parametrised weight)."""
    padding = _int_padding(conv)
    if parametrize.is_parametrized(conv, "weight"):
        raise ValueError("a parametrised weight (weight_norm, spectral_norm) is not "
                         "unshared; exclude it")
    return padding


def _int_padding(conv: nn.Conv2d) -> tuple[int, int]:
    """conv's zero padding as two ints ('valid' is 0, symmetric 'same' its half span)."""
    if conv.groups != 1:
        raise ValueError(f"groups={conv.groups}: a grouped convolution has no locally "
                         f"connected form here; exclude it")
    if conv.padding_mode != "zeros":
        raise ValueError(f"padding_mode={conv.padding_mode!r}: only zero padding is "
                         f"unshared; exclude it")
    if conv.padding == "valid":
        return 0, 0
    if conv.padding == "same":
        spans = [d * (k - 1) for k, d in zip(conv.kernel_size, conv.dilation, strict=True)]
        if any(span % 2 for span in spans):
            raise ValueError(f"padding='same' with kernel {conv.kernel_size} pads unevenly; "
                             f"give it int padding or exclude it")
        return spans[0] // 2, spans[1] // 2
    return conv.padding
