"""Drop-in nn.RNN, nn.GRU, nn.LSTM and their cells: errors go down, and back in time, through B.

Per layer and direction, on a sequence x (T, N, I) (time first here, whatever the caller's
layout), the products that hold weights are feedback products and the rest is plain autograd:

    gᵢ = x W_ihᵀ + b_ih          (T, N, G)  one product over all T steps: it is not recurrent
    gₕ = h_{t−1} W_hhᵀ + b_hh    (N, G)     one product per step
    RNN   h_t = tanh(gᵢ_t + gₕ)  (relu with nonlinearity="relu")                      G = H
    GRU   r = σ(gᵢʳ + gₕʳ), z = σ(gᵢᶻ + gₕᶻ), n = tanh(gᵢⁿ + r ⊙ gₕⁿ), h_t = (h_{t−1} − n) ⊙ z + n
    LSTM  i, f, o = σ(gᵢ_t + gₕ), g = tanh(gᵢ_t + gₕ)                                 G = 4H
          c_t = f ⊙ c_{t−1} + i ⊙ g, h_t = o ⊙ tanh(c_t), then h_t W_hrᵀ (P, proj_size)

in torch's own ops and order, so the forward is torch's reference CPU computation bit for bit
(nn.LSTM on CPU runs oneDNN's fused kernel, which differs from it in the last bits). The
backward is backprop through time in which each product sends its input gradient through its
weight's B (`feedback_linear`): δx_t = δgᵢ_t B_ih to the input, δh_{t−1} = δgₕ_t B_hh back one
step (with LSTM's projection: δh_t = δ(h_t W_hrᵀ) B_hr), each weight's B decided by its rule as
for a Linear (B = W is torch's BPTT). The element-wise paths back in time, GRU's z ⊙ h_{t−1}
and LSTM's f ⊙ c_{t−1}, carry no weight, so they are exact. Weight gradients are the true local
ones given the errors that arrived: dW_hh = Σ_t δgₕ_tᵀ h_{t−1}.

Rules that project a signal from the model's output (dfa, drtp): the input product sends B_ih e
to every step's x_t (one B_ih (K, I) for every step: `folded_steps`), and each step's recurrent
product sends B_hh e to h_{t−1}: no error passes through W_ih or W_hh, only along the
element-wise paths. With B = W everywhere (bp, dfa_blocks) and whenever gradients are off, the
torch layer's own forward runs, fused kernel included.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from biograd.nn.functional import LinearMap, feedback_linear
from biograd.nn.layers import DROP_INS
from biograd.nn.per_weight import PerWeight
from biograd.rules.base import Feedback, Rule
from biograd.rules.dfa import folded_steps


def _product(x: Tensor, weight: Tensor, bias: Tensor | None, feedback: Feedback | None) -> Tensor:
    """x Wᵀ + b: under plain autograd (feedback None: B = W), else through the rule's B."""
    if feedback is None:
        return F.linear(x, weight, bias)
    return feedback_linear(x, weight, bias, feedback)


