"""Drop-in layers and the autograd functions behind them."""

from biograd.nn.attention import MultiheadAttention
from biograd.nn.functional import feedback_conv, feedback_linear
from biograd.nn.layers import (
    Conv1d,
    Conv2d,
    Conv3d,
    ConvTranspose1d,
    ConvTranspose2d,
    ConvTranspose3d,
    FeedbackLayer,
    Linear,
)

__all__ = ["Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d",
           "FeedbackLayer", "Linear", "MultiheadAttention", "feedback_conv", "feedback_linear"]
