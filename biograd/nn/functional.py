"""Linear and convolution whose backward sends the input gradient through a feedback matrix B.

Forward: torch's own op, so outputs are bit for bit the torch layer's. Backward: the weight
and bias gradients are the true local ones; only the input gradient uses B,

    linear:                  δx = δy B             (δy: (..., out), B: (out, in))
    convolution:             δx = conv_transpose(δy, B)
    transposed convolution:  δx = conv(δy, B)
    locally connected:       δcols[:, :, p] = δy[:, :, p] B[p]   (one matrix per position p)

computed for convolutions in ONE aten.convolution_backward call with B in W's place (the
weight gradient does not read the weight's values). B is made in the backward, and only when
the input needs a gradient (a network's stem does not), from the Feedback its rule binds
(`Feedback.of`). A direct rule (dfa) gives δx itself instead, from the model's output error
(`Feedback.direct`), and δy only serves the weight and bias gradients. A learned B
(`Feedback.learned`) gets W's gradient (kp), or the gradient of a local rule of its own
(`Feedback.align`, the alignment family), computed in the backward from the input the forward
saved: `LinearMap`, `ConvMap` and `LocalMap` give a rule the layer's linear map and its two
adjoints on that input.

Under torch.autocast the inputs are cast as torch's own conv/linear would cast them, and the
gradients come back in each input's dtype.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import Tensor

from biograd.rules.base import Feedback


def _autocast_dtype(x: Tensor) -> torch.dtype | None:
    """The dtype torch's conv/linear would compute in under autocast, or None; called only
    where `_any_autocast()` (the common case, none on, costs that one C call)."""
    if not x.is_floating_point():
        return None
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None


_any_autocast = torch._C._is_any_autocast_enabled  # 0.3 us, where the device's check is 2


def _cast(t: Tensor | None, dtype: torch.dtype | None) -> Tensor | None:
    """t in autocast's `dtype`, as autocast casts each argument: float64 tensors stay float64."""
    if t is None or dtype is None or t.dtype == torch.float64:
        return t
    return t.to(dtype)


def _as(t: Tensor | None, dtype: torch.dtype | None) -> Tensor | None:
    """t in `dtype`; t itself when it already is (what .to does, without the call's cost)."""
    return t if t is None or t.dtype == dtype else t.to(dtype)


def _save(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, feedback: Feedback):
    """Save what every Function's backward reads; returns x, W and b as the op takes them.

    Under autocast they are cast as torch's own op casts them and ctx.dtypes holds the dtypes
    the gradients go back in (x's, W's, b's); without (the common case, where every gradient
    comes out in its input's dtype) ctx.dtypes is None and the backward casts nothing."""
    ctx.feedback = feedback
    dtype = _autocast_dtype(x) if _any_autocast() else None
    if dtype is None:
        ctx.dtypes = None
        ctx.save_for_backward(x, weight)
        return x, weight, bias
    ctx.dtypes = (x.dtype, weight.dtype, None if bias is None else bias.dtype)
    xc = _cast(x, dtype)
    ctx.save_for_backward(xc, weight)
    return xc, _cast(weight, dtype), _cast(bias, dtype)


def _cast_back(ctx, grad_x, grad_w, grad_b):
    """The gradients in their inputs' dtypes (under autocast they come in the op's)."""
    x_dtype, w_dtype, b_dtype = ctx.dtypes
    return _as(grad_x, x_dtype), _as(grad_w, w_dtype), _as(grad_b, b_dtype)


def _b(feedback: Feedback, weight: Tensor, dtype: torch.dtype) -> Tensor:
    """B (`Feedback.of`) in `dtype`."""
    b = feedback.of(weight)
    return b if b.dtype == dtype else b.to(dtype)


# Resolved once: calling the packet torch.ops.aten.convolution_backward picks the overload at
# every call. With _as, this takes 15-40 us off each layer's forward + backward on CPU (of the
# 100-130 us the Function costs over nn.Conv2d's); the kernels called are the same.
_convolution_backward = torch.ops.aten.convolution_backward.default


