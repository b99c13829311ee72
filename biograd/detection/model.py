"""RetinaNet on a ResNet FPN with every convolution on a biograd learning rule.

    model = build_retinanet(num_classes=91, rule="fa")      # the backbone is ResNet-18 by default
    biograd.report(model)                                    # what converted, what still transports
    losses = model(images, targets)                          # train mode: {"classification", ...}
    detections = model.eval()(images)                        # [{"boxes", "scores", "labels"}]

The seed's MS-COCO model (Xiao et al. 2019): torchvision's RetinaNet with a ResNet-18 FPN
backbone. It is built as torchvision's `retinanet_resnet50_fpn` (v1): FPN levels P3-P5 from
the ResNet's C3-C5 (`returned_layers=[2, 3, 4]`) and P6, P7 from P5 (`LastLevelP6P7(256,
256)`, which works for every ResNet since P5 always has 256 channels), with the v1 heads,
whose convolutions have no normalisation (`head_norm="groupnorm"`: GroupNorm in them, as the
v2 heads; trained from scratch, the shapes demo needs it). All weights are random: nothing is
downloaded.

Every convolution, of the backbone, the FPN and both heads, is put on the rule. Nothing stays
on backprop by default: a detector has no single "last layer". `parts` sets per-part rules.

Normalisation (`norm`) in the backbone:
    "frozen": torchvision's FrozenBatchNorm2d, the default of its detection backbones: a fixed
        affine map held in buffers. Nothing learns in it, so nothing transports weights; from
        random weights it is the identity (scale 1, shift 0, mean 0, variance 1), and so the
        backbone starts unnormalised, and keeps statistics loaded from a checkpoint.
    "batchnorm": a trainable nn.BatchNorm2d, what torchvision's own builder uses when it loads
        no weights. Its scale and shift learn by backprop and `biograd.report` lists them under
        weight transport; in train mode it uses the batch's statistics.

Feedback scale (`feedback_scale`): every rule with a `scale` option gets `scale="weight"` by
default: random feedback (fa's B, frsf's M, brsf's pool, kp's and wm's initial B) is drawn as
N(0, std(W)²), and sign feedback (ss, sign_fixed) has magnitude rms(W), rather than the seed's
He fan-out scale: in REFERENCE.md a RetinaNet under FA with He fan-out feedback diverged to
NaN within 6 steps at lr 0.01, and one with feedback of W's standard deviation trained.
`feedback_scale="seed"` gives the seed's scale. Why scale
matters here: the heads' convolutions start as N(0, 0.01²) (the RetinaNet paper's), while s is
about 0.03 for their 3x3, 256-channel weights, so He fan-out feedback is about 3 times W in
each of the five layers of a head; on 128 px images from random weights, the first step's
backbone gradients under ss, sign_fixed or fa with scale "seed" were 1,000 to 1,700 times
backprop's, and with "weight" within 25% of them.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import fields

import torch
from torch import nn
from torchvision.models import resnet as tv_resnet
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops.feature_pyramid_network import LastLevelP6P7
from torchvision.ops.misc import FrozenBatchNorm2d

from biograd.convert import convert
from biograd.rules.base import Rule, get_rule, rule_class

#: The ResNets `resnet_fpn_backbone` can build.
BACKBONES = (
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d",
    "wide_resnet50_2", "wide_resnet101_2",
)

#: The backbone's normalisation layer, by `norm`.
NORMS: dict[str, type[nn.Module]] = {"frozen": FrozenBatchNorm2d, "batchnorm": nn.BatchNorm2d}

#: The heads' normalisation, by `head_norm`: none (torchvision's v1 heads, the paper's) or
#: GroupNorm after each of the four convolutions of both heads, as torchvision's v2 heads.
HEAD_NORMS = ("none", "groupnorm")

#: How random feedback is drawn (the `scale` option of fa, frsf, brsf and kp).
FEEDBACK_SCALES = ("weight", "seed")

#: Parts of a torchvision RetinaNet, by the qualified names of their modules. The first three
#: are disjoint and hold every parameter; the last two split "head".
PARTS: dict[str, tuple[str, ...]] = {
    "backbone": ("backbone.body",),
    "fpn": ("backbone.fpn",),  # with P6 and P7 (backbone.fpn.extra_blocks)
    "head": ("head",),
    "classification_head": ("head.classification_head",),
    "regression_head": ("head.regression_head",),
}
_DISJOINT = ("backbone", "fpn", "head")


def _choose(name: str, choices: Mapping[str, object] | tuple[str, ...], what: str) -> str:
    if name in choices:
        return name
    close = difflib.get_close_matches(name, list(choices), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"unknown {what} {name!r}{hint}: choose one of {', '.join(choices)}")


def detector_rule(spec: str | Rule, feedback_scale: str = "weight", **options: object) -> Rule:
    """The rule `spec` with `options`, and `scale=feedback_scale` where the rule has a scale
    option that `options` leave unset.

    A Rule instance is returned as it is: its options, scale included, are the caller's.
    A rule that reads the model's output (dfa, drtp, dfa_blocks) is refused: see
    `biograd.config.DIRECT_DETECTOR`.
    """
    if get_rule(spec).reads_output:
        from biograd.config import DIRECT_DETECTOR

        raise ValueError(DIRECT_DETECTOR.format(rule=get_rule(spec).name))
    if isinstance(spec, Rule):
        return get_rule(spec, **options)
    if "scale" in {f.name for f in fields(rule_class(spec))}:
        options.setdefault("scale", feedback_scale)
    return get_rule(spec, **options)


def detector_parts(model: nn.Module) -> dict[str, list[str]]:
    """{part: qualified module-name prefixes} of a torchvision RetinaNet: backbone, fpn, head.

    The parts are disjoint and hold every parameter, so they can group a report or alignment
    angles: a module belongs to a part if its name is a prefix or starts with prefix + ".".
    Raises ValueError if `model` lacks one of them.
    """
    names = dict(model.named_modules())
    missing = [p for part in _DISJOINT for p in PARTS[part] if p not in names]
    if missing:
        raise ValueError(f"{type(model).__name__} is not a torchvision RetinaNet: it has no "
                         f"module {', '.join(map(repr, missing))}")
    return {part: list(PARTS[part]) for part in _DISJOINT}


def _fpn_backbone(name: str, norm_layer: type[nn.Module], trainable: int,
                  channels: int) -> BackboneWithFPN:
    """torchvision's `resnet_fpn_backbone(name, returned_layers=[2, 3, 4], extra_blocks=
    LastLevelP6P7)` with `channels` FPN channels (torchvision fixes them at 256)."""
    if not 0 <= trainable <= 5:
        raise ValueError(f"trainable_backbone_layers must be 0 to 5, got {trainable}")
    if channels < 1:
        raise ValueError(f"fpn_channels must be positive, got {channels}")
    extra = LastLevelP6P7(channels, channels)  # drawn first, as torchvision's call does
    resnet = getattr(tv_resnet, name)(weights=None, norm_layer=norm_layer)
    learn = ("layer4", "layer3", "layer2", "layer1", "conv1")[:trainable]
    learn += ("bn1",) if trainable == 5 else ()
    for pname, parameter in resnet.named_parameters():
        if not pname.startswith(learn):
            parameter.requires_grad_(False)
    c2 = resnet.inplanes // 8  # layer1's output channels: 64 (BasicBlock) or 256 (Bottleneck)
    return BackboneWithFPN(resnet, {"layer2": "0", "layer3": "1", "layer4": "2"},
                           [c2 * 2, c2 * 4, c2 * 8], channels,
                           extra_blocks=extra)


def build_retinanet(
    *,
    num_classes: int,
    backbone: str = "resnet18",
    rule: str | Rule = "ss",
    parts: Mapping[str, str | Rule] | None = None,
    trainable_backbone_layers: int = 5,
    norm: str = "frozen",
    min_size: int = 800,
    max_size: int = 1333,
    seed: int = 0,
    feedback_scale: str = "weight",
    fpn_channels: int = 256,
    head_norm: str = "none",
    **options: object,
) -> RetinaNet:
    """A RetinaNet with random weights, every convolution on a learning rule.

    Args:
        num_classes: the classes the classification head scores (torchvision's COCO models
            use 91, the category ids 1-90 plus background 0).
        backbone: a ResNet from `BACKBONES`; "resnet18" is the seed's.
        rule: the rule of every convolution (a name from `biograd.list_rules()` or a Rule).
        parts: per-part rules, {part: rule}, parts from `PARTS`: "backbone", "fpn", "head",
            or the head's halves "classification_head" and "regression_head", which win over
            "head". E.g. {"head": "bp"} keeps both heads on backprop.
        trainable_backbone_layers: how many of the backbone's stages learn, from the top
            (5: all, 0: none), as in torchvision; the others are frozen (requires_grad False)
            but converted all the same.
        norm: the backbone's normalisation, "frozen" or "batchnorm" (see the module's doc).
        min_size, max_size: the model's transform resizes each image so that its short side is
            min_size unless its long side would exceed max_size (COCO: 800 and 1333).
        seed: the initial weights are drawn from torch's global stream seeded with it (forked,
            so the caller's stream is left as it was), and each layer's feedback from (seed,
            its name): the same seed gives the same model under every rule.
        feedback_scale: "weight" or "seed", for rules given by name that draw random feedback
            (see the module's doc).
        fpn_channels: the channels of every FPN level and of the heads' convolutions (256,
            torchvision's and the paper's; fewer make a small, fast detector for small images).
        head_norm: "none" (torchvision's v1 heads, the default) or "groupnorm": GroupNorm
            after each of the four convolutions of both heads, as torchvision's v2 heads; its
            scale and shift learn by backprop, and the convolutions before it lose their bias.
            32 groups, as torchvision's, where fpn_channels is a multiple of 64; otherwise the
            largest power of two under 32 that leaves 2 channels or more a group (1 group for
            an odd number): on a 1x1 level (P7 of a 64-px image) a group of one channel holds
            a single value for one image, and GroupNorm cannot train on it.
        **options: passed on to torchvision's RetinaNet (score_thresh, detections_per_img,
            anchor_generator, ...).

    Returns the model in train mode; `model(images, targets)` gives the loss dict
    {"classification", "bbox_regression"}, and in eval mode `model(images)` a list of
    {"boxes" (N, 4) xyxy, "scores" (N,), "labels" (N,)} per image.
    """
    backbone = _choose(backbone, BACKBONES, "backbone")
    norm_layer = NORMS[_choose(norm, NORMS, "norm")]
    feedback_scale = _choose(feedback_scale, FEEDBACK_SCALES, "feedback scale")
    head_norm = _choose(head_norm, HEAD_NORMS, "head norm")
    default = detector_rule(rule, feedback_scale)
    chosen = {_choose(part, PARTS, "detector part"): detector_rule(r, feedback_scale)
              for part, r in (parts or {}).items()}
    # convert takes the first pattern that matches: the halves of the head go before "head".
    rules = {prefix: chosen[part] for part in sorted(chosen, key=lambda p: -len(PARTS[p][0]))
             for prefix in PARTS[part]}

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        body = _fpn_backbone(backbone, norm_layer, trainable_backbone_layers, fpn_channels)
        if head_norm == "groupnorm":
            generator = options.get("anchor_generator")
            anchors = generator.num_anchors_per_location()[0] if generator is not None else 9
            groups = math.gcd(32, fpn_channels // 2) if fpn_channels % 2 == 0 else 1
            options["head"] = RetinaNetHead(
                fpn_channels, anchors, num_classes,
                norm_layer=lambda c: nn.GroupNorm(groups, c))
        model = RetinaNet(body, num_classes, min_size=min_size, max_size=max_size, **options)
    return convert(model, default, rules=rules, seed=seed)
