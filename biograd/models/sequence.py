"""Sequence models on images: an LSTM or a GRU that reads an image row by row.

    image (N, C, H, W) --rows--> (N, T = H, C·W) --nn.LSTM / nn.GRU--> h_T (N, D·hidden)
      --fc--> logits (N, K)

Each row of the image is one time step of C·W inputs (its channels side by side): 28 steps of
28 pixels on MNIST and Fashion-MNIST, 8 of 8 on digits, 32 of 96 on CIFAR-10. The recurrent
layer is torch's own `nn.LSTM` or `nn.GRU` (batch_first), so `biograd.convert` puts it on the
rule like any other layer: its input and recurrent weights each get a feedback of their own,
and the errors go back in time through B_hh (docs/beyond.md#time-recurrent-layers). The
readout is an `nn.Linear` on the last layer's final hidden state: with one direction the
output at the last row, which has read the whole image; with `bidirectional`, the forward
direction's state there and the backward direction's at the first row (the backward's output
at the last row has read that row alone), concatenated.

On bp and with gradients off (evaluation) the converted layer runs torch's own forward, the
fused kernel included; on any other rule it runs the steps in Python, each recurrent product
through its rule (benchmarks/sequence_cost.py measures what that costs).
"""

from __future__ import annotations

from torch import Tensor, nn

from biograd.models.registry import register_model

#: The (channels, side) pairs the models are meant for: digits, (Fashion-)MNIST, CIFAR-10.
INPUTS = ((1, 8), (1, 28), (3, 32))


class FinalState(nn.Module):
    """Rows (N, T, C·W) -> the recurrent layer's final hidden state (N, D·hidden): the last
    layer's, both directions' side by side with `bidirectional`. One tensor out, so that it
    is a block for dfa_blocks (blocks="auto" finds it): B e at its output, backprop through
    time inside.

    Module: `rnn`, the nn.LSTM or nn.GRU (batch_first).
    """

    def __init__(self, rnn: nn.LSTM | nn.GRU) -> None:
        super().__init__()
        self.rnn = rnn

    def forward(self, rows: Tensor) -> Tensor:
        _, state = self.rnn(rows)
        h_n = state[0] if isinstance(state, tuple) else state  # LSTM's: (h_n, c_n)
        directions = 2 if self.rnn.bidirectional else 1
        last = h_n[-directions:]  # (D, N, hidden): the last layer's final states
        return last.transpose(0, 1).reshape(rows.shape[0], -1)  # (N, D·hidden)


class RowReader(nn.Module):
    """(N, in_channels, H, width) -> (N, num_classes): rows as time steps.

    Modules: `encoder` (FinalState: `encoder.rnn` is the nn.LSTM or nn.GRU, batch_first,
    input_size in_channels·width), `fc` (nn.Linear from the final state, hidden or 2·hidden
    wide, to the classes).
    """

    def __init__(self, kind: type[nn.LSTM] | type[nn.GRU], num_classes: int, in_channels: int,
                 width: int, hidden: int, num_layers: int, bidirectional: bool,
                 dropout: float) -> None:
        super().__init__()
        self.in_channels, self.width = in_channels, width
        self.encoder = FinalState(kind(in_channels * width, hidden, num_layers,
                                       batch_first=True, dropout=dropout,
                                       bidirectional=bidirectional))
        self.fc = nn.Linear((2 if bidirectional else 1) * hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] * x.shape[3] != self.in_channels * self.width:
            raise ValueError(
                f"{type(self.encoder.rnn).__name__.lower()} reads rows of {self.in_channels}×"
                f"{self.width} values, built for {self.in_channels}-channel images "
                f"{self.width} wide; got an input of shape {tuple(x.shape)}: build it with "
                f"that image_size and in_channels")
        n, c, h, w = x.shape
        rows = x.permute(0, 2, 1, 3).reshape(n, h, c * w)  # (N, T = H, C·W)
        return self.fc(self.encoder(rows))  # (N, num_classes)


def _check(bidirectional: bool, dropout: float, num_layers: int) -> None:
    if not isinstance(bidirectional, bool):
        raise ValueError(f"bidirectional={bidirectional!r}: use true or false")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"dropout={dropout!r}: use a probability >= 0 and < 1")
    if dropout and num_layers == 1:
        raise ValueError(f"dropout={dropout!r} acts between layers, and num_layers=1 has "
                         f"none: give num_layers >= 2, or leave dropout out")


@register_model(inputs=INPUTS)
def lstm(
    num_classes: int = 10, in_channels: int = 1, *, image_size: int = 28, hidden: int = 128,
    num_layers: int = 1, bidirectional: bool = False, dropout: float = 0.0,
) -> RowReader:
    """An LSTM reading the image row by row (H steps of C·W), a linear readout on h_T.

    (N, in_channels, H, image_size) -> (N, num_classes): rows must be image_size wide, any
    number H of them. hidden: the LSTM's hidden size; num_layers: stacked LSTM layers;
    bidirectional: a second direction reading the rows bottom up (the readout then takes both
    final states); dropout: torch's dropout between stacked layers (num_layers >= 2).
    """
    _check(bidirectional, dropout, num_layers)
    return RowReader(nn.LSTM, num_classes, in_channels, image_size, hidden, num_layers,
                     bidirectional, float(dropout))


@register_model(inputs=INPUTS)
def gru(
    num_classes: int = 10, in_channels: int = 1, *, image_size: int = 28, hidden: int = 128,
    num_layers: int = 1, bidirectional: bool = False, dropout: float = 0.0,
) -> RowReader:
    """A GRU reading the image row by row (H steps of C·W), a linear readout on h_T.

    (N, in_channels, H, image_size) -> (N, num_classes), options as lstm's.
    """
    _check(bidirectional, dropout, num_layers)
    return RowReader(nn.GRU, num_classes, in_channels, image_size, hidden, num_layers,
                     bidirectional, float(dropout))