class LinearMap:
    """A Linear layer's map on the input x its forward saw, for a rule that learns B from it.

    x: (n, in), the rows of `samples` samples (a sequence's positions are rows of one sample).
    forward(M) = x Mᵀ (n, out); weight_grad(g, u) = gᵀ u (out, in), the weight gradient of
    upstream g at input u (default x); input_grad(g, M) = g M (n, in), the input gradient
    through M. `on(u)` is the same map on another input of x's shape (noise, say).
    """

    __slots__ = ("samples", "x")

    def __init__(self, x: Tensor, samples: int) -> None:
        self.x, self.samples = x.reshape(-1, x.shape[-1]), samples

    def on(self, u: Tensor) -> LinearMap:
        return LinearMap(u, self.samples)

    def forward(self, m: Tensor) -> Tensor:
        return self.x @ m.T

    def weight_grad(self, g: Tensor, u: Tensor | None = None) -> Tensor:
        return g.T @ (self.x if u is None else u)

    def input_grad(self, g: Tensor, m: Tensor) -> Tensor:
        return g @ m


class ConvMap:
    """`LinearMap` for a (transposed) convolution: x (N, C_in, *spatial) as the op takes it
    (padded where the layer pads it itself), samples N; forward(M) = conv(x, M) without the
    bias, its adjoints through aten.convolution_backward (`weight`: W, for its shape)."""

    __slots__ = ("args", "samples", "weight", "x")

    def __init__(self, x: Tensor, weight: Tensor, args: tuple) -> None:
        self.x, self.weight, self.args, self.samples = x, weight, args, x.shape[0]

    def on(self, u: Tensor) -> ConvMap:
        return ConvMap(u, self.weight, self.args)

    def forward(self, m: Tensor) -> Tensor:
        stride, padding, dilation, groups, transposed, output_padding = self.args
        return torch.convolution(self.x, m, None, stride, padding, dilation, transposed,
                                 output_padding, groups)

    def _backward(self, g: Tensor, u: Tensor, m: Tensor, mask: list[bool]) -> tuple:
        stride, padding, dilation, groups, transposed, output_padding = self.args
        return _convolution_backward(g, u, m, None, stride, padding, dilation, transposed,
                                     output_padding, groups, mask)

    def weight_grad(self, g: Tensor, u: Tensor | None = None) -> Tensor:
        # W's values are not read, only its shape
        w = _as(self.weight, g.dtype)
        return self._backward(g, self.x if u is None else u, w, [False, True, False])[1]

    def input_grad(self, g: Tensor, m: Tensor) -> Tensor:
        return self._backward(g, self.x, m, [True, False, False])[0]


class LocalMap:
    """`LinearMap` for a locally connected layer: cols (N, K, P) as F.unfold gives them,
    forward(M) = `local_product(cols, M)` (N, C_out, P), a matrix product per position."""

    __slots__ = ("samples", "x")

    def __init__(self, cols: Tensor) -> None:
        self.x, self.samples = cols, cols.shape[0]

    def on(self, u: Tensor) -> LocalMap:
        return LocalMap(u)

    def forward(self, m: Tensor) -> Tensor:
        return local_product(self.x, m, None)

    def weight_grad(self, g: Tensor, u: Tensor | None = None) -> Tensor:
        gp = g.permute(2, 1, 0)  # (P, C_out, N)
        return gp.bmm(_by_position(self.x if u is None else u))  # (P, C_out, K)

    def input_grad(self, g: Tensor, m: Tensor) -> Tensor:
        return g.permute(2, 0, 1).bmm(m).permute(1, 2, 0)  # (P, N, K) -> (N, K, P)


