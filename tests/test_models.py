"""Whole torchvision and timm models: convert, train one step, and check that nothing was missed.

For every model, one SGD step on a tiny batch, and the checks that catch a silent failure:
the loss is finite; every trainable parameter (kp's learned feedback included) gets a finite
gradient and moves; the converter took exactly the Linear and Conv layers outside the modules
it must leave alone (OPAQUE), and the report lists both; and every converted layer's own forward
ran. The last one is what catches a parent that reads a child's weight directly,
F.linear(x, self.qkv.weight, ...): the child is converted but never called, so its input
gradient still goes through W while the report says otherwise.

Inputs are the smallest each model accepts, batch 2, so the file stays quick on two CPU cores.
resnet18 runs every rule; every rule also trains at least one other torchvision model.
"""

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
import torchvision
from checks import assert_every_layer_learnt
from torch import nn

import biograd
from biograd.convert import OPAQUE

RULES = biograd.list_rules()
LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.MultiheadAttention)
CLASSES = 3
BATCH = 2
tv = torchvision.models

# (id, builder, input side, rule). Sides are the smallest each model accepts (swin: a multiple
# of 32; alexnet's three max-pools need 63). Rules are spread so that each appears at least
# once; the expensive models get rules that draw no random state the size of their weights.
TORCHVISION = [
    ("resnet50", lambda: tv.resnet50(num_classes=CLASSES), 32, "fa"),
    ("alexnet", lambda: tv.alexnet(num_classes=CLASSES), 64, "wm"),
    ("vgg11_bn", lambda: tv.vgg11_bn(num_classes=CLASSES), 32, "ss"),
    ("mobilenet_v3_small", lambda: tv.mobilenet_v3_small(num_classes=CLASSES), 32, "brsf"),
    ("efficientnet_b0", lambda: tv.efficientnet_b0(num_classes=CLASSES), 32, "sign_fixed"),
    ("convnext_tiny", lambda: tv.convnext_tiny(num_classes=CLASSES), 32, "kp"),
    # Its head starts at zero, so a B derived from W (bp, ss, frsf, brsf, wm) sends no error
    # back on the first step; fa's does, and so every layer is exercised.
    ("vit_b_16", lambda: tv.vit_b_16(image_size=32, num_classes=CLASSES), 32, "fa"),
    ("swin_t", lambda: tv.swin_t(num_classes=CLASSES), 32, "frsf"),
    ("densenet121", lambda: tv.densenet121(num_classes=CLASSES), 32, "bp"),
    ("shufflenet_v2_x0_5", lambda: tv.shufflenet_v2_x0_5(num_classes=CLASSES), 32, "dfa"),
    ("mobilenet_v3_small", lambda: tv.mobilenet_v3_small(num_classes=CLASSES), 32, "drtp"),
    ("resnet50", lambda: tv.resnet50(num_classes=CLASSES), 32, "dfa_blocks"),  # Bottlenecks
    # the alignment family's B learns from each layer's input: depthwise and grouped ones too
    ("mobilenet_v2", lambda: tv.mobilenet_v2(num_classes=CLASSES), 32, "aa"),
    ("regnet_x_400mf", lambda: tv.regnet_x_400mf(num_classes=CLASSES), 32, "ia"),
    ("squeezenet1_1", lambda: tv.squeezenet1_1(num_classes=CLASSES), 64, "sa"),
    ("mnasnet0_5", lambda: tv.mnasnet0_5(num_classes=CLASSES), 32, "alignment"),
]

