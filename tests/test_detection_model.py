"""build_retinanet: every convolution on the rule, one training step under each, parts, norms.

Tiny images (64 px, batch 2, 3 classes) and one thread keep the file quick on two CPU cores.
"""

import pytest
import torch
from checks import assert_every_layer_learnt
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

import biograd
from biograd.detection.model import (
    PARTS,
    _fpn_backbone,
    build_retinanet,
    detector_parts,
    detector_rule,
)
from biograd.rules.base import sign_scale

#: Rules a detector runs on: not dfa, drtp or dfa_blocks, which read the model's output, every
#: anchor's (see config).
TRANSPOSED = [r for r in biograd.list_rules() if not biograd.get_rule(r).reads_output]

CLASSES = 3
BATCH = 2
SIDE = 64
TINY = {"num_classes": CLASSES, "min_size": SIDE, "max_size": SIDE}


pytestmark = pytest.mark.usefixtures("one_thread")


def _batch() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    images = list(torch.rand(BATCH, 3, SIDE, SIDE))
    # Boxes (x1, y1, x2, y2) the size and place of anchors, so both heads see a foreground.
    boxes = torch.tensor([[8.0, 8.0, 40.0, 40.0], [24.0, 16.0, 56.0, 48.0]])
    targets = [{"boxes": boxes, "labels": torch.tensor([1 + i % (CLASSES - 1), 1])}
               for i in range(BATCH)]
    return images, targets


def _part_of(name: str, parts: dict[str, list[str]]) -> list[str]:
    return [part for part, prefixes in parts.items()
            if any(name == p or name.startswith(f"{p}.") for p in prefixes)]


