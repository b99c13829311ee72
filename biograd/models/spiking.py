"""A spiking CNN for 8×8 and 28×28 images, built on spikingjelly (biograd[spiking]).

spiking_cnn is small_cnn with spikes: four units of conv-BatchNorm-LIF at widths w, w, 2w, 2w,
a 2×2 max-pool after the second, run for `steps` time steps; the readout is a linear layer on
each channel's spike rate, (N, num_classes) logits that every rule, `biograd train/compare/eval`
and DDP take as any model's.

    image (N, C, H, W) --encode--> (T, N, C, H, W) --units--> spikes (T, N, 2w, H/2, W/2)
      --mean over h, w--> rates (T, N, 2w) --BatchNorm1d--> --mean over t--> (N, 2w)
      --fc--> logits (N, K)

The logits are the readout's input current averaged over time, (1/T) Σ_t fc(r̂_t), r̂_t the
step's channel rates normalised by a BatchNorm (over T·N): by linearity fc runs once, on the
mean. Without the BatchNorm the rates (a few percent at the start) reach fc too small for SGD
to learn it in a few epochs (on digits, 2 epochs: 76% top-1 against 97% with it, and the
normalisation keeps that at T = 1 too). In training a BatchNorm needs more than one value per
channel: T·N >= 2.

Why spikingjelly (2.0.0), not snntorch: in its multi-step mode every layer takes the whole
sequence (T, N, ...) in one call (its Conv2d and BatchNorm2d fold T into the batch, its LIFNode
runs the T steps in one call, a fused kernel on a GPU), so a forward is one call per layer
whatever T; snntorch's neurons take one step per call, a Python loop over T in the model's
forward. biograd converts spikingjelly's layer.Conv2d keeping its step mode, and dfa's output
error reaches every step of a folded layer (docs/beyond.md#spikes). The neurons, their
surrogate gradients and the BPTT through them are spikingjelly's own: nothing is written here
but the wiring and the input encoding.

Time. Each forward starts every neuron from rest (`functional.reset_net`) and resets them
again at its end: nothing carries over from one batch to the next, the model holds no tensor
between forwards (so it deep-copies, and its state_dict is weights and BatchNorm statistics
alone, never a membrane).

Encoding (`encoding`): "direct" feeds the image itself as the input current at every step
(the first unit's conv and BatchNorm are the encoder); "poisson" feeds spikes: each image is
rescaled to [0, 1] (its own minimum to maximum, which undoes the data sets' normalisation by
one mean and std), and each pixel spikes at each step with that probability. Where the draws
come from: in training, torch's default stream of the input's device, as dropout's, which the
training loop seeds per (seed, rank, epoch) and its checkpoint carries per rank, so a resumed
run draws what the uninterrupted one did and each DDP rank draws its own, as its data are its
own; `biograd.gradient_angles` forks that stream, so its two passes see the same spikes. In
evaluation, every forward draws from a generator seeded alike (EVAL_SEED), so a score is a
function of the weights and the batch alone: `biograd eval` gives what training logged.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import Tensor, nn

from biograd._seed import generator, mix
from biograd.models.registry import ModelError, register_model

#: The modules the model needs, and the extra that brings them.
REQUIRES = ("spikingjelly",)
EXTRA = "spiking"
ENCODINGS = ("direct", "poisson")
#: --model-options surrogate names -> spikingjelly.activation_based.surrogate classes, each
#: with its own sharpness `alpha` by default (sigmoid: 4, atan: 2, ...).
SURROGATES = {"sigmoid": "Sigmoid", "atan": "ATan", "erf": "Erf", "soft_sign": "SoftSign",
              "piecewise_quadratic": "PiecewiseQuadratic", "piecewise_exp": "PiecewiseExp"}
#: The seed of every evaluation forward's Poisson draws.
EVAL_SEED = mix("spiking_cnn", "eval")


def spikingjelly():
    """spikingjelly.activation_based with its layer, neuron, surrogate and functional modules
    loaded, or a ModelError naming the extra that brings it."""
    try:
        import spikingjelly.activation_based as sj
        from spikingjelly.activation_based import functional, layer, neuron, surrogate  # noqa: F401
    except ImportError:
        raise ModelError(f"spiking_cnn needs spikingjelly, which comes with biograd's {EXTRA} "
                         f"extra: pip install 'biograd[{EXTRA}]'") from None
    return sj


class Encode(nn.Module):
    """An image as T steps of input: (N, C, H, W) -> (T, N, C, H, W). No state, no weights.

    "direct": the image at every step (a view). "poisson": Bernoulli spikes, each pixel at
    each step with probability p, the image rescaled to [0, 1] per sample; drawn from torch's
    default stream in training, from a generator seeded with EVAL_SEED in evaluation.
    """

    def __init__(self, steps: int, encoding: str) -> None:
        super().__init__()
        self.steps, self.encoding = steps, encoding

    def forward(self, x: Tensor) -> Tensor:
        if self.encoding == "direct":
            return x.unsqueeze(0).expand(self.steps, *x.shape)
        flat = x.flatten(1)  # (N, C·H·W)
        low, high = flat.amin(1), flat.amax(1)
        shape = (-1, *[1] * (x.dim() - 1))
        p = (x - low.view(shape)) / (high - low).clamp_min(1e-12).view(shape)  # (N, C, H, W)
        draws = torch.rand((self.steps, *x.shape), device=x.device, dtype=x.dtype,
                           generator=None if self.training else generator(EVAL_SEED, x.device))
        return (draws < p).to(x.dtype)  # (T, N, C, H, W), 0 or 1

    def extra_repr(self) -> str:
        return f"steps={self.steps}, encoding={self.encoding!r}"


class SpikingCNN(nn.Module):
    """See the module's docstring. (N, in_channels, H, W) -> (N, num_classes), H, W >= 2.

    Modules: `encode` (Encode), `features` (unit1, unit2: spikingjelly Conv2d-BatchNorm2d-
    LIFNode, pool: MaxPool2d(2), unit3, unit4), `norm` (spikingjelly BatchNorm1d on each step's
    rates), `fc` (nn.Linear, the readout); every spikingjelly module in multi-step mode.
    """

    def __init__(self, num_classes: int, in_channels: int, width: int, steps: int,
                 encoding: str, tau: float, surrogate: str, alpha: float | None) -> None:
        super().__init__()
        sj = spikingjelly()
        make = getattr(sj.surrogate, SURROGATES[surrogate])

        def unit(c_in: int, c_out: int) -> nn.Sequential:
            # no bias before BatchNorm, as small_cnn; each neuron its own surrogate module
            return nn.Sequential(
                sj.layer.Conv2d(c_in, c_out, 3, padding=1, bias=False, step_mode="m"),
                sj.layer.BatchNorm2d(c_out, step_mode="m"),
                sj.neuron.LIFNode(tau=tau, surrogate_function=make() if alpha is None
                                  else make(alpha=alpha), step_mode="m"),
            )

        self.encode = Encode(steps, encoding)
        self.features = nn.Sequential(OrderedDict(
            unit1=unit(in_channels, width), unit2=unit(width, width),
            pool=sj.layer.MaxPool2d(2, step_mode="m"),
            unit3=unit(width, 2 * width), unit4=unit(2 * width, 2 * width)))
        self.norm = sj.layer.BatchNorm1d(2 * width, step_mode="m")
        self.fc = nn.Linear(2 * width, num_classes)
        self._reset: Callable[[nn.Module], None] = sj.functional.reset_net

    def forward(self, x: Tensor) -> Tensor:
        self._reset(self)  # every forward starts from rest
        try:
            spikes = self.features(self.encode(x))  # (T, N, 2w, H/2, W/2)
            rates = self.norm(spikes.mean((3, 4)))  # (T, N, 2w), each step's, normalised
            # The readout's input current averaged over time, (1/T) Σ_t fc(r_t): by
            # linearity, fc of the mean over time, once.
            return self.fc(rates.mean(0))  # (N, num_classes)
        finally:
            self._reset(self)  # nothing held between forwards: no membrane, no graph


@register_model(inputs=((1, 8), (1, 28)), min_size=2, requires=REQUIRES, extra=EXTRA)
def spiking_cnn(
    num_classes: int = 10, in_channels: int = 1, *, image_size: int = 28, width: int = 32,
    steps: int = 4, encoding: str = "direct", tau: float = 2.0, surrogate: str = "sigmoid",
    alpha: float | None = None,
) -> SpikingCNN:
    """A spiking small_cnn on spikingjelly's LIF neurons, T steps in one call per layer.

    (N, in_channels, H, W) -> (N, num_classes), any H, W >= 2 (global pooling: `image_size`
    does not change the layers). steps: T, the time steps of each forward (cost grows about
    linearly with T). encoding: "direct" (the image as input current at every step) or
    "poisson" (Bernoulli spikes at the pixel's intensity, seeded: see biograd.models.spiking).
    tau: the LIF membrane time constant (> 1; spikingjelly's default 2). surrogate: the spike's
    surrogate gradient, one of SURROGATES (spikingjelly's default "sigmoid"); alpha: its
    sharpness (None: the surrogate's own default). Needs biograd[spiking].
    """
    del image_size
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding={encoding!r}: use one of {', '.join(ENCODINGS)}")
    if surrogate not in SURROGATES:
        raise ValueError(f"surrogate={surrogate!r}: use one of {', '.join(SURROGATES)}")
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not tau > 1:
        raise ValueError(f"tau={tau!r}: the membrane time constant must be a number > 1")
    if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float))
                              or not alpha > 0):
        raise ValueError(f"alpha={alpha!r}: the surrogate's sharpness must be a number > 0 "
                         f"(or null for the surrogate's default)")
    return SpikingCNN(num_classes, in_channels, width, steps, encoding, float(tau), surrogate,
                      None if alpha is None else float(alpha))
