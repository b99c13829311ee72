"""snntorch's neurons that fold time into the batch for the layer they hold.

snntorch 1.0.0 keeps its weights in plain nn.Linear and nn.Conv2d modules, which convert as
any: the layers of a tutorial net, and the `recurrent` Linear or Conv2d of RLeaky and
RSynaptic (called as a module at every step). One neuron calls its layer on all T steps at
once: LinearLeaky runs its `linear` on (T·N, in), the sequence (T, N, in) folded into the
batch, so a dfa or drtp layer there must know it holds T steps; `biograd.convert` gives every
LinearLeaky the subclass here (imported only when it meets one), which tells it
(`folded_steps`), and `unconvert` gives snntorch's back.
"""

from __future__ import annotations

from snntorch import LinearLeaky as _LinearLeaky
from torch import Tensor

from biograd.rules.dfa import folded_steps


class LinearLeaky(_LinearLeaky):
    """snntorch's LinearLeaky (input (T, N, in)), telling its layer's rule the T steps that
    it folds into the batch."""

    torch_class = _LinearLeaky  # what `unconvert` gives back

    def forward(self, input_: Tensor):
        with folded_steps(input_.shape[0]):
            return super().forward(input_)
