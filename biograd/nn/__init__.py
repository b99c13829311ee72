"""Drop-in layers and the autograd functions behind them."""

from biograd.nn.attention import MultiheadAttention
from biograd.nn.functional import feedback_conv, feedback_linear, feedback_local
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
from biograd.nn.local import LocallyConnected2d

__all__ = ["Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d",
           "FeedbackLayer", "Linear", "LocallyConnected2d", "MultiheadAttention", "feedback_conv",
           "feedback_linear", "feedback_local"]
