"""A small CIFAR-style ResNet (He et al. 2016, section 4.2): ResNet-20 by default.

A 3×3 stem convolution, then three stages of BasicBlocks at widths w, 2w, 4w (16, 32, 64 by
default) and strides 1, 2, 2, global average pooling and a linear classifier: 6·blocks + 2
layers with weights (blocks=3: ResNet-20; 5: ResNet-32; 9: ResNet-56). Where a block changes
width or stride its shortcut is a 1×1 convolution and BatchNorm (option B, biograd's
resnet_small), so every path carries a layer that the learning rules convert; or, as in the
paper's CIFAR networks and biotorch's benchmark (resnet20, resnet56), the input subsampled and
padded with zero channels (option A: no weights on the shortcut).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from biograd.models.registry import register_model


def xavier(model: nn.Module) -> None:
    """Every convolution's and linear layer's weight Xavier-uniform, its bias zero: biotorch's
    benchmark initialisation ("init: xavier" in its configs)."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


#: Initialisations a model can be built with: "he" keeps the model's own.
INITS = {"he": lambda model: None, "xavier": xavier}


def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


class PadShortcut(nn.Module):
    """Option A's shortcut: every `stride`-th pixel, zero channels added on both sides."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.stride, self.extra = stride, c_out - c_in

    def forward(self, x: Tensor) -> Tensor:  # (N, c_in, H, W) -> (N, c_out, H/s, W/s)
        x = x[:, :, :: self.stride, :: self.stride]
        half = self.extra // 2
        return F.pad(x, (0, 0, 0, 0, half, self.extra - half))


class BasicBlock(nn.Module):
    """relu(bn(conv(relu(bn(conv(x))))) + shortcut(x)), torchvision's BasicBlock layout."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, shortcut: str = "conv") -> None:
        super().__init__()
        self.conv1 = _conv3x3(c_in, c_out, stride)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = _conv3x3(c_out, c_out)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if (stride != 1 or c_in != c_out) and shortcut == "pad":
            self.downsample = PadShortcut(c_in, c_out, stride)
        elif stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: Tensor) -> Tensor:  # (N, c_in, H, W) -> (N, c_out, H/s, W/s)
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class SmallResNet(nn.Module):
    """See the module docstring. (N, in_channels, H, W) -> (N, num_classes), any H, W."""

    def __init__(
        self, num_classes: int = 10, in_channels: int = 3, width: int = 16, blocks: int = 3,
        stem_stride: int = 1, shortcut: str = "conv", init: str = "he",
    ) -> None:
        super().__init__()
        if width < 1 or blocks < 1 or stem_stride < 1:
            raise ValueError(f"width, blocks and stem_stride must be positive, got {width}, "
                             f"{blocks}, {stem_stride}")
        if shortcut not in ("conv", "pad") or init not in INITS:
            raise ValueError(f"shortcut={shortcut!r}, init={init!r}: use shortcut 'conv' or "
                             f"'pad', init one of {', '.join(INITS)}")
        self.conv1 = _conv3x3(in_channels, width, stem_stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        widths = (width, 2 * width, 4 * width)
        stages, c_in = [], width
        for i, c_out in enumerate(widths):
            stride = 1 if i == 0 else 2
            stage = [BasicBlock(c_in, c_out, stride, shortcut)]
            stage += [BasicBlock(c_out, c_out, 1, shortcut) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
            c_in = c_out
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)
        # He initialisation (fan-out, as torchvision's ResNets); BatchNorm at weight 1, bias 0;
        # the classifier keeps torch's default. No residual branch starts at zero.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        INITS[init](self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))  # (N, w, H/s, W/s), s = stem_stride
        x = self.layer3(self.layer2(self.layer1(x)))  # (N, 4w, H/4s, W/4s)
        return self.fc(self.avgpool(x).flatten(1))  # (N, num_classes)


@register_model(inputs=((1, 28), (3, 32)))
def resnet_small(
    num_classes: int = 10,
    in_channels: int = 3,
    *,
    image_size: int = 32,
    width: int = 16,
    blocks: int = 3,
    stem_stride: int = 1,
) -> SmallResNet:
    """A CIFAR-style ResNet-20: three stages of BasicBlocks, widths 16/32/64, BatchNorm.

    For 28×28 grayscale and 32×32 inputs (any size works: global average pooling, so
    `image_size` does not change the layers). width: the first stage's width (the stages are
    width, 2·width, 4·width). blocks: BasicBlocks per stage (3: ResNet-20, 9: ResNet-56).
    stem_stride: the stem convolution's stride; 2 halves every feature map after it, so a
    network 2·width wide costs about what one `width` wide costs at stride 1.
    """
    del image_size
    return SmallResNet(num_classes, in_channels, width=width, blocks=blocks,
                       stem_stride=stem_stride)


@register_model(inputs=((3, 32),))
def resnet20(num_classes: int = 10, in_channels: int = 3, *, image_size: int = 32,
             init: str = "xavier") -> SmallResNet:
    """ResNet-20 as the paper's CIFAR networks and biotorch's benchmark: widths 16/32/64, three
    BasicBlocks a stage, option A shortcuts (subsample, zero channels); Xavier-uniform weights
    by default, as biotorch's configs (`init: he` for He fan-out)."""
    del image_size
    return SmallResNet(num_classes, in_channels, blocks=3, shortcut="pad", init=init)


@register_model(inputs=((3, 32),))
def resnet56(num_classes: int = 10, in_channels: int = 3, *, image_size: int = 32,
             init: str = "xavier") -> SmallResNet:
    """ResNet-56 as resnet20, with nine BasicBlocks a stage."""
    del image_size
    return SmallResNet(num_classes, in_channels, blocks=9, shortcut="pad", init=init)
