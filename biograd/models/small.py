"""A small BatchNorm CNN for 8×8 (digits) and 28×28 (MNIST) inputs."""

from __future__ import annotations

from torch import nn


def _block(c_in: int, c_out: int) -> list[nn.Module]:
    # no bias before BatchNorm, as the seed's AlexNet variant
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


def small_cnn(num_classes: int = 10, in_channels: int = 1, width: int = 32) -> nn.Sequential:
    """conv-bn-relu ×2, max-pool, conv-bn-relu ×2, global average pool, linear.

    (N, in_channels, H, W) -> (N, num_classes), for any H, W >= 2.
    """
    return nn.Sequential(
        *_block(in_channels, width),
        *_block(width, width),
        nn.MaxPool2d(2),
        *_block(width, 2 * width),
        *_block(2 * width, 2 * width),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2 * width, num_classes),
    )
