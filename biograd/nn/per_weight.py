"""Drop-ins for torch layers with several weight matrices, each on a rule state of its own.

A FeedbackLayer is one weight and its rule's state (B, |M|, a counter, a seed). A torch layer
with several weights (nn.LSTM: weight_ih_l0, weight_hh_l0, weight_hr_l0, ... per layer and
direction) keeps its own Parameters, under torch's names, and gets one `WeightFeedback` per
weight, a FeedbackLayer that holds that weight's rule state and reads W from its owner:

    lstm.weight_hh_l0                       torch's Parameter, torch's key
    lstm.per_weight.weight_hh_l0            its WeightFeedback: a layer of biograd.feedback_layers
    lstm.per_weight.weight_hh_l0.feedback   fa's B, (4H, H), in the state dict beside torch's keys

So everything that walks the feedback layers (after_step's mirror passes and sign clamps,
feedback_buffers for DDP, weight_angles, weight_decay_groups) sees each weight as a layer of
its own, named apart (input and recurrent weights apart), and torch's own keys still load
into the drop-in, and out of it, with strict=True.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn
from torch.nn.utils import parametrize

from biograd._seed import mix
from biograd.nn.layers import DROP_INS, FeedbackLayer, copy_module
from biograd.rules.base import Feedback, Rule


class WeightFeedback(FeedbackLayer):
    """The rule of one weight of a `PerWeight` drop-in: the rule's state lives here, W stays the
    owner's Parameter (`weight` reads it, `weight_key` names it). It computes nothing: its owner
    runs the products, with the Feedback this holder binds (`_feedback()`)."""

    def __init__(self, owner: nn.Module, key: str, rule: str | Rule, seed: int | None) -> None:
        nn.Module.__init__(self)
        self.__dict__["owner"] = owner  # a plain reference: the owner holds this module
        self.weight_key = key
        self.set_rule(rule, seed)

    @property
    def weight(self) -> Tensor:
        """W: the owner's Parameter `weight_key`."""
        return getattr(self.__dict__["owner"], self.weight_key)

    def to_torch(self) -> nn.Module:
        raise RuntimeError(f"{self.weight_key}'s rule is part of its owner, "
                           f"{type(self.__dict__['owner']).__name__}: unconvert the owner "
                           f"(biograd.unconvert(model)), not this part of it")

    def extra_repr(self) -> str:
        return f"{self.weight_key} {tuple(self.weight.shape)}, rule={self.learning_rule}"


class PerWeight(nn.Module):
    """What a drop-in with several weights adds to its torch layer (a mixin, listed first).

    Subclasses list the weights that follow the rule (`rule_weights`); each gets a
    WeightFeedback in `per_weight`, seeded mix(seed, its name), so every DDP rank draws the same
    feedback. `biograd.convert` converts and switches such a layer as one (one rule, one name),
    and `unconvert` gives back the torch layer with the same Parameter objects.
    """

    #: A weight `convert` checks exists before converting (a lazy layer, the meta device).
    weight_name: ClassVar[str]
    #: Its torch layer's forward reads no child's weight (see FeedbackLayer.reads_children).
    reads_children: ClassVar[bool] = False
    per_weight: nn.ModuleDict

    def rule_weights(self) -> list[str]:
        """The names of the weights that follow the rule, in the order of torch's keys."""
        raise NotImplementedError

    def _set_up(self, rule: str | Rule, seed: int | None) -> None:
        self.per_weight = nn.ModuleDict({
            key: WeightFeedback(self, key, rule, None if seed is None else mix(seed, key))
            for key in self.rule_weights()})

    @classmethod
    def from_torch(cls, module: nn.Module, rule: str | Rule, seed: int | None = None):
        """A drop-in sharing `module`'s parameters, buffers and attributes, on `rule`."""
        if parametrize.is_parametrized(module):
            raise ValueError(f"{type(module).__bases__[0].__name__} with a parametrised "
                             f"weight: no rule "
                             f"supports it yet; leave it out of the conversion (exclude=its "
                             f"name)")
        new = copy_module(module, cls)
        new.__dict__["torch_class"] = type(module)
        new._unshare(new)
        new._set_up(rule, seed)
        return new

    def _unshare(self, copied: nn.Module) -> None:
        """After copy_module: give `copied` lists of its own where the torch layer keeps lists
        of its tensors (RNNBase's _flat_weights), as it has dicts of its own."""

    def to_torch(self) -> nn.Module:
        """The torch layer this one stands for, sharing its parameters; the rules' state is
        left behind."""
        cls = self.__dict__.get("torch_class") or next(
            base for base in type(self).__mro__ if base in DROP_INS)
        plain = copy_module(self, cls, skip={"torch_class"})
        plain._modules.pop("per_weight", None)
        self._unshare(plain)
        return plain

    def set_rule(self, rule: str | Rule, seed: int | None = None) -> None:
        """Put every weight on `rule`, weight k's state drawn from mix(seed, k) (without a
        seed: each keeps or derives its own, as FeedbackLayer.set_rule)."""
        for key, holder in self.per_weight.items():
            holder.set_rule(rule, None if seed is None else mix(seed, key))

    @property
    def rule(self) -> str:
        """The name of the weights' rule, or of each weight's where they differ."""
        rules = {str(h.learning_rule) for h in self.per_weight.values()}
        if len(rules) == 1:
            return rules.pop()
        return ", ".join(f"{k}: {h.learning_rule}" for k, h in self.per_weight.items())

    def feedback_weights(self) -> dict[str, Tensor]:
        """{weight name: the B its backward uses} (brsf: the latest draw)."""
        return {key: holder.feedback_weight() for key, holder in self.per_weight.items()}

    def on_torch(self) -> bool:
        """True when every weight learns through itself (bp, dfa_blocks): torch's forward runs."""
        return all(h.learning_rule.transports_weights for h in self.per_weight.values())

    def bind(self, key: str) -> Feedback | None:
        """Weight `key`'s Feedback for this forward pass, or None for a weight on a rule that
        transports it (bp: its product runs under plain autograd)."""
        holder = self.per_weight[key]
        return None if holder.learning_rule.transports_weights else holder._feedback()

    def explain(self, err: Exception) -> None:
        """Raise torch's error for an autograd feature the layers do not support again,
        naming this layer (see FeedbackLayer._explain); else return."""
        if "setup_context" in str(err) or "jvp" in str(err):
            raise RuntimeError(
                f"{type(self).__name__} on rule {self.rule}: torch.func transforms (vmap, "
                f"grad, jacrev, jvp) and forward-mode AD need an autograd.Function with "
                f"setup_context and jvp, which biograd's layers leave out: put this layer on "
                f"bp, or biograd.unconvert the model, to use them") from err

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rule={self.rule}"


def holders(module: nn.Module) -> list[WeightFeedback]:
    """The WeightFeedback layers of a PerWeight drop-in (none for any other module)."""
    found = module._modules.get("per_weight") if isinstance(module, PerWeight) else None
    return [] if found is None else list(found.values())
