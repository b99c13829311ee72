"""Linear and convolution whose backward sends the input gradient through a feedback matrix B.

Forward: torch's own op, so outputs are bit for bit the torch layer's. Backward: the weight
and bias gradients are the true local ones; only the input gradient uses B,

    linear:                  δx = δy B             (δy: (..., out), B: (out, in))
    convolution:             δx = conv_transpose(δy, B)
    transposed convolution:  δx = conv(δy, B)
    locally connected:       δcols[:, :, p] = δy[:, :, p] B[p]   (one matrix per position p)

computed for convolutions in ONE aten.convolution_backward call with B in W's place (the
weight gradient does not read the weight's values). B is made in the backward, and only when
the input needs a gradient (a network's stem does not), by the rule's `make`. A direct rule
(dfa) gives δx itself instead, from the model's output error (`Feedback.direct`), and δy
only serves the weight and bias gradients.

Under torch.autocast the inputs are cast as torch's own conv/linear would cast them, and the
gradients come back in each input's dtype.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from biograd.rules.base import Feedback


def _autocast_dtype(x: Tensor) -> torch.dtype | None:
    """The dtype torch's conv/linear would compute in under autocast, or None."""
    device = x.device.type
    if torch.is_autocast_enabled(device) and x.is_floating_point():
        return torch.get_autocast_dtype(device)
    return None


def _cast(t: Tensor | None, dtype: torch.dtype | None) -> Tensor | None:
    """t in autocast's `dtype`, as autocast casts each argument: float64 tensors stay float64."""
    if t is None or dtype is None or t.dtype == torch.float64:
        return t
    return t.to(dtype)


def _as(t: Tensor | None, dtype: torch.dtype | None) -> Tensor | None:
    """t in `dtype`; t itself when it already is (what .to does, without the call's cost)."""
    return t if t is None or t.dtype == dtype else t.to(dtype)


# Resolved once: calling the packet torch.ops.aten.convolution_backward picks the overload at
# every call. With _as, this takes 15-40 us off each layer's forward + backward on CPU (of the
# 100-130 us the Function costs over nn.Conv2d's); the kernels called are the same.
_convolution_backward = torch.ops.aten.convolution_backward.default


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, learned, make, direct):
        dtype = _autocast_dtype(x)
        xc, wc, bc = _cast(x, dtype), _cast(weight, dtype), _cast(bias, dtype)
        ctx.save_for_backward(xc, weight)
        ctx.make, ctx.direct, ctx.x_dtype = make, direct, x.dtype
        ctx.bias_dtype = None if bias is None else bias.dtype
        return torch.nn.functional.linear(xc, wc, bc)

    @staticmethod
    def backward(ctx, grad):  # grad: (..., out)
        x, weight = ctx.saved_tensors  # x: (..., in), weight: (out, in)
        need_x, need_w, need_b, need_learned = ctx.needs_input_grad[:4]
        grad_x = grad_w = grad_b = None
        if need_x and ctx.direct is not None:
            grad_x = _as(ctx.direct(x.shape), ctx.x_dtype)
        elif need_x:
            grad_x = _as(grad @ _as(ctx.make(weight), grad.dtype), ctx.x_dtype)
        if need_w:
            g2 = grad.reshape(-1, grad.shape[-1])  # (n, out)
            grad_w = _as(g2.T @ x.reshape(-1, x.shape[-1]), weight.dtype)  # (out, in)
        if need_b:
            grad_b = _as(grad.reshape(-1, grad.shape[-1]).sum(0), ctx.bias_dtype)
        # kp's learned B takes W's gradient, and none where W is frozen (B's increment is W's)
        return (grad_x, grad_w, grad_b, grad_w if need_learned else None,
                None, None)


