"""Drop-in nn.MultiheadAttention whose in-projection and out-projection follow a rule.

torch's MultiheadAttention hands its weights to F.multi_head_attention_forward, so converting
its out_proj alone would change nothing. This one runs the same maths through modules:

    [q | k | v] = x W_inᵀ + b_in     W_in = in_proj_weight, (3E, E): one feedback_linear
    a_h = softmax(q_h k_hᵀ / sqrt(d) + mask) v_h                  per head h, d = E / H
    y = out_proj([a_1 | ... | a_H])                                  a biograd Linear

so the in-projection's input gradient is δx = δ[q | k | v] B, with B of W_in's shape (the
layer's rule and its state live on this module: `weight` is in_proj_weight), and out_proj's
goes through its own B. Cross-attention projects the query, key and value through the rows of
W_in (and of B) that torch's uses. The attention itself has no weights: it is backprop.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from biograd._seed import mix
from biograd.nn.functional import feedback_linear
from biograd.nn.layers import DROP_INS, FeedbackLayer, Linear
from biograd.rules.base import Feedback


def _rows(feedback: Feedback, weight: Tensor, start: int, stop: int) -> Feedback:
    """The feedback of rows start:stop of W (W_q, W_k or W_v of the packed W_in): those rows of
    B, made from the whole W; a learned B's rows get the rows' gradient (an aligning B's, its
    rule's on those rows and the input they project)."""
    if feedback.direct is not None:  # dfa: the projection onto each input, whatever the rows
        return feedback
    learned = None if feedback.learned is None else feedback.learned[start:stop]
    return Feedback(make=lambda w: feedback.of(weight)[start:stop], learned=learned,
                    align=feedback.align)


def _float_mask(mask: Tensor | None, name: str, dtype: torch.dtype) -> Tensor | None:
    """A mask as one added to the scores: bool True (not allowed) -> -inf, float kept."""
    if mask is None or mask.is_floating_point():
        return mask
    if mask.dtype != torch.bool:
        raise TypeError(f"{name} is {mask.dtype}: give a bool mask (True: not allowed) or a "
                        f"float mask (added to the scores)")
    return torch.zeros_like(mask, dtype=dtype).masked_fill_(mask, float("-inf"))


class MultiheadAttention(FeedbackLayer, nn.MultiheadAttention):
    """nn.MultiheadAttention (same constructor, parameters and outputs) with δx = δ[q|k|v] B.

    Only packed projections (kdim = vdim = embed_dim, torch's in_proj_weight) can follow a
    rule: the rule keeps one B of W_in's shape (3E, E), initialised as a Linear's (its seed
    scale is 1/sqrt(E)). Made directly, its out_proj is a biograd Linear on the same rule;
    `biograd.convert` converts out_proj as the layer it is (so per-layer `rules` reach it), and
    `set_rule` changes the in-projection's rule only.
    """

    #: The rule acts on the in-projection's weight.
    weight_name = "in_proj_weight"
    #: torch's forward reads out_proj.weight directly: left unconverted, out_proj is too.
    reads_children = True

    def __init__(self, *args, rule="bp", seed=None, **kwargs):
        nn.MultiheadAttention.__init__(self, *args, **kwargs)
        _check_packed(self)
        self.set_rule(rule, seed)
        self.out_proj = Linear.from_torch(self.out_proj, self.learning_rule,
                                          mix(self.feedback_seed, "out_proj"))

    @classmethod
    def from_torch(cls, module: nn.Module, rule, seed=None):
        _check_packed(module)
        return super().from_torch(module, rule, seed)

    @property
    def weight(self) -> Tensor:
        """W_in, (3E, E): W_q, W_k and W_v stacked, the matrix the rule's B stands for."""
        return self.in_proj_weight

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """torch's MultiheadAttention.forward: query (L, N, E), key and value (S, N, E) (batch
        first: (N, L, E), (N, S, E); unbatched: (L, E), (S, E)); returns the output, of the
        query's shape, and the weights (N, L, S) ((N, H, L, S) unaveraged) or None."""
        if self.learning_rule.transports_weights and _transports(self.out_proj):
            return nn.MultiheadAttention.forward(  # torch's own, fast path included
                self, query, key, value, key_padding_mask, need_weights, attn_mask,
                average_attn_weights, is_causal)
        try:
            return self._attend(query, key, value, key_padding_mask, need_weights, attn_mask,
                                average_attn_weights, is_causal)
        except (RuntimeError, NotImplementedError) as err:
            self._explain(err)
            raise

    def _attend(self, query, key, value, key_padding_mask, need_weights, attn_mask,
                average_attn_weights, is_causal):
        if any(t.is_nested for t in (query, key, value)):
            raise ValueError(f"{type(self).__name__} on {self.learning_rule}: nested tensors "
                             f"run only on bp (torch's fast path); pad the sequences and give "
                             f"a key_padding_mask")
        batched = query.dim() == 3
        same_kv, same_qkv = key is value, query is key and key is value
        if not batched:  # one sequence: a batch of one
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        n, length, e = query.shape  # from here on batch first: (N, L, E), key (N, S, E)
        heads, d = self.num_heads, self.head_dim
        if e != self.embed_dim:
            raise ValueError(f"query has {e} features, but the layer's embed_dim is "
                             f"{self.embed_dim}: give queries of embed_dim features")

        q, k, v = self._project(query, key, value, same_kv, same_qkv)  # each (N, ·, E)

        key_padding_mask = _float_mask(key_padding_mask, "key_padding_mask", q.dtype)
        if is_causal and attn_mask is None:
            raise RuntimeError("is_causal is a hint that attn_mask is the causal mask: give "
                               "attn_mask too (nn.Transformer.generate_square_subsequent_mask)")
        causal = is_causal and key_padding_mask is None and not need_weights
        attn_mask = None if causal else _float_mask(attn_mask, "attn_mask", q.dtype)
        if attn_mask is not None:  # (L, S) or (N H, L, S) -> broadcastable to (N, H, L, S)
            attn_mask = attn_mask.view(-1, heads, *attn_mask.shape[-2:]) \
                if attn_mask.dim() == 3 else attn_mask[None, None]

        def extend(mask: Tensor | None) -> Tensor | None:  # one more key, never masked
            return None if mask is None else F.pad(mask, (0, 1))

        if self.bias_k is not None:  # a learned key and value appended to every sequence
            k = torch.cat([k, self.bias_k.expand(n, 1, e)], dim=1)
            v = torch.cat([v, self.bias_v.expand(n, 1, e)], dim=1)
            attn_mask, key_padding_mask = extend(attn_mask), extend(key_padding_mask)
        q = q.view(n, length, heads, d).transpose(1, 2)  # (N, H, L, d)
        k = k.view(n, -1, heads, d).transpose(1, 2)  # (N, H, S, d)
        v = v.view(n, -1, heads, d).transpose(1, 2)
        if self.add_zero_attn:  # and a key and value of zeros
            k = torch.cat([k, k.new_zeros(n, heads, 1, d)], dim=2)
            v = torch.cat([v, v.new_zeros(n, heads, 1, d)], dim=2)
            attn_mask, key_padding_mask = extend(attn_mask), extend(key_padding_mask)
        mask = attn_mask
        if key_padding_mask is not None:
            padding = key_padding_mask[:, None, None, :]  # (N, 1, 1, S)
            mask = padding if mask is None else mask + padding

        dropout = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = (q * math.sqrt(1.0 / d)) @ k.transpose(-2, -1)  # (N, H, L, S)
            if mask is not None:
                scores = scores + mask
            weights = torch.softmax(scores, dim=-1)
            if dropout > 0:  # the weights returned are those used, as torch's
                weights = F.dropout(weights, p=dropout)
            out = weights @ v  # (N, H, L, d)
            if average_attn_weights:
                weights = weights.mean(dim=1)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                                 is_causal=causal)
        out = self.out_proj(out.transpose(1, 2).reshape(n, length, e))  # (N, L, E)
        if not batched:
            return out.squeeze(0), None if weights is None else weights.squeeze(0)
        if not self.batch_first:
            out = out.transpose(0, 1)
        return out, weights

    def _project(self, query, key, value, same_kv, same_qkv):
        """q, k, v through W_in: one product for self-attention, else the rows of each."""
        w, b, feedback, e = self.weight, self.in_proj_bias, self._feedback(), self.embed_dim

        def rows(x: Tensor, start: int, stop: int) -> Tensor:
            bias = None if b is None else b[start:stop]
            return feedback_linear(x, w[start:stop], bias, _rows(feedback, w, start, stop))

        if same_qkv:
            return feedback_linear(query, w, b, feedback).chunk(3, dim=-1)
        if same_kv:
            return (rows(query, 0, e), *rows(key, e, 3 * e).chunk(2, dim=-1))
        return rows(query, 0, e), rows(key, e, 2 * e), rows(value, 2 * e, 3 * e)

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, " \
               f"batch_first={self.batch_first}, rule={self.learning_rule}"


def _transports(module: nn.Module) -> bool:
    """True if `module` learns through W itself (a torch layer, or a biograd one on bp)."""
    return not isinstance(module, FeedbackLayer) or module.learning_rule.transports_weights


def _check_packed(module: nn.Module) -> None:
    if not module._qkv_same_embed_dim:
        raise ValueError(
            f"MultiheadAttention(embed_dim={module.embed_dim}, kdim={module.kdim}, "
            f"vdim={module.vdim}) keeps separate q/k/v weights, which no rule supports yet: "
            f"leave it out of the conversion (exclude=its name)")


DROP_INS[nn.MultiheadAttention] = MultiheadAttention