def _learned_grad(ctx, layer_map: Callable[[], object], weight: Tensor,
                  grad_w: Tensor | None) -> Tensor | None:
    """The gradient of a learned B: W's (kp; none where W is frozen, B's increment being W's),
    or its own rule's `align(map, W, B, W's gradient)` from the input the forward saved,
    `layer_map()` (made only for such a rule)."""
    align = ctx.feedback.align
    if align is None:
        return grad_w
    with torch.no_grad():
        b = ctx.feedback.learned
        return _as(align(layer_map(), weight, b, grad_w), b.dtype)


def keep_error_at(node: object, store: Callable[[Tensor], None]) -> bool:
    """Have `node`'s backward call store(δy) before it sends δx, if `node` is the backward of
    a layer here on a direct rule (its output then ŷ, its δy the output error, which its own
    δx reads); returns whether it will. In place of a hook on the node: a hook's Python, set
    at every forward and called in every backward, costs more than the layer's Function."""
    if type(node) not in _KEEPERS or node.feedback.direct is None:
        return False
    node.keep_error = store
    return True


def _keep_error(ctx, grad: Tensor) -> None:
    """Store the output error, where ctx's output is ŷ (`keep_error_at`)."""
    store = getattr(ctx, "keep_error", None)
    if store is not None:
        store(grad)


class _Linear(torch.autograd.Function):
    # x: (n, in), 2-d (feedback_linear flattens what comes with more dimensions)
    @staticmethod
    def forward(ctx, x, weight, bias, learned, feedback, samples):
        ctx.samples = samples
        return torch.nn.functional.linear(*_save(ctx, x, weight, bias, feedback))

    @staticmethod
    def backward(ctx, grad):  # grad: (n, out)
        x, weight = ctx.saved_tensors  # x: (n, in), weight: (out, in)
        need_x, need_w, need_b, need_learned, _, _ = ctx.needs_input_grad
        feedback = ctx.feedback
        grad_x = grad_w = grad_b = grad_learned = None
        if need_x:
            direct = feedback.direct
            if direct is None:
                grad_x = grad @ _b(feedback, weight, grad.dtype)
            else:
                _keep_error(ctx, grad)
                grad_x = direct(x.shape)
        if need_w:
            grad_w = grad.T @ x  # (out, in)
        if need_b:
            grad_b = grad.sum(0)
        if ctx.dtypes is not None:
            grad_x, grad_w, grad_b = _cast_back(ctx, grad_x, grad_w, grad_b)
        if need_learned:
            # samples 0: every row a sample
            grad_learned = _learned_grad(
                ctx, lambda: LinearMap(x, ctx.samples or x.shape[0]), weight, grad_w)
        return grad_x, grad_w, grad_b, grad_learned, None, None


class _Conv(torch.autograd.Function):
    # args: (stride, padding, dilation, groups, transposed, output_padding), one tuple: each
    # argument of apply is host time
    @staticmethod
    def forward(ctx, x, weight, bias, learned, feedback, args):
        ctx.args = args
        stride, padding, dilation, groups, transposed, output_padding = args
        xc, wc, bc = _save(ctx, x, weight, bias, feedback)
        return torch.convolution(xc, wc, bc, stride, padding, dilation, transposed,
                                 output_padding, groups)

    @staticmethod
    def backward(ctx, grad):  # grad: (N, C_out, *spatial)
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b, need_learned, _, _ = ctx.needs_input_grad
        stride, padding, dilation, groups, transposed, output_padding = ctx.args
        feedback = ctx.feedback
        # The weight gradient reads only the weight's shape, so B can stand in W's place.
        direct = feedback.direct if need_x else None
        from_b = need_x and direct is None
        grad_x, grad_w, grad_b = _convolution_backward(
            grad, x, _b(feedback, weight, grad.dtype) if from_b else weight,
            [grad.shape[1]] if need_b else None, stride, padding, dilation, transposed,
            output_padding, groups, [from_b, need_w, need_b])
        if direct is not None:
            _keep_error(ctx, grad)
            grad_x = direct(x.shape)
        if not need_w:  # aten may return a weight gradient it was not asked for (CPU, mkldnn)
            grad_w = None
        if ctx.dtypes is not None:
            grad_x, grad_w, grad_b = _cast_back(ctx, grad_x, grad_w, grad_b)
        grad_learned = _learned_grad(ctx, lambda: ConvMap(x, weight, ctx.args), weight,
                                     grad_w) if need_learned else None
        return grad_x, grad_w, grad_b, grad_learned, None, None


