"""Models by name: biograd's registry, torchvision's and timm's models, and the errors.

Every registered model is swept over the inputs it declares, batch 2, on the CPU; the
architecture claims (the seed's AlexNet, ResNet-20) are checked on the modules themselves.
"""

import sys

import pytest
import torch
import torchvision
from torch import nn

import biograd.models
from biograd.models import (
    ModelError,
    RepeatChannels,
    build_model,
    list_models,
    model_info,
    register_model,
)

CLASSES = 3
BATCH = 2
# What later experiments rely on: (channels, side) pairs each model must take.
INTENDED = {
    "small_cnn": {(1, 8), (1, 28)},
    "mlp": {(1, 8), (1, 28)},
    "resnet_small": {(1, 28), (3, 32)},
    "alexnet_bn": {(3, 64)},
    "lenet": {(3, 32)},
    "lenet_mnist": {(1, 32)},
    "resnet20": {(3, 32)},
    "resnet56": {(3, 32)},
    "vit_small": {(1, 28)},
    "spiking_cnn": {(1, 8), (1, 28)},
    "rlif": {(1, 8), (1, 28)},
    "lstm": {(1, 8), (1, 28), (3, 32)},
    "gru": {(1, 8), (1, 28), (3, 32)},
}
SWEEP = [pytest.param(name, c, side, id=f"{name}-{c}x{side}x{side}",
                      marks=pytest.mark.skipif(bool(model_info(name).missing()),
                                               reason=str(model_info(name).missing())))
         for name in list_models() for c, side in model_info(name).inputs]


pytestmark = pytest.mark.usefixtures("one_thread")


def _leaves(model: nn.Module) -> list[nn.Module]:
    """The modules without children, in registration order (here, the order they run in)."""
    return [m for m in model.modules() if not list(m.children())]


def _weight_shapes(model: nn.Module) -> list[tuple[int, ...]]:
    return [tuple(m.weight.shape) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def test_list_models_is_biograds_own_sorted():
    assert list_models() == sorted(INTENDED)
    assert not set(list_models()) & set(torchvision.models.list_models())


def test_every_model_declares_its_intended_inputs():
    for name, inputs in INTENDED.items():
        assert inputs <= set(model_info(name).inputs), name


@pytest.mark.parametrize(("name", "channels", "side"), SWEEP)
def test_model_maps_images_to_logits(name, channels, side):
    model = build_model(name, num_classes=CLASSES, in_channels=channels, image_size=side)
    x = torch.randn(BATCH, channels, side, side)
    model.train()
    logits = model(x)
    assert logits.shape == (BATCH, CLASSES)
    logits.logsumexp(1).sum().backward()  # every parameter is used
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (BATCH, CLASSES)


def test_small_cnn_is_exported_and_registered():
    assert biograd.models.small_cnn is model_info("small_cnn").builder
    torch.manual_seed(0)
    direct = biograd.models.small_cnn(num_classes=CLASSES)
    torch.manual_seed(0)
    built = build_model("small_cnn", num_classes=CLASSES, in_channels=1, image_size=28)
    for a, b in zip(direct.state_dict().values(), built.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_alexnet_bn_is_the_seeds_alexnet():
    model = build_model("alexnet_bn", num_classes=CLASSES, in_channels=3, image_size=224)
    leaves = _leaves(model)
    assert not any(isinstance(m, nn.Dropout) for m in leaves)
    relus = [i for i, m in enumerate(leaves) if isinstance(m, nn.ReLU)]
    assert len(relus) == 7  # five convolutions and two hidden fully connected layers
    for i in relus:  # weight layer (no bias) -> BatchNorm -> ReLU
        layer, norm = leaves[i - 2], leaves[i - 1]
        assert isinstance(norm, (nn.BatchNorm1d, nn.BatchNorm2d))
        assert isinstance(layer, (nn.Conv2d, nn.Linear)) and layer.bias is None
        assert norm.num_features == layer.weight.shape[0]
    batch_norms = [m for m in leaves if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(batch_norms) == len(relus)
    assert isinstance(leaves[-1], nn.Linear) and leaves[-1].bias is not None  # the classifier
    # torchvision's AlexNet layer sizes, layer for layer
    assert _weight_shapes(model) == _weight_shapes(torchvision.models.alexnet(num_classes=CLASSES))


def test_alexnet_bn_takes_other_channel_counts():
    model = build_model("alexnet_bn", num_classes=CLASSES, in_channels=1, image_size=63)
    assert model(torch.randn(BATCH, 1, 63, 63)).shape == (BATCH, CLASSES)


@pytest.mark.parametrize(("blocks", "depth"), [(3, 20), (9, 56)])
def test_resnet_small_is_a_cifar_resnet(blocks, depth):
    model = build_model("resnet_small", num_classes=CLASSES, in_channels=3, image_size=32,
                        blocks=blocks)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    main_path = [m for m in convs if m.kernel_size == (3, 3)]
    shortcuts = [m for m in convs if m.kernel_size == (1, 1)]
    assert len(main_path) + 1 == depth  # the convolutions and the classifier: ResNet-`depth`
    assert [m.out_channels for m in shortcuts] == [32, 64]
    assert sorted({m.out_channels for m in convs}) == [16, 32, 64]
    assert all(m.bias is None for m in convs)
    assert isinstance(model.fc, nn.Linear) and model.fc.in_features == 64
    # He initialisation (fan-out), and no BatchNorm starts at zero
    for conv in main_path:
        fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
        std = conv.weight.std().item()
        assert 0.8 < std / (2 / fan_out) ** 0.5 < 1.2
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) for m in norms)


def test_resnet_small_width_option():
    model = build_model("resnet_small", num_classes=CLASSES, in_channels=1, image_size=28,
                        width=8)
    assert sorted({m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)}) == [
        8, 16, 32]
    assert model(torch.randn(BATCH, 1, 28, 28)).shape == (BATCH, CLASSES)


