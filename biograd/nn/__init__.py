"""Drop-in layers and the autograd functions behind them."""

from biograd.nn.attention import MultiheadAttention
from biograd.nn.eprop import RecurrentLIF
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
from biograd.nn.per_weight import PerWeight, WeightFeedback
from biograd.nn.recurrent import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell

__all__ = ["GRU", "LSTM", "RNN", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d",
           "ConvTranspose2d", "ConvTranspose3d", "FeedbackLayer", "GRUCell", "LSTMCell", "Linear",
           "LocallyConnected2d", "MultiheadAttention", "PerWeight", "RNNCell", "RecurrentLIF",
           "WeightFeedback", "feedback_conv", "feedback_linear", "feedback_local"]