_KEEPERS = (_Linear._backward_cls, _Conv._backward_cls)


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
    def forward(ctx, cols, weight, bias, learned, feedback):
        # cols saved, not a copy: double backward reaches x
        return local_product(*_save(ctx, cols, weight, bias, feedback))

    @staticmethod
    def backward(ctx, grad):  # grad: (N, C_out, P)
        cols, weight = ctx.saved_tensors  # cols: (N, K, P), weight: (P, C_out, K)
        need_x, need_w, need_b, need_learned = ctx.needs_input_grad[:4]
        grad_x = grad_w = grad_b = grad_learned = None
        g = grad.permute(2, 0, 1).contiguous()  # (P, N, C_out)
        if need_x and ctx.feedback.direct is None:  # δcols[:, :, p] = δy[:, :, p] B[p]
            b = _b(ctx.feedback, weight, grad.dtype)
            grad_x = g.bmm(b).permute(1, 2, 0)  # (P, N, K) -> (N, K, P)
        if need_w:  # δW[p] = δy[:, :, p]ᵀ cols[:, :, p]
            grad_w = g.transpose(1, 2).bmm(_by_position(cols))  # (P, C_out, K)
        if need_b:
            grad_b = g.sum(1).T  # (C_out, P)
        if ctx.dtypes is not None:
            grad_x, grad_w, grad_b = _cast_back(ctx, grad_x, grad_w, grad_b)
        # (a direct rule's δx reaches the layer's input through `project_input`, not cols)
        if need_learned:
            grad_learned = _learned_grad(ctx, lambda: LocalMap(cols), weight, grad_w)
        return grad_x, grad_w, grad_b, grad_learned, None


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
    if torch.compiler.is_compiling():
        return _project_input_eagerly(x, direct)
    return _ProjectInput.apply(x, direct)




def feedback_local(cols: Tensor, weight: Tensor, bias: Tensor | None,
                   feedback: Feedback) -> Tensor:
    """`local_product` with δcols = δy B per position, for B = feedback.of(W) (W's shape).

    cols: (N, C_in·kh·kw, P) (F.unfold's), weight: (P, C_out, C_in·kh·kw), bias: (C_out, P)
    or None; returns (N, C_out, P). The weight and bias gradients are the true local ones.
    """
    return _Local.apply(cols, weight, bias, feedback.learned, feedback)


# --- B in W's place among the tensors torch's own op saves ----------------------------------
#
# Where B comes from `Feedback.of` (no learned B, no direct δx), a convolution needs no
# Function: it runs torch's own op under a saved-tensor hook that saves B where the op saves
# W. torch's backward then computes δx through B, and the weight and bias gradients as it
# always does (they do not read W's values): no Python runs in the backward but the unpack
# hook, and aten's convolution_backward is called from C++, not through Python's argument
# parsing (most of a convolution Function's cost). A Linear keeps its Function: its
# backward's products are cheap to call from Python, and the hooks cost more than it
# (layer_cost.py). kp's learned B keeps it too: B's gradient through W + (B - B), a zero
# that reads B, cost as much as the Function (measured).

_push_hooks = torch._C._autograd._push_saved_tensors_default_hooks
_pop_hooks = torch._C._autograd._pop_saved_tensors_default_hooks
_top_hooks = torch._C._autograd._top_saved_tensors_default_hooks
_hooks_enabled = torch._C._autograd._saved_tensors_hooks_is_enabled