def _convs(model: nn.Module) -> set[str]:
    return {n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def train_one_step(model: nn.Module) -> dict[str, torch.Tensor]:
    """One SGD step on a tiny batch; checks the losses, the forwards and every gradient."""
    converted = dict(biograd.feedback_layers(model))
    ran: set[str] = set()
    for name, layer in converted.items():
        layer.register_forward_hook(lambda *_, name=name: ran.add(name))
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.SGD(params.values(), lr=0.01)  # after building: kp adds B

    model.train()
    losses = model(*_batch())
    assert set(losses) == {"classification", "bbox_regression"}
    assert all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    optimizer.step()
    biograd.after_step(model)

    assert_every_layer_learnt(converted, ran, params)
    return losses


@pytest.mark.parametrize("rule", TRANSPOSED)
def test_every_conv_learns_by_the_rule(rule):
    model = build_retinanet(rule=rule, **TINY)
    converted = dict(biograd.feedback_layers(model))
    convs = _convs(model)
    assert set(converted) == convs
    # backbone (20 convs), FPN (3 lateral, 3 output, P6, P7) and 2 heads of 5
    assert len(converted) == 38
    parts = detector_parts(model)
    assert all(len(_part_of(name, parts)) == 1 for name in convs)
    expected = str(detector_rule(rule))
    assert {str(layer.learning_rule) for layer in converted.values()} == {expected}

    report = biograd.report(model)
    assert {name: r for name, _, r in report.layers} == dict.fromkeys(convs, expected)
    on_bp = {name for name, *_ in report.transport}
    assert on_bp == (convs if rule == "bp" else set())  # frozen norms: nothing else learns

    train_one_step(model)
    if rule == "kp":  # B is a parameter, and its gradient is W's own
        for layer in converted.values():
            assert torch.equal(layer.feedback.grad, layer.weight.grad)


def test_a_direct_rule_is_refused():
    with pytest.raises(ValueError, match="dfa projects one output error"):
        build_retinanet(rule="dfa", **TINY)
    with pytest.raises(ValueError, match="dfa projects one output error"):
        build_retinanet(rule="ss", parts={"head": biograd.get_rule("dfa")}, **TINY)
    for rule in set(biograd.list_rules()) - set(TRANSPOSED):  # drtp, dfa_blocks too
        with pytest.raises(ValueError, match=f"{rule} projects one output error"):
            build_retinanet(rule=rule, **TINY)


def test_random_feedback_is_drawn_with_the_weights_scale():
    assert str(detector_rule("fa")) == "fa(scale='weight')"
    assert str(detector_rule("ss")) == "ss(scale='weight')"  # B of W's size for sign rules too
    assert str(detector_rule("bp")) == "bp"  # no scale to set
    assert str(detector_rule(biograd.get_rule("fa"))) == "fa"  # an instance is kept as given
    head = "head.classification_head.conv.0.0"  # W ~ N(0, 0.01²); He fan-out s is about 0.03
    for scale, std in [("weight", 0.01), ("seed", sign_scale((256, 256, 3, 3)))]:
        model = build_retinanet(rule="fa", feedback_scale=scale, **TINY)
        feedback = model.get_submodule(head).feedback
        assert feedback.std().item() == pytest.approx(std, rel=0.02)


def test_parts_take_their_own_rules():
    model = build_retinanet(rule="ss", parts={"head": "bp"}, **TINY)
    rules = {name: layer.rule for name, layer in biograd.feedback_layers(model)}
    head = {n for n in rules if n.startswith("head.")}
    assert len(head) == 10
    assert {rules[n] for n in head} == {"bp"}
    assert {rules[n] for n in rules.keys() - head} == {"ss"}
    assert {name for name, *_ in biograd.report(model).transport} == head
    train_one_step(model)

    # The head's halves win over "head", whatever the order they are given in.
    model = build_retinanet(rule="ss", parts={"regression_head": "fa", "head": "bp",
                                              "fpn": "kp"}, **TINY)
    by_part = {}
    for name, layer in biograd.feedback_layers(model):
        part = next(p for p in ("regression_head", "classification_head", "fpn", "backbone")
                    if any(name.startswith(f"{q}.") for q in PARTS[p]))
        by_part.setdefault(part, set()).add(layer.rule)
    assert by_part == {"backbone": {"ss"}, "fpn": {"kp"}, "classification_head": {"bp"},
                       "regression_head": {"fa"}}


def test_frozen_and_trainable_batchnorm():
    frozen = build_retinanet(norm="frozen", **TINY)
    norms = [m for m in frozen.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert len(norms) == 20
    assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen.modules())
    assert all(not list(m.parameters()) and len(list(m.buffers())) == 4 for m in norms)

    model = build_retinanet(norm="batchnorm", rule="fa", **TINY)
    norms = {n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert len(norms) == 20
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    transport = {name: why for name, _, _, why in biograd.report(model).transport}
    assert set(transport) == norms
    assert set(transport.values()) == {"not a Linear, Conv or ConvTranspose: learns by backprop"}
    before = {n: b.clone() for n, b in model.named_buffers() if n.endswith("running_mean")}
    train_one_step(model)
    assert all(not torch.equal(b, before[n]) for n, b in model.named_buffers() if n in before)



@pytest.mark.parametrize(("channels", "groups"), [(256, 32), (48, 8), (32, 16)])
def test_groupnorm_heads(channels, groups):
    from biograd.engine.detect import anchors

    generator = anchors(0.5)  # 9 anchors a place, as torchvision's
    model = build_retinanet(rule="ss", head_norm="groupnorm", fpn_channels=channels,
                            anchor_generator=generator, **TINY)
    for half in (model.head.classification_head, model.head.regression_head):
        assert len(half.conv) == 4
        for block in half.conv:  # torchvision's v2 head: conv (no bias), GroupNorm, ReLU
            conv, norm, _ = block
            assert conv.bias is None and isinstance(norm, nn.GroupNorm)
            assert norm.num_groups == groups
    assert model.head.classification_head.num_anchors == 9
    norms = {n for n, m in model.named_modules() if isinstance(m, nn.GroupNorm)}
    assert len(norms) == 8 and all(n.startswith("head.") for n in norms)
    assert _convs(model) == set(dict(biograd.feedback_layers(model)))
    transport = {name: why for name, _, _, why in biograd.report(model).transport}
    assert set(transport) == norms
    assert set(transport.values()) == {"not a Linear, Conv or ConvTranspose: learns by backprop"}
    plain = build_retinanet(rule="ss", fpn_channels=channels, **TINY)
    assert not any(isinstance(m, nn.GroupNorm) for m in plain.modules())
    train_one_step(model)
    images, targets = _batch()  # one image: P7 is 1x1, and every group holds 2 values or more
    assert all(torch.isfinite(v) for v in model(images[:1], targets[:1]).values())

def test_frozen_backbone_layers_are_converted_but_do_not_learn():
    model = build_retinanet(rule="kp", trainable_backbone_layers=2, **TINY)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    stems = ("backbone.body.conv1.", "backbone.body.layer1.", "backbone.body.layer2.")
    assert frozen and all(n.startswith(stems) for n in frozen)
    assert any(n.endswith(".feedback") for n in frozen)  # kp's B is frozen with its W
    assert _convs(model) == set(dict(biograd.feedback_layers(model)))
    train_one_step(model)


def test_eval_returns_detections():
    model = build_retinanet(rule="ss", score_thresh=0.0, detections_per_img=5, **TINY).eval()
    images, _ = _batch()
    with torch.no_grad():
        detections = model(images)
    assert len(detections) == BATCH
    for d in detections:
        assert set(d) == {"boxes", "scores", "labels"}
        n = len(d["scores"])
        assert 0 < n <= 5
        assert d["boxes"].shape == (n, 4) and d["labels"].shape == (n,)
        assert ((d["boxes"] >= 0) & (d["boxes"] <= SIDE)).all()
        assert ((d["labels"] >= 0) & (d["labels"] < CLASSES)).all()


def test_resnet50_builds_and_runs():
    model = build_retinanet(backbone="resnet50", rule="frsf", **TINY).eval()
    assert _convs(model) == set(dict(biograd.feedback_layers(model)))
    assert len(_convs(model)) == 71  # 53 in the backbone, and the 18 outside it as with resnet18
    with torch.no_grad():
        detections = model(_batch()[0])
    assert len(detections) == BATCH


@pytest.mark.parametrize("trainable", [5, 2])
def test_the_backbone_is_torchvisions_resnet_fpn_backbone(trainable):
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    torch.manual_seed(0)
    theirs = resnet_fpn_backbone(backbone_name="resnet18", weights=None,
                                 norm_layer=nn.BatchNorm2d, trainable_layers=trainable,
                                 returned_layers=[2, 3, 4],
                                 extra_blocks=LastLevelP6P7(256, 256))
    torch.manual_seed(0)
    ours = _fpn_backbone("resnet18", nn.BatchNorm2d, trainable, 256)
    a, b = theirs.state_dict(), ours.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert [(n, p.requires_grad) for n, p in theirs.named_parameters()] == \
        [(n, p.requires_grad) for n, p in ours.named_parameters()]
    x = torch.rand(1, 3, SIDE, SIDE)
    with torch.no_grad():
        assert all(torch.equal(u, v) for u, v in zip(theirs.eval()(x).values(),
                                                     ours.eval()(x).values(), strict=True))


def test_fewer_fpn_channels_make_a_smaller_detector_that_trains():
    model = build_retinanet(rule="ss", fpn_channels=32, **TINY)
    assert model.backbone.out_channels == 32
    assert model.head.classification_head.conv[0][0].weight.shape[:2] == (32, 32)
    assert _convs(model) == set(dict(biograd.feedback_layers(model)))
    train_one_step(model)
    with pytest.raises(ValueError, match="fpn_channels"):
        build_retinanet(fpn_channels=0, **TINY)


def test_the_seed_sets_weights_and_feedback_and_leaves_the_global_stream_alone():
    state = torch.get_rng_state()
    a = build_retinanet(rule="fa", seed=1, **TINY)
    assert torch.equal(torch.get_rng_state(), state)
    b = build_retinanet(rule="ss", seed=1, **TINY)
    c = build_retinanet(rule="fa", seed=2, **TINY)
    weights = [dict(m.named_parameters()) for m in (a, b, c)]
    assert all(torch.equal(weights[0][n], weights[1][n]) for n in weights[0])
    assert not torch.equal(weights[0]["head.classification_head.cls_logits.weight"],
                           weights[2]["head.classification_head.cls_logits.weight"])
    again = build_retinanet(rule="fa", seed=1, **TINY)
    for (name, layer), (_, same) in zip(biograd.feedback_layers(a), biograd.feedback_layers(again),
                                        strict=True):
        assert torch.equal(layer.feedback, same.feedback), name


def test_detector_parts_cover_every_parameter_once():
    model = build_retinanet(**TINY)
    parts = detector_parts(model)
    assert list(parts) == ["backbone", "fpn", "head"]
    assert all(len(_part_of(n, parts)) == 1 for n, _ in model.named_parameters())
    assert all(len(_part_of(n, parts)) == 1 for n, _ in model.named_buffers())
    with pytest.raises(ValueError, match="not a torchvision RetinaNet"):
        detector_parts(nn.Sequential(nn.Conv2d(3, 3, 1)))


@pytest.mark.parametrize(("option", "value", "hint"), [
    ("backbone", "resnet19", "resnet18"),
    ("norm", "frozenbn", "frozen"),
    ("feedback_scale", "weights", "weight"),
    ("head_norm", "group", "groupnorm"),
    ("parts", {"heads": "bp"}, "head"),
    ("rule", "sf", None),
])
def test_misspelled_choices_fail_with_the_valid_ones(option, value, hint):
    with pytest.raises(ValueError, match="choose one of") as err:
        build_retinanet(**{**TINY, option: value})
    if hint:
        assert f"did you mean {hint!r}" in str(err.value)