def test_torchvision_model_takes_one_channel_with_its_own_state_dict():
    model = build_model("resnet18", num_classes=CLASSES, in_channels=1, image_size=28)
    plain = torchvision.models.resnet18(num_classes=CLASSES)
    assert type(model) is type(plain)
    assert list(model.state_dict()) == list(plain.state_dict())
    assert model(torch.randn(BATCH, 1, 28, 28)).shape == (BATCH, CLASSES)
    with pytest.raises(ValueError, match="1-channel"):
        model(torch.randn(BATCH, 3, 28, 28))


def test_repeat_channels_feeds_every_channel_the_same_image():
    seen = []
    conv = nn.Conv2d(3, 1, 1)
    conv.register_forward_pre_hook(RepeatChannels(3))
    conv.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    x = torch.randn(BATCH, 1, 4, 4)
    conv(x)
    assert torch.equal(seen[0], x.repeat(1, 3, 1, 1))


def test_torchvision_three_channels_is_unchanged():
    model = build_model("resnet18", num_classes=CLASSES, in_channels=3, image_size=32)
    assert not model._forward_pre_hooks


def test_torchvision_vit_is_built_for_the_image_size():
    model = build_model("vit_b_32", num_classes=CLASSES, in_channels=1, image_size=32)
    assert model.image_size == 32
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(BATCH, 1, 32, 32)).shape == (BATCH, CLASSES)


def test_torchvision_googlenet_gives_plain_logits_in_training():
    model = build_model("googlenet", num_classes=CLASSES, in_channels=3, image_size=32)
    model.train()
    assert isinstance(model(torch.randn(BATCH, 3, 32, 32)), torch.Tensor)


def test_timm_model_by_prefix():
    timm = pytest.importorskip("timm")
    model = build_model("timm:resnet18", num_classes=CLASSES, in_channels=1, image_size=28)
    assert model.conv1.in_channels == 1
    assert model(torch.randn(BATCH, 1, 28, 28)).shape == (BATCH, CLASSES)
    vit = build_model("timm:vit_tiny_patch16_224", num_classes=CLASSES, in_channels=2,
                      image_size=32, depth=1)
    assert vit.patch_embed.img_size == (32, 32)
    assert vit(torch.randn(BATCH, 2, 32, 32)).shape == (BATCH, CLASSES)
    with pytest.raises(ModelError, match=r"timm:resnet18\b") as err:
        build_model("timm:resnet_18", num_classes=CLASSES, in_channels=1, image_size=28)
    assert timm.__version__ in str(err.value)


def test_timm_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` fail
    with pytest.raises(ModelError, match="pip install timm"):
        build_model("timm:resnet18", num_classes=CLASSES, in_channels=3, image_size=32)


def test_unknown_name_lists_models_and_close_matches():
    with pytest.raises(ModelError) as err:
        build_model("resnet_smal", num_classes=CLASSES, in_channels=1, image_size=28)
    message = str(err.value)
    assert len(message.splitlines()) == 1
    assert "did you mean resnet_small" in message
    assert ", ".join(list_models()) in message
    assert "timm:NAME" in message
    with pytest.raises(ModelError, match="alexnet_bn, alexnet"):
        build_model("alexnet_bnn", num_classes=CLASSES, in_channels=3, image_size=64)


@pytest.mark.parametrize(("name", "kwargs", "match"), [
    ("alexnet_bn", {"image_size": 32}, r"at least 63x63.*\(--image-size 63\)"),
    ("resnet_small", {"depth": 20}, "unexpected keyword argument 'depth'"),
    ("resnet18", {"in_channels": 2}, "3-channel images"),
    ("vit_b_16", {"image_size": 28}, "indivisible by patch size"),
    ("vgg11", {"image_size": 28}, r"cannot take 28x28 images \(.*\): it takes 32x32"),
    ("mlp", {"num_classes": 0}, "num_classes must be a positive integer"),
])
def test_errors_say_what_was_wrong(name, kwargs, match):
    args = {"num_classes": CLASSES, "in_channels": 3, "image_size": 32, **kwargs}
    with pytest.raises(ModelError, match=match) as err:
        build_model(name, **args)
    assert len(str(err.value).splitlines()) == 1
    assert isinstance(err.value, ValueError)


def test_register_model_refuses_a_taken_name():
    with pytest.raises(ValueError, match="already registered"):
        register_model(inputs=((1, 8),), name="mlp")(lambda **_: nn.Identity())


def test_a_model_that_asserts_its_size_is_a_model_error_whatever_size_is_tried():
    from biograd.models.factory import _check_image_size

    class Fixed(nn.Module):  # like timm's fixed-size models: 28 fails inside, others assert
        def forward(self, x):
            assert x.shape[-1] == 28, f"Input height ({x.shape[-1]}) doesn't match model (28)"
            raise RuntimeError("Output size is too small")

    with pytest.raises(ModelError, match=r"cannot take 28x28 images \(Output size is too "
                                         r"small\): pick a model for small inputs"):
        _check_image_size(Fixed(), "fixed", 3, 28)