#: True within `double_backward()`: every layer runs its autograd Function.
_FUNCTIONS: ContextVar[bool] = ContextVar("biograd_functions", default=False)


@contextmanager
def double_backward() -> Iterator[None]:
    """Run the forwards within this block so that their backward can be differentiated
    (create_graph=True: gradient penalties, Hessian-vector products, meta-learning).

    A convolution on a rule whose B is fixed or made from W (fa, ss, frsf, brsf, sign_fixed,
    wm) otherwise runs torch's own op, its backward torch's with B saved in W's place; torch's
    second derivatives of that backward would treat B as W (they reach W's gradient), so a
    create_graph backward through it raises. Within this block it runs biograd's autograd
    Function instead, whose backward is differentiated as written (with B = W, backprop's own
    second derivatives): the same gradients, at a Function's host cost per layer.

        with biograd.double_backward():
            loss = F.cross_entropy(model(x), y)
        (g,) = torch.autograd.grad(loss, x, create_graph=True)
    """
    token = _FUNCTIONS.set(True)
    try:
        yield
    finally:
        _FUNCTIONS.reset(token)


def _substitutable() -> bool:
    """Whether B (from `Feedback.of`) can stand in W's place among the tensors torch's op
    saves: eagerly, outside autocast (which saves a cast copy of W, not W),
    `double_backward` and any saved-tensor hooks of the caller's (checkpointing, offloading:
    they would not see this layer's tensors; torch.func, which disables such hooks)."""
    return (not torch.compiler.is_compiling() and not _any_autocast() and not _FUNCTIONS.get()
            and _top_hooks(False) is None and _hooks_enabled())


class _Saving:
    """The pack hook of one call of an op: W, or a view of it, becomes B (`_FromW`); every
    other tensor is kept with its version, which the unpack checks as autograd checks what it
    saves itself (hooks replace that check)."""

    __slots__ = ("feedback", "swapped", "weight")

    def __init__(self, weight: Tensor, feedback: Feedback) -> None:
        self.weight, self.feedback, self.swapped = weight, feedback, False

    def pack(self, t: Tensor) -> object:
        weight = self.weight
        if t is weight or t._base is weight:
            self.swapped = True
            return _FromW(self.feedback, weight, t)
        return t, t._version


class _FromW:
    """B for the saved W: made at unpack, in the backward, from W as the forward saw it (its
    version checked), laid out as the op saved W (`saved`: W, or the view of it it saved)."""

    __slots__ = ("feedback", "saved", "version", "weight")

    def __init__(self, feedback: Feedback, weight: Tensor, saved: Tensor) -> None:
        self.feedback, self.weight, self.saved = feedback, weight, saved
        self.version = weight._version

    def b(self) -> Tensor:
        w, saved = self.weight, self.saved
        if w._version != self.version:
            raise _modified(w, self.version)
        if torch.is_grad_enabled():  # a backward with create_graph=True
            raise RuntimeError(
                "a backward with create_graph=True reached a convolution that ran torch's own "
                "op with B saved in W's place, whose second derivatives would treat B as W: "
                "run its forward within `with biograd.double_backward():`")
        b = self.feedback.of(w)  # W's shape
        if b.dtype is not w.dtype:
            b = b.to(w.dtype)
        if saved is w:
            return b
        if b.stride() != w.stride():  # B laid out as W, for the view of W the op saved
            b = torch.empty_strided(w.shape, w.stride(), dtype=b.dtype, device=b.device).copy_(b)
        return b.as_strided(saved.shape, saved.stride(),
                            b.storage_offset() + saved.storage_offset() - w.storage_offset())


def _unpack(saved: object) -> Tensor:
    if saved.__class__ is _FromW:
        return saved.b()
    t, version = saved
    if t._version != version:
        raise _modified(t, version)
    return t