class _Conv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, learned, make, direct, stride, padding, dilation, groups,
                transposed, output_padding):
        dtype = _autocast_dtype(x)
        xc, wc, bc = _cast(x, dtype), _cast(weight, dtype), _cast(bias, dtype)
        ctx.save_for_backward(xc, weight)
        ctx.make, ctx.direct, ctx.x_dtype = make, direct, x.dtype
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.args = (stride, padding, dilation, groups, transposed, output_padding)
        return torch.convolution(xc, wc, bc, stride, padding, dilation, transposed,
                                 output_padding, groups)

    @staticmethod
    def backward(ctx, grad):  # grad: (N, C_out, *spatial)
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b, need_learned = ctx.needs_input_grad[:4]
        stride, padding, dilation, groups, transposed, output_padding = ctx.args
        # The weight gradient reads only the weight's shape, so B can stand in W's place.
        direct = ctx.direct if need_x else None
        b = ctx.make(weight) if need_x and direct is None else weight
        grad_x, grad_w, grad_b = _convolution_backward(
            grad,
            x,
            _as(b, grad.dtype),
            [grad.shape[1]] if need_b else None,
            stride,
            padding,
            dilation,
            transposed,
            output_padding,
            groups,
            [need_x and direct is None, need_w, need_b],
        )
        if direct is not None:
            grad_x = direct(x.shape)
        grad_x = _as(grad_x, ctx.x_dtype)
        # aten may return a weight gradient it was not asked for (CPU, mkldnn): dropped here
        grad_w = _as(grad_w, weight.dtype) if need_w else None
        grad_b = _as(grad_b, ctx.bias_dtype)
        # kp's learned B takes W's gradient, and none where W is frozen (B's increment is W's)
        return (grad_x, grad_w, grad_b, grad_w if need_learned else None,
                None, None, None, None, None, None, None, None)


