"""Small models for tiny inputs: 8×8 (digits) and 28×28 (MNIST, Fashion-MNIST)."""

from __future__ import annotations

from torch import nn

from biograd.models.registry import register_model


def _block(c_in: int, c_out: int) -> list[nn.Module]:
    # no bias before BatchNorm, as the seed's AlexNet variant
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


@register_model(inputs=((1, 8), (1, 28)), min_size=2)
def small_cnn(
    num_classes: int = 10, in_channels: int = 1, width: int = 32, *, image_size: int = 28,
    dropout: float = 0.0,
) -> nn.Sequential:
    """A small BatchNorm CNN: conv-bn-relu ×2, max-pool, conv-bn-relu ×2, average pool, linear.

    (N, in_channels, H, W) -> (N, num_classes), for any H, W >= 2; the layers do not depend on
    `image_size` (global average pooling), which is accepted for the registry. dropout: the
    probability of nn.Dropout before the linear layer (0: none).
    """
    del image_size
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout={dropout!r}: use a probability >= 0 and < 1")
    return nn.Sequential(
        *_block(in_channels, width),
        *_block(width, width),
        nn.MaxPool2d(2),
        *_block(width, 2 * width),
        *_block(2 * width, 2 * width),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        *([nn.Dropout(dropout)] if dropout else []),
        nn.Linear(2 * width, num_classes),
    )


@register_model(inputs=((1, 8), (1, 28)))
def mlp(
    num_classes: int = 10, in_channels: int = 1, *, image_size: int = 28, hidden: int = 256
) -> nn.Sequential:
    """A multilayer perceptron with two hidden ReLU layers of `hidden` units.

    (N, in_channels, image_size, image_size) -> (N, num_classes): the input is flattened, so
    images must be exactly image_size × image_size. Hidden layers: He (fan-in) weights, zero
    biases; the output layer keeps torch's default initialisation.
    """
    layers = [
        nn.Linear(in_channels * image_size * image_size, hidden),
        nn.Linear(hidden, hidden),
    ]
    for layer in layers:
        nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
        nn.init.zeros_(layer.bias)
    return nn.Sequential(
        nn.Flatten(),
        layers[0], nn.ReLU(),
        layers[1], nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )
