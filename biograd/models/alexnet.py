"""The seed's AlexNet variant (Xiao et al. 2019; willwx/sign-symmetry, models/af_alexnet.py).

torchvision's AlexNet layer sizes, with three changes that the seed made: BatchNorm before
every ReLU (convolutional and fully connected), no bias in a layer that BatchNorm follows, and
no dropout. Like today's torchvision AlexNet (and unlike the seed, which needed 224×224), an
adaptive average pool makes the classifier's input 256×6×6 at any image size of 63 or more.
"""

from __future__ import annotations

from torch import Tensor, nn

from biograd.models.registry import register_model


def _conv_bn_relu(c_in: int, c_out: int, kernel: int, stride: int = 1, padding: int = 0) -> list:
    conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False)
    return [conv, nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


def _linear_bn_relu(n_in: int, n_out: int) -> list:
    return [nn.Linear(n_in, n_out, bias=False), nn.BatchNorm1d(n_out), nn.ReLU(inplace=True)]


class AlexNetBN(nn.Module):
    """(N, in_channels, H, W) -> (N, num_classes) for H, W >= 63; 224×224 as in the seed.

    Module names follow torchvision's AlexNet (features, avgpool, classifier); the weights keep
    torch's default initialisation, as in the seed.
    """

    def __init__(self, num_classes: int = 1000, in_channels: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn_relu(in_channels, 64, 11, stride=4, padding=2),
            nn.MaxPool2d(kernel_size=3, stride=2),
            *_conv_bn_relu(64, 192, 5, padding=2),
            nn.MaxPool2d(kernel_size=3, stride=2),
            *_conv_bn_relu(192, 384, 3, padding=1),
            *_conv_bn_relu(384, 256, 3, padding=1),
            *_conv_bn_relu(256, 256, 3, padding=1),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            *_linear_bn_relu(256 * 6 * 6, 4096),
            *_linear_bn_relu(4096, 4096),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.avgpool(self.features(x))  # (N, 256, 6, 6)
        return self.classifier(x.flatten(1))  # (N, num_classes)


@register_model(inputs=((3, 64), (3, 224)), min_size=63)
def alexnet_bn(
    num_classes: int = 1000, in_channels: int = 3, *, image_size: int = 224
) -> AlexNetBN:
    """The seed's AlexNet: torchvision's layer sizes, BatchNorm before every ReLU, no dropout.

    For 224×224 inputs, as in the seed; any side of 63 or more runs (adaptive pooling).
    """
    del image_size
    return AlexNetBN(num_classes, in_channels)
