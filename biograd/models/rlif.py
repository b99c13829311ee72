"""A recurrent spiking network that reads an image row by row, trained by BPTT or e-prop.

    image (N, C, H, W) --rows--> (T = H, N, C·W) --RecurrentLIF--> rates (N, hidden)
      --readout--> logits (N, K)

28 steps of 28 pixels for MNIST and Fashion-MNIST, 8 of 8 for digits. The recurrent layer is
biograd.nn.eprop.RecurrentLIF (LIF neurons, reset by subtraction, Bellec et al.'s
pseudo-derivative); the readout is a linear layer on each neuron's spike rate over the
sequence, registered last, so it is the layer `--last-rule` puts on its rule. Under e-prop
(`learning: eprop`) the readout's rule is e-prop's feedback: bp sends W_outᵀ e (symmetric),
fa a fixed random B (random), kp a B that learns towards W_out (adaptive); `--rule` then only
decides the state the recurrent layer's weights keep. Under BPTT, `--rule` decides the B of
W_in and W_rec as for any layer. No state is held between forwards: the state dict is the
weights (and the rules' feedback) alone, the same keys in both modes.
"""

from __future__ import annotations

from torch import Tensor, nn

from biograd.models.registry import register_model
from biograd.nn.eprop import LEARNING, RecurrentLIF


class RowLIF(nn.Module):
    """See the module's docstring. (N, in_channels, H, W) -> (N, num_classes), W·C inputs per
    step (W = image_size). Modules: `lif` (RecurrentLIF), `readout` (nn.Linear)."""

    def __init__(self, num_classes: int, inputs: int, hidden: int, tau: float,
                 learning: str) -> None:
        super().__init__()
        self.lif = RecurrentLIF(inputs, hidden, tau=tau, learning=learning)
        self.readout = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        if c * w != self.lif.input.in_features:
            raise ValueError(f"rlif was built for rows of {self.lif.input.in_features} values "
                             f"(channels × width), got images {c}×{h}×{w}: build it with the "
                             f"data's image_size and in_channels")
        rows = x.permute(2, 0, 1, 3).reshape(h, n, c * w)  # (T = H, N, C·W), time first
        return self.readout(self.lif(rows))


@register_model(inputs=((1, 8), (1, 28)))
def rlif(
    num_classes: int = 10, in_channels: int = 1, *, image_size: int = 28, hidden: int = 128,
    tau: float = 10.0, learning: str = "bptt",
) -> RowLIF:
    """A recurrent LIF network reading the image row by row, trained by BPTT or e-prop.

    (N, in_channels, H, image_size) -> (N, num_classes): H steps of in_channels·image_size
    inputs. hidden: the LIF neurons. tau: their membrane time constant in steps (> 0).
    learning: "bptt" (surrogate-gradient backprop through time, the rules acting on W_in and
    W_rec) or "eprop" (Bellec et al. 2020: eligibility traces, memory flat in the number of
    rows; the readout's rule is the feedback). See biograd.nn.eprop.
    """
    if learning not in LEARNING:
        raise ValueError(f"learning={learning!r}: use one of {', '.join(LEARNING)}")
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not tau > 0:
        raise ValueError(f"tau={tau!r}: the membrane time constant (in steps) must be a "
                         f"number > 0")
    return RowLIF(num_classes, in_channels * image_size, hidden, float(tau), learning)
