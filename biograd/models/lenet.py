"""LeNet as biotorch's benchmark defines it (Sanfiz & Akrout 2021), for CIFAR and for MNIST.

lenet (biotorch's "LeNet CIFAR"): three 3×3 convolutions of 32, 64 and 128 channels, each
with ReLU, max-pooling after the first two, global average pooling, then linear 128→256, ReLU,
linear 256→classes. lenet_mnist (biotorch's "LeNet MNIST"): 5×5 convolutions of 6, 16 and 120
channels, ReLU, max-pooling after the first two, then linear 120→84, ReLU, linear 84→classes;
its third convolution needs 32×32 inputs (MNIST is resized to 32). Both Xavier-uniform by
default, as biotorch's configs (`init: he` keeps torch's own initialisation).
"""

from __future__ import annotations

from torch import nn

from biograd.models.registry import register_model
from biograd.models.resnet import INITS


def _check(init: str) -> None:
    if init not in INITS:
        raise ValueError(f"init={init!r}: use one of {', '.join(INITS)}")


@register_model(inputs=((3, 32), (1, 28)), min_size=22)
def lenet(num_classes: int = 10, in_channels: int = 3, *, image_size: int = 32,
          init: str = "xavier") -> nn.Sequential:
    """biotorch's LeNet for CIFAR. (N, in_channels, H, W) -> (N, num_classes), H, W >= 22."""
    del image_size
    _check(init)
    model = nn.Sequential(
        nn.Conv2d(in_channels, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, num_classes),
    )
    INITS[init](model)
    return model


@register_model(inputs=((1, 32),), min_size=32)
def lenet_mnist(num_classes: int = 10, in_channels: int = 1, *, image_size: int = 32,
                init: str = "xavier") -> nn.Sequential:
    """biotorch's LeNet for MNIST: (N, in_channels, 32, 32) -> (N, num_classes)."""
    if image_size != 32:
        raise ValueError(f"lenet_mnist takes 32×32 images (its third convolution is 5×5 on "
                         f"5×5 maps), got {image_size}: pass --image-size 32")
    _check(init)
    model = nn.Sequential(
        nn.Conv2d(in_channels, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 120, 5), nn.ReLU(), nn.Flatten(),
        nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes),
    )
    INITS[init](model)
    return model