# (timm name, constructor overrides, input side, rule). beit, eva (timm's class for the
# rope-reg ViTs) and swinv2 are shrunk: what matters is their attention, which reads qkv's
# weight directly, so the converter must leave it alone.
SHRUNK = {"embed_dim": 64, "depth": 1, "num_heads": 2}
TIMM = [
    ("resnet18", {}, 32, "frsf"),
    ("vit_tiny_patch16_224", {"img_size": 32}, 32, "kp"),
    ("vit_tiny_patch16_224", {"img_size": 32}, 32, "dfa"),  # tokens: (N, T, D), batch first
    ("vit_tiny_patch16_224", {"img_size": 32}, 32, "dfa_blocks"),  # timm's Blocks, found
    ("resnet18", {}, 32, "drtp"),
    ("vit_tiny_patch16_224", {"img_size": 32}, 32, "ia"),  # tokens: summed as positions
    ("convnext_atto", {}, 32, "aa"),
    ("resnet18", {}, 32, "sa"),
    ("mobilenetv3_small_050", {}, 32, "alignment"),
    ("convnext_atto", {}, 32, "brsf"),
    ("mobilenetv3_small_050", {}, 32, "wm"),  # its classifier is timm's own Linear subclass
    ("beit_base_patch16_224", {"img_size": 32, **SHRUNK}, 32, "ss"),
    ("vit_medium_patch16_rope_reg1_gap_256", {"img_size": 32, **SHRUNK}, 32, "sign_fixed"),
    ("swinv2_tiny_window8_256", {"img_size": 32, "window_size": 4, "embed_dim": 32,
                                 "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1)}, 32, "fa"),
]
RETINANET_RULE = "ss"  # the seed's MS-COCO result


pytestmark = pytest.mark.usefixtures("one_thread")


def _type_name(module: nn.Module) -> str:
    return f"{type(module).__module__}.{type(module).__qualname__}"


def _inside(name: str, parents: list[str]) -> bool:
    return any(p == "" or name.startswith(f"{p}.") for p in parents)


def _images(side: int) -> torch.Tensor:
    return torch.randn(BATCH, 3, side, side)


def _classification_loss(side: int) -> Callable[[nn.Module], torch.Tensor]:
    x, y = _images(side), torch.arange(BATCH) % CLASSES

    def loss(model: nn.Module) -> torch.Tensor:
        biograd.targets(model, y)  # drtp's; a no-op for every other rule
        return F.cross_entropy(model(x), y)

    return loss


def convert_and_train_one_step(
    model: nn.Module, rule: str, loss_of: Callable[[nn.Module], torch.Tensor]
) -> None:
    """Convert `model` to `rule`, take one SGD step on `loss_of(model)`, check everything."""
    # What the converter should take: every Linear and Conv outside an opaque parent.
    layers = {n for n, m in model.named_modules() if isinstance(m, LAYER_TYPES)}
    opaque = [n for n, m in model.named_modules() if _type_name(m) in OPAQUE]
    expected = {n for n in layers if not _inside(n, opaque)}

    biograd.convert(model, rule)
    converted = dict(biograd.feedback_layers(model))
    assert set(converted) == expected, (
        f"converted but not expected: {sorted(set(converted) - expected)}; "
        f"expected but not converted: {sorted(expected - set(converted))}"
    )
    assert {layer.rule for layer in converted.values()} == {rule}
    report = biograd.report(model)
    assert {name: r for name, _, r in report.layers} == dict.fromkeys(expected, rule)
    left_alone = layers - expected
    reported = {name for name, *_ in report.transport}
    assert left_alone <= reported, f"left alone but not reported: {sorted(left_alone - reported)}"

    ran: set[str] = set()
    for name, layer in converted.items():
        layer.register_forward_hook(lambda *_, name=name: ran.add(name))
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in params.items()}
    lr = 0.1
    optimizer = torch.optim.SGD(params.values(), lr=lr)  # built after convert: kp adds B

    model.train()
    loss = loss_of(model)
    assert torch.isfinite(loss), f"loss {loss.item()}"
    loss.backward()
    optimizer.step()
    biograd.after_step(model)

    assert_every_layer_learnt(converted, ran, params)
    # Every parameter that its SGD update can move must have moved. Exactly zero gradients are
    # the models' own doing (zero-initialised residual branches, stochastic depth), and so are
    # updates below float32 resolution (layer scale 1e-6 in front of a LayerNorm).
    unchanged = [n for n, p in params.items() if torch.equal(p.detach(), before[n])]
    assert len(unchanged) < len(params)
    stuck = [n for n in unchanged
             if not torch.equal(torch.add(before[n], params[n].grad, alpha=-lr), before[n])]
    assert not stuck, f"not changed by the step: {stuck}"
    if rule == "kp":  # B is a parameter, and its gradient is W's own
        for layer in converted.values():
            assert torch.equal(layer.feedback.grad, layer.weight.grad)


@pytest.mark.parametrize("rule", RULES)
def test_resnet18_trains_one_step_with_every_rule(rule):
    model = tv.resnet18(num_classes=CLASSES)
    convert_and_train_one_step(model, rule, _classification_loss(32))


@pytest.mark.parametrize(("build", "side", "rule"), [case[1:] for case in TORCHVISION],
                         ids=[f"{case[0]}-{case[-1]}" for case in TORCHVISION])
def test_torchvision_model_trains_one_step(build, side, rule):
    convert_and_train_one_step(build(), rule, _classification_loss(side))


def test_retinanet_resnet18_fpn_trains_one_step():
    # The seed's MS-COCO model: RetinaNet on a ResNet-18 FPN, every layer trainable, P6/P7.
    from torchvision.models.detection import RetinaNet
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    side = 64
    backbone = resnet_fpn_backbone(
        backbone_name="resnet18", weights=None, trainable_layers=5, returned_layers=[2, 3, 4],
        extra_blocks=LastLevelP6P7(256, 256),
    )
    model = RetinaNet(backbone, num_classes=CLASSES, min_size=side, max_size=side)
    images = list(_images(side))
    # One box per image, the size and place of an anchor, so both heads see a foreground.
    box = torch.tensor([[8.0, 8.0, 40.0, 40.0]])
    targets = [{"boxes": box, "labels": torch.tensor([i % CLASSES])} for i in range(BATCH)]

    def loss_of(model):
        losses = model(images, targets)
        assert set(losses) == {"classification", "bbox_regression"}
        return sum(losses.values())

    convert_and_train_one_step(model, RETINANET_RULE, loss_of)


@pytest.mark.parametrize(("name", "overrides", "side", "rule"), TIMM,
                         ids=[f"{case[0]}-{case[-1]}" for case in TIMM])
def test_timm_model_trains_one_step(name, overrides, side, rule):
    timm = pytest.importorskip("timm")
    if not timm.is_model(name):
        pytest.skip(f"timm {timm.__version__} has no {name}")
    model = timm.create_model(name, pretrained=False, num_classes=CLASSES, **overrides)
    convert_and_train_one_step(model, rule, _classification_loss(side))


def test_every_rule_trains_a_whole_model_besides_resnet18():
    assert {rule for *_, rule in TORCHVISION} | {RETINANET_RULE} == set(RULES)
    assert {rule for *_, rule in TIMM} >= set(RULES) - {"bp"}