def local_product(cols: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """y[n, o, p] = Σ_k W[p, o, k] cols[n, k, p] + b[o, p], a matrix product per position p.

    cols: (N, K, P), weight: (P, C_out, K), bias: (C_out, P) or None; returns (N, C_out, P),
    a new contiguous tensor (never a view, so it can be modified in place). Plain torch ops:
    LocallyConnected2d on bp runs it under autograd, `_Local` runs it as its forward.
    """
    return _product(_by_position(cols), weight, bias)


def _by_position(cols: Tensor) -> Tensor:
    """(N, K, P) -> (P, N, K), contiguous: the layout in which CPU bmm runs fastest here."""
    return cols.permute(2, 0, 1).contiguous()


def _product(c: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """`local_product` of c = _by_position(cols): (P, N, K) -> (N, C_out, P)."""
    # yᵀ = W cᵀ per position: autograd's W gradient, δyᵀ c, then comes out in W's own layout
    # (from y = c Wᵀ it came transposed, and the accumulation into .grad copied it)
    ct = c.transpose(1, 2)  # (P, K, N)
    y = torch.bmm(weight, ct) if bias is None else torch.baddbmm(bias.T.unsqueeze(2), weight, ct)
    return y.permute(2, 1, 0).contiguous()  # (P, C_out, N) -> (N, C_out, P)


class _Local(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cols, weight, bias, learned, make, direct):
        dtype = _autocast_dtype(cols)
        cc, wc, bc = _cast(cols, dtype), _cast(weight, dtype), _cast(bias, dtype)
        ctx.save_for_backward(cc, weight)  # cols, not a copy: double backward reaches x
        ctx.make, ctx.direct, ctx.x_dtype = make, direct, cols.dtype
        ctx.bias_dtype = None if bias is None else bias.dtype
        return local_product(cc, wc, bc)

    @staticmethod
    def backward(ctx, grad):  # grad: (N, C_out, P)
        cols, weight = ctx.saved_tensors  # cols: (N, K, P), weight: (P, C_out, K)
        need_x, need_w, need_b, need_learned = ctx.needs_input_grad[:4]
        grad_x = grad_w = grad_b = None
        g = grad.permute(2, 0, 1).contiguous()  # (P, N, C_out)
        if need_x and ctx.direct is None:  # δcols[:, :, p] = δy[:, :, p] B[p]
            b = _as(ctx.make(weight), grad.dtype)
            grad_x = _as(g.bmm(b).permute(1, 2, 0), ctx.x_dtype)  # (P, N, K) -> (N, K, P)
        if need_w:  # δW[p] = δy[:, :, p]ᵀ cols[:, :, p]
            grad_w = _as(g.transpose(1, 2).bmm(_by_position(cols)), weight.dtype)  # (P, C_out, K)
        if need_b:
            grad_b = _as(g.sum(1).T, ctx.bias_dtype)  # (C_out, P)
        # (a direct rule's δx reaches the layer's input through `project_input`, not cols)
        # kp's learned B takes W's gradient, and none where W is frozen (B's increment is W's)
        return (grad_x, grad_w, grad_b, grad_w if need_learned else None,
                None, None)


class _ProjectInput(torch.autograd.Function):
    """x as it is; in the backward, a direct rule's δx = direct(x's shape) in place of what
    arrives (for a layer whose Function sees a transform of x, as LocallyConnected2d's cols)."""

    @staticmethod
    def forward(ctx, x, direct):
        ctx.direct, ctx.shape = direct, x.shape
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return _as(ctx.direct(ctx.shape), grad.dtype), None


def project_input(x: Tensor, direct: Callable[[torch.Size], Tensor]) -> Tensor:
    """x, whose gradient will be `direct(x.shape)` whatever flows back to it (see _ProjectInput)."""
    return _ProjectInput.apply(x, direct)


def feedback_local(cols: Tensor, weight: Tensor, bias: Tensor | None,
                   feedback: Feedback) -> Tensor:
    """`local_product` with δcols = δy B per position, for B = feedback.make(W) (W's shape).

    cols: (N, C_in·kh·kw, P) (F.unfold's), weight: (P, C_out, C_in·kh·kw), bias: (C_out, P)
    or None; returns (N, C_out, P). The weight and bias gradients are the true local ones.
    """
    return _Local.apply(cols, weight, bias, feedback.learned, feedback.make, feedback.direct)


def feedback_linear(x: Tensor, weight: Tensor, bias: Tensor | None, feedback: Feedback) -> Tensor:
    """y = x Wᵀ + b, with δx = δy B for B = feedback.make(W).

    x: (..., in), weight: (out, in), bias: (out,) or None; returns (..., out).
    """
    make, learned, direct = feedback
    if x.dim() == 2:
        return _Linear.apply(x, weight, bias, learned, make, direct)
    if direct is not None:  # it projects onto x as the caller shaped it: (N, ...), batch first
        shape, project = x.shape, direct
        direct = lambda flat: project(shape).view(flat)  # noqa: E731
    # Flatten outside the Function: for more than 2 dims F.linear returns a view, and a view
    # returned by a custom Function cannot be modified in place (ReLU(inplace=True) after it).
    y = _Linear.apply(x.reshape(-1, x.shape[-1]), weight, bias, learned, make, direct)
    return y.view(*x.shape[:-1], y.shape[-1])


def feedback_conv(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    feedback: Feedback,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    transposed: bool = False,
    output_padding: Sequence[int] | None = None,
) -> Tensor:
    """An N-d convolution (zero padding given as ints), with δx = conv_transpose(δy, B);
    or, `transposed`, an N-d transposed convolution, with δx = conv(δy, B).

    x: (N, C_in, *spatial), or unbatched (C_in, *spatial) as torch's layers take it; weight:
    (C_out, C_in / groups, *kernel), or transposed (C_in, C_out / groups, *kernel).
    """
    if x.dim() == weight.dim() - 1:  # unbatched: aten's convolution wants the batch dimension
        return feedback_conv(x.unsqueeze(0), weight, bias, feedback, stride, padding, dilation,
                             groups, transposed, output_padding).squeeze(0)
    # tuples as the layers keep them: aten takes any int sequence, and a list() per argument
    # per call is host time on every step
    if output_padding is None:
        output_padding = _ZEROS[len(stride)]
    return _Conv.apply(x, weight, bias, feedback.learned, feedback.make, feedback.direct, stride,
                       padding, dilation, groups, transposed, output_padding)


_ZEROS = {n: (0,) * n for n in (1, 2, 3)}

