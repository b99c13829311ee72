"""torchvision's Swin attention, calling its qkv and proj as modules so that they follow a rule.

torchvision's ShiftedWindowAttention (V1 and V2) hands self.qkv.weight and self.proj.weight to
a function, so converting qkv and proj would change nothing. These subclasses (same state, same
outputs) compute shifted-window attention (Liu et al. 2021; V2: Liu et al. 2022) through the
modules. `biograd.convert` gives every Swin attention of a model this class, and `unconvert`
gives the torchvision class back. While qkv and proj both learn through W (torch layers, or
biograd ones on bp) the forward is torchvision's own.

For an input (N, H, W, C), window (w_h, w_w), shift (s_h, s_w), T = w_h w_w tokens a window:

    x -> pad H, W to multiples of the window -> roll by (-s_h, -s_w) -> windows (N n_w, T, C)
    [q | k | v] = qkv(x), per head (N n_w, heads, T, C / heads)
    V1: a = softmax(q kᵀ / sqrt(C / heads) + bias + mask) v
    V2: a = softmax(τ cos(q, k) + bias + mask) v,  τ = exp(min(logit_scale, log 100))
    y = proj(a) -> windows back -> roll by (s_h, s_w) -> crop to (N, H, W, C)

bias is the relative position bias (1, heads, T, T); mask is -100 between tokens that the roll
brought together from different regions of the image, else 0. A shift is dropped on a side
the window covers whole. V2 has no key bias: torchvision drops the middle third of qkv's bias,
and here it is subtracted from qkv's output again, so it has no effect and its gradient is
float rounding (about 1e-6 of the other gradients) where torchvision's is exactly 0.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import swin_transformer as tv

from biograd.nn.attention import _transports


def _windows(x: Tensor, window: list[int]) -> Tensor:
    """(N, H, W, C) -> (N n_w, T, C): the windows, row by row, each one's tokens row by row."""
    n, height, width, c = x.shape
    wh, ww = window
    x = x.view(n, height // wh, wh, width // ww, ww, c).transpose(2, 3)
    return x.reshape(-1, wh * ww, c)


def _regions(size: int, window: int, shift: int, device: torch.device) -> Tensor:
    """Which region of one axis each position of the rolled map came from: 0 before the last
    window, 1 in it up to the shift, 2 in the shift that wrapped around; all 0 unshifted."""
    i = torch.arange(size, device=device)
    if not shift:
        return torch.zeros_like(i)
    return (i >= size - window).long() + (i >= size - shift).long()


def _shift_mask(height: int, width: int, window: list[int], shift: list[int],
                device: torch.device) -> Tensor:
    """(n_w, T, T): -100 between tokens of one window from different regions, else 0."""
    (wh, ww), (sh, sw) = window, shift
    label = _regions(height, wh, sh, device)[:, None] * 3 + _regions(width, ww, sw, device)
    label = _windows(label[None, :, :, None], window)[..., 0]  # (n_w, T)
    differs = label[:, :, None] != label[:, None, :]
    return torch.zeros(differs.shape, device=device).masked_fill_(differs, -100.0)


class _WindowAttention:
    """The forward both Swin versions share; `torch_class` is the torchvision one."""

    torch_class: type[nn.Module]
    keys_without_bias = False

    def forward(self, x: Tensor) -> Tensor:
        """x: (N, H, W, C) -> (N, H, W, C)."""
        if _transports(self.qkv) and _transports(self.proj):
            return self.torch_class.forward(self, x)
        n, height, width, c = x.shape
        (wh, ww), heads = self.window_size, self.num_heads
        x = F.pad(x, (0, 0, 0, -width % ww, 0, -height % wh))
        hp, wp = x.shape[1:3]
        shift = [s if w < size else 0 for s, w, size in zip(self.shift_size, self.window_size,
                                                             (hp, wp), strict=True)]
        if any(shift):
            x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
        x = _windows(x, self.window_size)  # (N n_w, T, C)
        t, d = wh * ww, c // heads
        padded = None  # (N n_w, 1, T, 1), True at the padding, for V2's keys
        if self.keys_without_bias and (hp, wp) != (height, width):
            padded = torch.ones(1, hp, wp, 1, dtype=torch.bool, device=x.device)
            padded[:, :height, :width] = False
            padded = torch.roll(padded, shifts=(-shift[0], -shift[1]), dims=(1, 2))
            padded = _windows(padded, self.window_size).repeat(n, 1, 1)[:, None]

        qkv = self.qkv(x)  # (N n_w, T, 3C)
        q, k, v = qkv.view(-1, t, 3, heads, d).permute(2, 0, 3, 1, 4)  # (N n_w, heads, T, d)
        bias = self.get_relative_position_bias()  # (1, heads, T, T)
        if any(shift):
            mask = _shift_mask(hp, wp, self.window_size, shift, x.device)  # (n_w, T, T)
            bias = (bias + mask[:, None]).repeat(n, 1, 1, 1)  # (N n_w, heads, T, T)
        q, k, scale = self._scores(q, k, padded)
        dropout = self.attention_dropout if self.training else 0.0
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype),
                                           dropout_p=dropout, scale=scale)
        y = self.proj(a.transpose(1, 2).reshape(-1, t, c))  # (N n_w, T, C)
        y = F.dropout(y, p=self.dropout, training=self.training)

        y = y.view(n, hp // wh, wp // ww, wh, ww, c).transpose(2, 3).reshape(n, hp, wp, c)
        if any(shift):
            y = torch.roll(y, shifts=(shift[0], shift[1]), dims=(1, 2))
        return y[:, :height, :width].contiguous()

    def _scores(self, q: Tensor, k: Tensor, padded: Tensor | None
                ) -> tuple[Tensor, Tensor, float | None]:
        """q and k as scaled_dot_product_attention takes them, and its scale."""
        return q, k, None  # V1: q kᵀ / sqrt(d), sdpa's own scale


class ShiftedWindowAttention(_WindowAttention, tv.ShiftedWindowAttention):
    """torchvision's ShiftedWindowAttention, with qkv and proj called as modules."""

    torch_class = tv.ShiftedWindowAttention


class ShiftedWindowAttentionV2(_WindowAttention, tv.ShiftedWindowAttentionV2):
    """torchvision's ShiftedWindowAttentionV2 (cosine attention), qkv and proj as modules."""

    torch_class = tv.ShiftedWindowAttentionV2
    keys_without_bias = True

    def _scores(self, q, k, padded):
        bias = self.qkv.bias
        if bias is not None:  # V2 keys have no bias
            c = bias.numel() // 3
            k = k - bias[c:2 * c].view(self.num_heads, 1, -1)
            if padded is not None:
                # k = 0 there, where normalize's gradient is 1/eps: it would reach the bias
                # twice, +δ/eps and -δ/eps, and leave their rounding error; torchvision's ends
                # there (its keys' bias is cut off)
                k = k.masked_fill(padded, 0.0)
        tau = torch.clamp(self.logit_scale, max=math.log(100.0)).exp()  # (heads, 1, 1)
        return F.normalize(q, dim=-1) * tau, F.normalize(k, dim=-1), 1.0
