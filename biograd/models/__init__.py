"""Models by name: biograd's own small models and the seed's AlexNet, torchvision's, timm's.

    model = build_model("resnet_small", num_classes=10, in_channels=1, image_size=28)

biograd's own (`list_models()`): small_cnn and mlp for 8×8 and 28×28 images, resnet_small (a
CIFAR-style ResNet-20) for 28×28 and 32×32, vit_small (a small torchvision ViT) for 28×28,
alexnet_bn (the seed's AlexNet with BatchNorm) for 224×224; lenet, lenet_mnist, resnet20 and
resnet56 as biotorch's benchmark defines them; spiking_cnn, small_cnn with spikingjelly's LIF
neurons over T time steps (biograd[spiking]); lstm and gru, torch's nn.LSTM and nn.GRU reading
an image row by row (28 steps of 28 pixels on MNIST), a linear readout on the final state;
rlif, a recurrent LIF network reading an image row by row, trained by BPTT or e-prop. Any
torchvision classification model works by its name, and timm's as "timm:NAME".
"""

from biograd.models.alexnet import alexnet_bn
from biograd.models.factory import RepeatChannels, build_model
from biograd.models.lenet import lenet, lenet_mnist
from biograd.models.registry import ModelError, list_models, model_info, register_model
from biograd.models.resnet import resnet20, resnet56, resnet_small
from biograd.models.rlif import rlif
from biograd.models.sequence import gru, lstm
from biograd.models.small import mlp, small_cnn
from biograd.models.spiking import spiking_cnn  # imports spikingjelly only when called
from biograd.models.vit import vit_small

__all__ = [
    "ModelError",
    "RepeatChannels",
    "alexnet_bn",
    "build_model",
    "gru",
    "lenet",
    "lenet_mnist",
    "list_models",
    "lstm",
    "mlp",
    "model_info",
    "register_model",
    "resnet20",
    "resnet56",
    "resnet_small",
    "rlif",
    "small_cnn",
    "spiking_cnn",
    "vit_small",
]