def cell_step(mode: str, gi: Tensor, gh: Tensor, h: Tensor,
              c: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """One step from its two products gi = x Wᵢₕᵀ + bᵢₕ and gh = h Wₕₕᵀ + bₕₕ, both (N, G):
    (h_t, c_t) (c None but for LSTM), in torch's CPU ops and order (aten/src/ATen/native/
    RNN.cpp: SimpleCell, GRUCell, LSTMCell), without LSTM's projection."""
    if mode == "LSTM":
        i, f, g, o = (gh + gi).chunk(4, 1)
        c = f.sigmoid() * c + i.sigmoid() * g.tanh()
        return o.sigmoid() * c.tanh(), c
    if mode == "GRU":
        size = h.shape[1]
        # r's and z's sums, as torch adds them in place into gh's rows: the nonlinearities then
        # run on rows of the same layout, which gives torch's bits
        rz = gh[:, : 2 * size] + gi[:, : 2 * size]
        r, z = rz[:, :size].sigmoid(), rz[:, size:].sigmoid()
        n = (gi[:, 2 * size:] + gh[:, 2 * size:] * r).tanh()
        return (h - n) * z + n, None
    s = gh + gi
    return (s.tanh() if mode == "RNN_TANH" else s.relu()), None


class _Recurrent(PerWeight):
    """What biograd's RNN, GRU and LSTM add to torch's: a rule per weight (`per_weight`) and
    the forward as a loop over time through the rules' products (see the module's docstring).

    Takes torch's inputs: (T, N, I) (batch_first: (N, T, I)), unbatched (T, I), or a
    PackedSequence (not on dfa or drtp, whose output error has one row per sequence); h0 (and
    LSTM's c0) as torch's, zeros by default. Returns torch's outputs.
    """

    weight_name = "weight_ih_l0"
    mode: str
    hidden_size: int
    num_layers: int
    bidirectional: bool
    batch_first: bool
    proj_size: int
    dropout: float
    _flat_weights: list
    _flat_weights_names: list[str]

    def __init__(self, *args, rule: str | Rule = "bp", seed: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._set_up(rule, seed)

    def rule_weights(self) -> list[str]:
        return [n for n in self._flat_weights_names if n.startswith("weight")]

    def _unshare(self, copied: nn.Module) -> None:
        copied._flat_weights = list(copied._flat_weights)

    def forward(self, input, hx=None):
        """torch's forward: (output, h_n), or for LSTM (output, (h_n, c_n))."""
        if self.on_torch() or not torch.is_grad_enabled():
            return super().forward(input, hx)
        try:
            return self._forward(input, hx)
        except (RuntimeError, NotImplementedError) as err:
            self.explain(err)
            raise

    def _forward(self, input, hx):
        lstm = self.mode == "LSTM"
        kind = type(self).__name__
        directions = 2 if self.bidirectional else 1
        layers = self.num_layers * directions
        h_size = self.proj_size or self.hidden_size
        packed = isinstance(input, PackedSequence)
        if packed:
            if any(h.learning_rule.direct for h in self.per_weight.values()):
                raise ValueError(
                    f"{kind} on {self.rule}: a PackedSequence has no batch dimension for the "
                    f"output signal to be projected on: give the padded batch "
                    f"(torch.nn.utils.rnn.pad_packed_sequence), or another rule")
            data, batch_sizes, sorted_indices, unsorted_indices = input
            sizes = batch_sizes.tolist()
            n, batched = sizes[0], True
            x = data
        else:
            if input.dim() not in (2, 3):
                raise ValueError(f"{kind}: Expected input to be 2D or 3D, got {input.dim()}D "
                                 f"instead")
            batched = input.dim() == 3
            if not batched:  # one sequence: a batch of one, as torch
                input = input.unsqueeze(0 if self.batch_first else 1)
            x = input.transpose(0, 1) if self.batch_first else input  # (T, N, I)
            n, sizes, sorted_indices = x.shape[1], None, None
        like = {"dtype": x.dtype, "device": x.device}
        if hx is None:
            h0 = torch.zeros(layers, n, h_size, **like)
            c0 = torch.zeros(layers, n, self.hidden_size, **like) if lstm else None
            hx = (h0, c0) if lstm else h0
        else:
            hx = self._given_hidden(hx, batched)
            if sorted_indices is not None:
                hx = self.permute_hidden(hx, sorted_indices)
        self.check_forward_args(data if packed else input, hx,
                                batch_sizes if packed else None)
        h0, c0 = hx if lstm else (hx, None)

        h_n, c_n = [], []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(directions):
                k = layer * directions + direction
                out, h, c = self._direction(x, h0[k], c0[k] if lstm else None, layer,
                                            bool(direction), sizes)
                outputs.append(out)
                h_n.append(h)
                c_n.append(c)
            x = outputs[0] if directions == 1 else torch.cat(outputs, -1)
            if self.dropout and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, training=True)
        h_n = torch.stack(h_n)
        c_n = torch.stack(c_n) if lstm else None
        if packed:
            output = PackedSequence(x, batch_sizes, sorted_indices, unsorted_indices)
            hidden = self.permute_hidden((h_n, c_n) if lstm else h_n, unsorted_indices)
            return output, hidden
        output = x.transpose(0, 1) if self.batch_first else x
        if not batched:
            output = output.squeeze(0 if self.batch_first else 1)
            h_n = h_n.squeeze(1)
            c_n = c_n.squeeze(1) if lstm else None
        return output, ((h_n, c_n) if lstm else h_n)

    def _given_hidden(self, hx, batched: bool):
        """hx as given, checked for its number of dimensions; unbatched: a batch of one."""
        want = 3 if batched else 2
        what = "batched 3-D" if batched else "unbatched 2-D"
        if self.mode == "LSTM":
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError(f"LSTM: hx is a tuple (h_0, c_0), not {type(hx).__name__}")
            if hx[0].dim() != want or hx[1].dim() != want:
                raise RuntimeError(f"For {what} input, hx and cx should also be {want}-D but "
                                   f"got ({hx[0].dim()}-D, {hx[1].dim()}-D) tensors")
            return tuple(hx) if batched else (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
        if hx.dim() != want:
            raise RuntimeError(f"For {what} input, hx should also be {want}-D but got "
                               f"{hx.dim()}-D tensor")
        return hx if batched else hx.unsqueeze(1)

    def _direction(self, x: Tensor, h0: Tensor, c0: Tensor | None, layer: int, reverse: bool,
                   sizes: list[int] | None) -> tuple[Tensor, Tensor, Tensor | None]:
        """One layer in one direction: x (T, N, I), or a PackedSequence's data (Σ T_n, I) with
        its batch `sizes`; h0 (N, P or H), c0 (N, H). Returns the outputs ((T, N, P or H), or
        the packed rows) and the final h and c."""
        suffix = f"_l{layer}{'_reverse' if reverse else ''}"
        w_ih, w_hh = getattr(self, f"weight_ih{suffix}"), getattr(self, f"weight_hh{suffix}")
        b_ih = getattr(self, f"bias_ih{suffix}") if self.bias else None
        b_hh = getattr(self, f"bias_hh{suffix}") if self.bias else None
        w_hr = getattr(self, f"weight_hr{suffix}") if self.proj_size else None
        gi = self._input_product(x, f"weight_ih{suffix}", w_ih, b_ih, h0.shape[0])
        steps = gi.unbind(0) if sizes is None else gi.split(sizes)
        sizes = sizes or [x.shape[1]] * x.shape[0]
        fb_hh = self.bind(f"weight_hh{suffix}")
        fb_hr = self.bind(f"weight_hr{suffix}") if w_hr is not None else None
        mode = self.mode

        def step(gi_t: Tensor, h: Tensor, c: Tensor | None) -> tuple[Tensor, Tensor | None]:
            h, c = cell_step(mode, gi_t, _product(h, w_hh, b_hh, fb_hh), h, c)
            return (h if w_hr is None else _product(h, w_hr, None, fb_hr)), c

        outs: list[Tensor] = []
        if not reverse:  # a packed batch shrinks as its sequences end (sorted by length)
            h, c, done = h0, c0, []
            for gi_t, size in zip(steps, sizes, strict=True):
                if size < h.shape[0]:
                    done.append((h[size:], None if c is None else c[size:]))
                    h, c = h[:size], None if c is None else c[:size]
                h, c = step(gi_t, h, c)
                outs.append(h)
            if done:  # the final states, in the batch's order
                done = [(h, c), *reversed(done)]
                h = torch.cat([d[0] for d in done])
                c = None if c is None else torch.cat([d[1] for d in done])
        else:  # and grows, backwards, as they start
            h, c = h0[: sizes[-1]], None if c0 is None else c0[: sizes[-1]]
            for gi_t, size in zip(reversed(steps), reversed(sizes), strict=True):
                if size > h.shape[0]:
                    h = torch.cat([h, h0[h.shape[0] : size]])
                    c = None if c is None else torch.cat([c, c0[c.shape[0] : size]])
                h, c = step(gi_t, h, c)
                outs.append(h)
            outs.reverse()
        out = torch.stack(outs) if x.dim() == 3 else torch.cat(outs)  # packed: rows
        return out, h, c

    def _input_product(self, x: Tensor, key: str, weight: Tensor, bias: Tensor | None,
                       samples: int) -> Tensor:
        """gᵢ = x Wᵢₕᵀ + bᵢₕ over the whole sequence: x (T, N, I) -> (T, N, G), or a packed
        sequence's rows (Σ T_n, I) -> (Σ T_n, G), in one product, as torch computes it.

        Bound as a layer whose input holds T steps time first (`folded_steps`), so that a rule
        projecting the output's signal sends each sample's B e to every step of it; a rule
        learning B from the input (the alignment family) counts the `samples` sequences as its
        samples, and their steps as positions, as for a Linear on a batch of sequences."""
        holder = self.per_weight[key]
        if holder.learning_rule.transports_weights:
            return F.linear(x, weight, bias)
        with folded_steps(x.shape[0] if x.dim() == 3 else 1):
            feedback = holder._feedback()
        if feedback.align is not None:
            align = feedback.align
            feedback = feedback._replace(
                align=lambda rows, *args: align(LinearMap(rows.x, samples), *args))
        if bias is None or x.is_contiguous():
            return feedback_linear(x, weight, bias, feedback)
        # as F.linear on a strided 3-D x (batch_first's, made time first): the product, then
        # the bias added (under autocast: both in bf16, so rounded twice); out of place, the
        # same bits: added in place to the Function's output view, the backward went through
        # autograd's CopySlices, which zero-filled and copied the whole (T, N, G) gradient
        y = feedback_linear(x, weight, None, feedback)
        return y + bias.to(y.dtype)


class RNN(_Recurrent, nn.RNN):
    """nn.RNN (tanh or relu) with δx_t = δgᵢ_t B_ih and δh_{t−1} = δgₕ_t B_hh: torch's
    constructor, keys and outputs, plus keyword-only `rule` and `seed`."""


class GRU(_Recurrent, nn.GRU):
    """nn.GRU with δx_t = δgᵢ_t B_ih and δh_{t−1} = δgₕ_t B_hh + δh_t ⊙ z: torch's
    constructor, keys and outputs, plus keyword-only `rule` and `seed`."""


class LSTM(_Recurrent, nn.LSTM):
    """nn.LSTM (proj_size too) with δx_t = δgᵢ_t B_ih, δh_{t−1} = δgₕ_t B_hh and, projected,
    δh_t = δ(h_t W_hrᵀ) B_hr: torch's constructor, keys and outputs, plus keyword-only `rule`
    and `seed`."""


class _Cell(PerWeight):
    """What biograd's RNNCell, GRUCell and LSTMCell add to torch's: one step, whose input
    gradient goes through B_ih and whose hidden state's through B_hh (see `cell_step`)."""

    weight_name = "weight_ih"
    mode: ClassVar[str]
    hidden_size: int
    input_size: int
    nonlinearity: str

    def __init__(self, *args, rule: str | Rule = "bp", seed: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._set_up(rule, seed)

    def rule_weights(self) -> list[str]:
        return ["weight_ih", "weight_hh"]

    def forward(self, input: Tensor, hx=None):
        """torch's forward: h' (N, H), or for LSTMCell (h', c'); unbatched (I,) -> (H,)."""
        if self.on_torch() or not torch.is_grad_enabled():
            return super().forward(input, hx)
        try:
            return self._step(input, hx)
        except (RuntimeError, NotImplementedError) as err:
            self.explain(err)
            raise

    def _step(self, input: Tensor, hx):
        kind, lstm = type(self).__name__, self.mode == "LSTM"
        if input.dim() not in (1, 2):
            raise ValueError(f"{kind}: Expected input to be 1D or 2D, got {input.dim()}D "
                             f"instead")
        batched = input.dim() == 2
        x = input if batched else input.unsqueeze(0)
        if hx is None:
            h = torch.zeros(x.shape[0], self.hidden_size, dtype=x.dtype, device=x.device)
            hx = (h, h) if lstm else h
        states = list(hx) if lstm else [hx]
        for i, state in enumerate(states):
            if state.dim() != input.dim():
                raise ValueError(f"{kind}: Expected hidden{f'[{i}]' if lstm else ''} to be "
                                 f"{input.dim()}D, like the input, got {state.dim()}D instead")
            state = state if batched else state.unsqueeze(0)
            if state.shape != (x.shape[0], self.hidden_size):
                raise RuntimeError(f"{kind}: hidden state of shape {tuple(state.shape)}, but "
                                   f"the input's batch is {x.shape[0]} and hidden_size "
                                   f"{self.hidden_size}")
            states[i] = state
        if x.shape[1] != self.input_size:
            raise RuntimeError(f"{kind}: input has inconsistent input_size: got {x.shape[1]} "
                               f"expected {self.input_size}")
        mode = self.mode if self.mode != "RNN" else f"RNN_{self.nonlinearity.upper()}"
        gi = _product(x, self.weight_ih, self.bias_ih, self.bind("weight_ih"))
        gh = _product(states[0], self.weight_hh, self.bias_hh, self.bind("weight_hh"))
        h, c = cell_step(mode, gi, gh, states[0], states[1] if lstm else None)
        if not batched:
            h, c = h.squeeze(0), None if c is None else c.squeeze(0)
        return (h, c) if lstm else h


class RNNCell(_Cell, nn.RNNCell):
    """nn.RNNCell with δx = δg B_ih and δh = δg B_hh: torch's constructor, keys and outputs,
    plus keyword-only `rule` and `seed`."""

    mode = "RNN"


class GRUCell(_Cell, nn.GRUCell):
    """nn.GRUCell with δx = δgᵢ B_ih and δh = δgₕ B_hh + δh' ⊙ z: torch's constructor, keys
    and outputs, plus keyword-only `rule` and `seed`."""

    mode = "GRU"


class LSTMCell(_Cell, nn.LSTMCell):
    """nn.LSTMCell with δx = δg B_ih and δh = δg B_hh: torch's constructor, keys and outputs,
    plus keyword-only `rule` and `seed`."""

    mode = "LSTM"


for _torch, _ours in ((nn.RNN, RNN), (nn.GRU, GRU), (nn.LSTM, LSTM), (nn.RNNCell, RNNCell),
                      (nn.GRUCell, GRUCell), (nn.LSTMCell, LSTMCell)):
    DROP_INS[_torch] = _ours  # type: ignore[assignment]  (a PerWeight drop-in)
