"""A recurrent LIF layer that learns by e-prop (Bellec et al. 2020), or by BPTT, on any rule.

Dynamics (leaky integrate-and-fire, reset by subtraction), per step t = 1..T, on x (T, N, I):

    v_t = α v_{t−1} + W_in x_t + b + W_rec z_{t−1} − v_th z_{t−1}     α = exp(−1/τ), v_0 = z_0 = 0
    z_t = H(v_t − v_th)                                                spikes, (N, H)
    out = (1/T) Σ_t z_t                                                the rates, (N, H)

The spike's pseudo-derivative is Bellec's piecewise-linear one, dz_t/dv_t := ψ_t =
(γ/v_th) max(0, 1 − |v_t − v_th|/v_th), γ = 0.3 (their `pseudo_derivative` on v scaled by v_th).

e-prop (Bellec, Scherr, Subramoney, Hajek, Salaj, Legenstein & Maass 2020, "A solution to the
learning dilemma for recurrent networks of spiking neurons", Nature Communications 11:3625).
The gradient is factorised into a learning signal L_j and an eligibility trace e_ji that the
forward accumulates in time, dE/dW_ji = Σ_t L_j(t) e_ji(t) with e_ji(t) = ψ_j(t) z̄_i(t), z̄_i
the presynaptic input filtered by the membrane, z̄_i(t) = α z̄_i(t−1) + input_i(t) (for W_in the
input x_t, for W_rec the previous spikes z_{t−1}, for b the constant 1). Here the loss reads the
rates alone, so its error δ = dE/d(out) (N, H) is one vector per sequence, constant in time,
and the update is, in one line,

    dE/dW_ji = Σ_n δ_nj (1/T) Σ_t ψ_nj(t) z̄_ni(t)

The forward keeps, per sample, the sums E_in = Σ_t ψ(t) z̄_in(t)ᵀ (N, H, I), E_rec (N, H, H)
and E_b (N, H), updated in place, and the running v, z and traces (N, H), (N, I); it holds the
ψ and traces of at most CHUNK (16) steps before folding them into the sums in one batched
product (the sums are read and written once per chunk, not once per step). Nothing is kept
for the backward but the sums, and nothing the forward holds grows with T: memory per
sequence is flat in T (BPTT's grows with T). The backward is three contractions with δ.

δ itself is what the readout sends down: a readout on bp sends δ = W_outᵀ e (symmetric
feedback, e the output error), on fa a fixed random Bᵀ e, on kp a learned B that follows W_out
(adaptive): the feedback of e-prop is the readout's rule (biograd.convert(..., last=...)),
nothing here. This is exactly the gradient of the same network with z_{t−1} detached (in the
recurrent input and in the reset): the error reaches W only through each step's own ψ, never
back in time through the spikes.

e-prop is the rule of one recurrent layer: its input gets no error, δx = 0 (zeros where x
needs a gradient, so that a layer below still receives a gradient tensor, as DDP needs).

BPTT (`learning="bptt"`): the same steps under autograd, the spike's gradient ψ, backprop
through time through the recurrence and the reset; W_in x_t and W_rec z_{t−1} run as layers at
every step, so a rule on them (`biograd.convert`) sends the errors through its B, as it does
in biograd's nn.RNN. Both modes compute W_in x_t step by step, as the steps come (e-prop's
forward never holds a (T, N, H) tensor). The two modes share their parameters, state-dict
keys and forward (bit for bit, under autocast too: the products run in its dtype, e-prop's
sums stay in x's); with gradients off both run the plain forward.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from biograd.nn.layers import FeedbackLayer

LEARNING = ("bptt", "eprop")
#: Bellec et al.'s dampening factor γ of the pseudo-derivative.
GAMMA = 0.3
#: e-prop's forward folds its ψ and traces into the eligibility sums every CHUNK steps.
CHUNK = 16


def pseudo_derivative(v: Tensor, threshold: float, gamma: float = GAMMA) -> Tensor:
    """ψ = (γ/v_th) max(0, 1 − |v − v_th|/v_th), the spike's surrogate dz/dv (v's shape)."""
    return (1 - (v - threshold).abs() / threshold).clamp_min(0) * (gamma / threshold)


class _Spike(torch.autograd.Function):
    """z = H(v − v_th) (1 where v > v_th), with the gradient ψ(v)."""

    @staticmethod
    def forward(ctx, v: Tensor, threshold: float, gamma: float) -> Tensor:
        ctx.save_for_backward(v)
        ctx.threshold, ctx.gamma = threshold, gamma
        return (v > threshold).to(v.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (v,) = ctx.saved_tensors
        return grad * pseudo_derivative(v, ctx.threshold, ctx.gamma), None, None


def spike(v: Tensor, threshold: float = 1.0, gamma: float = GAMMA) -> Tensor:
    """H(v − v_th) with the surrogate gradient ψ(v) (`pseudo_derivative`)."""
    return _Spike.apply(v, threshold, gamma)


def _step(v: Tensor, current: Tensor, recurrent: Tensor | None, z: Tensor, alpha: float,
          threshold: float) -> Tensor:
    """v_t from v_{t−1}, W_in x_t + b, W_rec z_{t−1} and z_{t−1} (all (N, H)): one expression,
    in one order, in both modes (their forwards agree bit for bit). t = 1: v = W_in x_1 + b."""
    if recurrent is None:
        return current
    return alpha * v + current + recurrent - threshold * z


class _EProp(torch.autograd.Function):
    """The rates of the LIF layer, whose backward is e-prop's (see the module's docstring).

    Inputs: x (T, N, I), W_in (H, I), b (H) or None, W_rec (H, H), the learned feedback of
    W_in and W_rec or None, and whether each takes its W's gradient (kp's B) or zeros (an
    aligning B, whose rule reads the input e-prop does not keep). Returns (N, H).
    """

    @staticmethod
    def forward(ctx, x, w_in, bias, w_rec, learned_in, learned_rec, mirrors, alpha, threshold,
                gamma):
        steps, n, inputs = x.shape
        hidden = w_in.shape[0]
        new = x.new_zeros
        e_in, e_rec = new(n, hidden, inputs), new(n, hidden, hidden)  # Σ_t ψ z̄ᵀ, per sample
        e_b = new(n, hidden) if bias is not None else None
        trace_in, trace_rec, trace_b = new(n, inputs), new(n, hidden), new(n, hidden)
        # the last `CHUNK` steps' ψ and traces, folded into the sums by one batched product:
        # bounded memory (flat in T), and CHUNK times fewer passes over E_rec than step by step
        chunk = min(CHUNK, steps)
        psi_k, in_k, rec_k = new(n, chunk, hidden), new(n, chunk, inputs), new(n, chunk, hidden)
        v = z = total = None
        for t in range(steps):
            recurrent = None if t == 0 else F.linear(z, w_rec)
            v = _step(v, F.linear(x[t], w_in, bias), recurrent, z, alpha, threshold)
            # the presynaptic traces z̄(t) = α z̄(t−1) + input(t) (z̄_rec(1) = 0: z_0 = 0)
            trace_in.mul_(alpha).add_(x[t])
            if t > 0:
                trace_rec.mul_(alpha).add_(z)
            psi = pseudo_derivative(v, threshold, gamma)  # (N, H)
            k = t % chunk
            psi_k[:, k], in_k[:, k], rec_k[:, k] = psi, trace_in, trace_rec
            if k == chunk - 1 or t == steps - 1:  # E += Σ_k ψ(k) z̄(k)ᵀ, per sample
                e_in.baddbmm_(psi_k[:, : k + 1].transpose(1, 2), in_k[:, : k + 1])
                e_rec.baddbmm_(psi_k[:, : k + 1].transpose(1, 2), rec_k[:, : k + 1])
            if e_b is not None:
                trace_b.mul_(alpha).add_(1)
                e_b.addcmul_(psi, trace_b)
            z = (v > threshold).to(v.dtype)
            total = z.clone() if total is None else total.add_(z)
        ctx.save_for_backward(e_in, e_rec, e_b)
        ctx.steps, ctx.x_like, ctx.mirrors = steps, (x.shape, x.dtype, x.device), mirrors
        return total / steps

    @staticmethod
    def backward(ctx, grad):
        e_in, e_rec, e_b = ctx.saved_tensors
        needs = ctx.needs_input_grad
        # δ/T: (N, H), the learning signal L of every step (in the sums' dtype: under autocast
        # the rates, and so δ, come in the products' bf16 or fp16)
        signal = grad.to(e_in.dtype) / ctx.steps
        grad_x = None
        if needs[0]:  # e-prop sends nothing below: zeros, so the layer below gets a gradient
            shape, dtype, device = ctx.x_like
            grad_x = torch.zeros(shape, dtype=dtype, device=device)
        grad_in = torch.einsum("nh,nhi->hi", signal, e_in) if needs[1] or needs[4] else None
        grad_b = (signal * e_b).sum(0) if needs[2] else None
        grad_rec = torch.einsum("nh,nhi->hi", signal, e_rec) if needs[3] or needs[5] else None
        learned = [None, None]  # B's gradient: W's (kp) or zeros (an aligning B stays put)
        for i, (need, grad_w) in enumerate(((needs[4], grad_in), (needs[5], grad_rec))):
            if need:
                learned[i] = grad_w if ctx.mirrors[i] else torch.zeros_like(grad_w)
        return (grad_x, grad_in if needs[1] else None, grad_b, grad_rec if needs[3] else None,
                *learned, None, None, None, None)


def _learned(layer: nn.Module) -> tuple[Tensor | None, bool]:
    """The learned feedback of a converted W_in or W_rec (None where its rule learns none), and
    whether it takes W's gradient (kp's B, as kp says) or zeros: an aligning B's rule reads the
    layer's input, which e-prop does not keep, and under e-prop no B of this layer is used, so
    it stays as it is (every parameter still gets a gradient, as DDP needs)."""
    if not isinstance(layer, FeedbackLayer) or not any(
            n in layer._parameters for n in layer.learning_rule.state):
        return None, False
    feedback = layer.learning_rule.bind_current(layer)
    return feedback.learned, feedback.align is None


class RecurrentLIF(nn.Module):
    """A recurrent layer of LIF neurons: x (T, N, input_size) -> rates (N, hidden_size), the
    mean over time of its spikes (see biograd.nn.eprop for the equations).

    Args:
        input_size, hidden_size: I and H.
        tau: the membrane time constant in steps (> 0): α = exp(−1/τ).
        threshold: v_th (> 0).
        bias: whether W_in has a bias b.
        learning: "eprop" (e-prop's eligibility traces, memory flat in T) or "bptt".

    Modules: `input` (nn.Linear(I, H), W_in and b), `recurrent` (nn.Linear(H, H, bias=False),
    W_rec): biograd.convert puts them on a rule, which acts under BPTT; under e-prop they
    send no error and their B is unused (kp's B still takes W's gradient; an aligning B gets
    zeros). The layer holds no state between forwards.
    """

    #: its output, a rate per neuron, is what biograd.spikes counts: the mean of its spikes
    emits_spikes = True

    def __init__(self, input_size: int, hidden_size: int, *, tau: float = 10.0,
                 threshold: float = 1.0, bias: bool = True, learning: str = "eprop") -> None:
        super().__init__()
        if learning not in LEARNING:
            raise ValueError(f"learning={learning!r}: use one of {', '.join(LEARNING)}")
        for what, value in (("tau", tau), ("threshold", threshold)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{what}={value!r}: use a number > 0")
        self.input = nn.Linear(input_size, hidden_size, bias=bias)
        self.recurrent = nn.Linear(hidden_size, hidden_size, bias=False)
        self.tau, self.threshold, self.learning = float(tau), float(threshold), learning

    @property
    def alpha(self) -> float:
        """The membrane's decay per step, exp(−1/τ)."""
        return math.exp(-1.0 / self.tau)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3 or x.shape[2] != self.input.in_features:
            raise ValueError(f"RecurrentLIF takes x of shape (T, N, {self.input.in_features}), "
                             f"time first; got {tuple(x.shape)}")
        if self.learning == "eprop" and torch.is_grad_enabled():
            w_in, w_rec = self.input.weight, self.recurrent.weight
            (b_in, mirror_in), (b_rec, mirror_rec) = _learned(self.input), \
                _learned(self.recurrent)
            return _EProp.apply(x, w_in, self.input.bias, w_rec, b_in, b_rec,
                                (mirror_in, mirror_rec), self.alpha, self.threshold, GAMMA)
        return self._bptt(x)

    def _bptt(self, x: Tensor) -> Tensor:
        """The steps under autograd; with gradients off, the plain forward of both modes."""
        grad, steps = torch.is_grad_enabled(), x.shape[0]
        v = z = total = None
        for t in range(steps):
            current = self.input(x[t]) if grad else \
                F.linear(x[t], self.input.weight, self.input.bias)
            recurrent = None
            if t > 0:
                recurrent = self.recurrent(z) if grad else F.linear(z, self.recurrent.weight)
            v = _step(v, current, recurrent, z, self.alpha, self.threshold)
            z = spike(v, self.threshold, GAMMA) if grad else (v > self.threshold).to(v.dtype)
            total = z if total is None else total + z
        return total / steps

    def extra_repr(self) -> str:
        return f"tau={self.tau:g}, threshold={self.threshold:g}, learning={self.learning!r}"