def _modified(t: Tensor, version: int) -> RuntimeError:
    return RuntimeError(
        f"one of the variables needed for gradient computation has been modified by an "
        f"inplace operation: [{t.type()} {list(t.shape)}], saved by a biograd layer, is at "
        f"version {t._version}; expected version {version} instead. Modify a copy "
        f"(x = x.clone()), or do it after the backward")


def _through_b(op: Callable[..., Tensor], args: tuple, weight: Tensor,
               feedback: Feedback) -> Tensor | None:
    """op(*args), torch's own op on x and W, with B saved where it saves W; None where the op
    saved no W (a kernel that saved a copy of it: the caller then runs its Function)."""
    saving = _Saving(weight, feedback)
    _push_hooks(saving.pack, _unpack)
    try:
        y = op(*args)
    finally:
        _pop_hooks()
    return y if saving.swapped else None


def feedback_linear(x: Tensor, weight: Tensor, bias: Tensor | None, feedback: Feedback) -> Tensor:
    """y = x Wᵀ + b, with δx = δy B for B = feedback.of(W).

    x: (..., in), weight: (out, in), bias: (out,) or None; returns (..., out).
    """
    if feedback.direct is not None and torch.compiler.is_compiling():
        return _feedback_linear_eagerly(x, weight, bias, feedback)
    if x.dim() == 2:
        return _Linear.apply(x, weight, bias, feedback[1], feedback, 0)  # samples: x's rows
    if feedback.direct is not None:  # it projects onto x as shaped here: (N, ...), batch first
        shape, project = x.shape, feedback.direct
        feedback = feedback._replace(direct=lambda flat: project(shape).view(flat))
    # Flatten outside the Function: for more than 2 dims F.linear returns a view, and a view
    # returned by a custom Function cannot be modified in place (ReLU(inplace=True) after it).
    # The samples are the first dimension (1 for an unbatched x): the others are positions.
    samples = x.shape[0] if x.dim() > 1 else 1
    y = _Linear.apply(x.reshape(-1, x.shape[-1]), weight, bias, feedback.learned, feedback,
                      samples)
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
    if feedback.direct is not None and torch.compiler.is_compiling():
        return _feedback_conv_eagerly(x, weight, bias, feedback, stride, padding, dilation,
                                      groups, transposed, output_padding)
    if x.dim() == weight.dim() - 1:  # unbatched: aten's convolution wants the batch dimension
        return feedback_conv(x.unsqueeze(0), weight, bias, feedback, stride, padding, dilation,
                             groups, transposed, output_padding).squeeze(0)
    # tuples as the layers keep them: aten takes any int sequence, and a list() per argument
    # per call is host time on every step
    if output_padding is None:
        output_padding = _ZEROS[len(stride)]
    if feedback.learned is None and feedback.direct is None:  # B from Feedback.of
        args = (x, weight, bias, stride, padding, dilation, transposed, output_padding, groups)
        if not (x.requires_grad and torch.is_grad_enabled()):
            return torch.convolution(*args)  # no δx to send: torch's op as it is
        if _substitutable():
            y = _through_b(torch.convolution, args, weight, feedback)
            if y is not None:
                return y
    return _Conv.apply(x, weight, bias, feedback.learned, feedback,
                       (stride, padding, dilation, groups, transposed, output_padding))


_ZEROS = {n: (0,) * n for n in (1, 2, 3)}

# How torch.compile must run a layer whose δx is the output error's projection (dfa, drtp):
# eagerly, a graph break, never traced. Its backward needs the error, which exists only once
# the backward has begun; traced ahead, it raises, and dynamo (torch 2.14) then skips the
# calling frame's code for good, in every model of the process that shares it (torchvision's
# ResNet.forward: a native model compiled beside it ran eagerly after).
_project_input_eagerly = torch.compiler.disable(project_input)
_feedback_linear_eagerly = torch.compiler.disable(feedback_linear)
_feedback_conv_eagerly = torch.compiler.disable(feedback_conv)

