"""dfa_blocks: backprop inside each block, the projected output error at each block's output,
nothing between blocks (TinyDFA's "macro" placement).

The identities: inside a block, every parameter's gradient is backprop's given B e at the
block's output (torch.autograd.grad on a plain copy of the model); the stem's is backprop's
through the first block from its point; the head's is the true one; a block's gradients do
not change when the weights of the blocks above do; and gradient_angles' reference pass is
backprop end to end, points and all.
"""

import copy
import io
import json

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import biograd
from biograd.models import build_model
from biograd.rules.dfa import project
from biograd.rules.dfa_blocks import find_blocks, points

pytestmark = pytest.mark.usefixtures("one_thread")

RESNET18 = [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]


def resnet18():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=5)


def vit_small():
    torch.manual_seed(0)
    return build_model("vit_small", num_classes=10, in_channels=1, image_size=28)


#: (model, input, its stem's parameter owners, its blocks)
MODELS = {
    "resnet18": (resnet18, (4, 3, 32, 32), ["conv1", "bn1"], RESNET18),
    "vit_small": (vit_small, (4, 1, 28, 28), ["conv_proj"],
                  [f"encoder.layers.encoder_layer_{i}" for i in range(4)]),
}


def outputs_of(model, names):
    """{name: the output of module `name` at the next forward}."""
    seen = {}
    for name in names:
        model.get_submodule(name).register_forward_hook(
            lambda m, args, out, name=name: seen.__setitem__(name, out))
    return seen


@pytest.mark.parametrize("warm", [False, True])
@pytest.mark.parametrize("which", MODELS)
def test_inside_a_block_gradients_are_backprops_given_the_projected_error(which, warm):
    """warm: the backward checked is the third, after one of another batch size and one of
    this: each point's B as it kept it from the last backward of these shapes."""
    build, shape, stem, blocks = MODELS[which]
    model = biograd.convert(build(), "dfa_blocks", seed=3)
    reference = build()  # the same weights, plain torch
    assert list(points(model)) == blocks
    x, y = torch.randn(shape), torch.randint(0, 5, (shape[0],))
    if warm:
        for n in (2, shape[0]):
            F.cross_entropy(model(torch.randn(n, *shape[1:])), y[:n]).backward()
        model.zero_grad()
    out = model(x)
    out.retain_grad()
    F.cross_entropy(out, y).backward()
    e = out.grad  # (N, K)

    seen = outputs_of(reference, blocks)
    ref_out = reference(x)
    for name in blocks:
        point, h = points(model)[name], seen[name]
        be = project(point.source, point.seed, e, h.shape)  # B e, as the point computes it
        torch.testing.assert_close(  # which is e through B, (K, *h per sample), 1/√d in it
            be, (e @ point.feedback_weight().flatten(1)).view(h.shape), rtol=1e-5, atol=1e-6)
        params = dict(reference.get_submodule(name).named_parameters())
        expected = torch.autograd.grad(h, list(params.values()), be, retain_graph=True)
        got = dict(model.get_submodule(name).named_parameters())
        for (n, _), g in zip(params.items(), expected, strict=True):
            assert torch.equal(got[n].grad, g), f"{name}.{n}"
    # the stem: backprop through the first block from its point
    first = points(model)[blocks[0]]
    be = project(first.source, first.seed, e, seen[blocks[0]].shape)
    owners = [reference.get_submodule(n) for n in stem]
    expected = torch.autograd.grad(seen[blocks[0]], [p for m in owners for p in m.parameters()],
                                   be, retain_graph=True)
    got = [p.grad for n in stem for p in model.get_submodule(n).parameters()]
    for g, t in zip(got, expected, strict=True):
        assert torch.equal(g, t)
    # the head after the last block: the true loss gradient
    head = [n for n, _ in reference.named_parameters()
            if n.startswith(("fc.", "heads.", "encoder.ln."))]
    true = torch.autograd.grad(F.cross_entropy(ref_out, y),
                               [reference.get_parameter(n) for n in head])
    for n, t in zip(head, true, strict=True):
        assert torch.equal(model.get_parameter(n).grad, t), n


def test_the_weights_of_blocks_above_do_not_change_what_a_block_learns():
    x, g = torch.randn(4, 3, 32, 32), torch.randn(4, 5)
    grads = {}
    for rule in ("dfa_blocks", "bp"):
        for other in (False, True):
            model = biograd.convert(resnet18(), rule, seed=3)
            if other:  # new weights in every block above layer2.0
                with torch.no_grad():
                    for name in ("layer3", "layer4"):
                        for p in model.get_submodule(name).parameters():
                            p.normal_()
            (model(x) * g).sum().backward()  # e = g whatever the weights
            grads[rule, other] = [p.grad for p in [*model.conv1.parameters(),
                                                   *model.layer1.parameters(),
                                                   *model.layer2.parameters()]]
    for a, b in zip(grads["dfa_blocks", False], grads["dfa_blocks", True], strict=True):
        assert torch.equal(a, b)
    assert not all(torch.allclose(a, b) for a, b in  # backprop's do change
                   zip(grads["bp", False], grads["bp", True], strict=True))


def test_auto_finds_the_blocks_of_each_known_family():
    timm = pytest.importorskip("timm")
    vit_b = torchvision.models.vit_b_16(image_size=32)
    assert find_blocks(resnet18()) == RESNET18
    assert find_blocks(torchvision.models.resnet50()) == [
        f"layer{i}.{j}" for i, n in enumerate((3, 4, 6, 3), 1) for j in range(n)]  # Bottleneck
    assert find_blocks(vit_b) == [f"encoder.layers.encoder_layer_{i}" for i in range(12)]
    tiny = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=10)
    assert find_blocks(tiny) == [f"blocks.{i}" for i in range(12)]
    small = build_model("resnet_small", num_classes=10, in_channels=1, image_size=28)
    assert find_blocks(small) == [f"layer{i}.{j}" for i in range(1, 4) for j in range(3)]
    assert find_blocks(vit_small()) == MODELS["vit_small"][3]


def test_patterns_name_blocks_outermost_first():
    model = resnet18()
    assert find_blocks(model, "layer1,layer2.*,layer2.0.conv1") == ["layer1", "layer2.0",
                                                                    "layer2.1"]
    rule = biograd.get_rule("dfa_blocks", blocks="layer3.?,layer4")
    biograd.convert(model, rule, seed=0)
    assert list(points(model)) == ["layer3.0", "layer3.1", "layer4"]
    assert biograd.report(model).blocks == ["layer3.0", "layer3.1", "layer4"]
    x = torch.randn(2, 3, 32, 32)
    F.cross_entropy(model(x), torch.tensor([0, 1])).backward()
    assert points(model)["layer4"].feedback_shape == (5, 512, 1, 1)


def test_a_model_with_no_block_or_a_pattern_matching_none_is_one_line():
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"^dfa_blocks found no block in Sequential: .*named "
                                         r"like 0, 1, 2, 3 .*blocks='0,1'") as info:
        biograd.convert(plain, "dfa_blocks")  # refused before anything changes
    assert "\n" not in str(info.value) and type(plain[0]) is nn.Conv2d
    with pytest.raises(ValueError, match=r"pattern 'layer9\.\*' matches no module of ResNet; "
                                         r"its modules are named like conv1, bn1"):
        biograd.convert(resnet18(), "dfa_blocks", blocks="layer9.*")
    for bad in ("", "layer1, layer2", "a,,b"):
        with pytest.raises(ValueError, match=r"dfa_blocks blocks=.*: use 'auto' or "
                                             r"comma-separated module-name patterns"):
            biograd.get_rule("dfa_blocks", blocks=bad)


def test_misplaced_blocks_say_what_to_do():
    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            return self.a(x), self.b(x)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.pair, self.head = Pair(), nn.Linear(4, 3)

        def forward(self, x):
            a, b = self.pair(x)
            return self.head(a + b)

    model = biograd.convert(Net(), "dfa_blocks", blocks="pair")
    with pytest.raises(TypeError, match="block 'pair' returned tuple, not one tensor"):
        model(torch.randn(2, 4))
    last = biograd.convert(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3)),
                           "dfa_blocks", blocks="0,2")  # "2": the model's output itself
    with pytest.raises(RuntimeError, match="block '2' before the output error was taken: a "
                                           "block must lie below the model's output"):
        last(torch.randn(2, 4)).sum().backward()


def test_gradient_angles_reference_is_backprop_with_the_points_in_place():
    model = biograd.convert(resnet18(), "dfa_blocks", seed=3)
    plain = resnet18()
    batch = (torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]))
    angles = biograd.gradient_angles(model, batch)
    assert list(angles) == [n for n, _ in biograd.feedback_layers(model)]  # every layer

    def weight_grads(m):
        loss = F.cross_entropy(m(batch[0]), batch[1])
        return torch.autograd.grad(loss, [m.get_parameter(f"{n}.weight") for n in angles])

    rule, true = weight_grads(copy.deepcopy(model)), weight_grads(plain)
    expected = {n: biograd.angle(g, t) for n, g, t in zip(angles, rule, true, strict=True)}
    assert angles == expected
    assert angles["fc"] == 0 and all(angles[n] > 1 for n in angles if n != "fc")
    assert list(points(model)) == RESNET18  # still in place, and acting
    assert biograd.weight_angles(model) == {}  # B = W inside; the random B sits at the points


def test_converting_to_another_rule_removes_the_points():
    model = biograd.convert(resnet18(), "dfa_blocks", seed=0)
    assert all(model.get_submodule(n)._forward_hooks for n in RESNET18)
    biograd.convert(model, "dfa", seed=0)  # another rule that reads the output: no points
    assert points(model) == {} and not any(model.get_submodule(n)._forward_hooks
                                           for n in RESNET18)
    biograd.convert(model, "dfa_blocks", seed=0)
    assert list(points(model)) == RESNET18
    biograd.convert(model, "fa", seed=0)
    assert "_biograd_error_source" not in model.__dict__
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_state_dict_round_trip_and_no_state_of_its_own():
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 4])
    model = biograd.convert(resnet18(), "dfa_blocks", seed=0)
    F.cross_entropy(model(x), y).backward()
    plain_keys = set(resnet18().state_dict())
    state = model.state_dict()
    # the plain model's keys and each converted layer's seed; no buffer, nothing for DDP
    assert set(state) - plain_keys == {f"{n}.feedback_seed" for n, _ in
                                       biograd.feedback_layers(model)}
    assert biograd.feedback_buffers(model) == []
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    other = biograd.convert(resnet18(), "dfa_blocks", seed=1)  # other seeds until loaded
    other.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
    model.zero_grad()
    for m in (model, other):
        F.cross_entropy(m(x), y).backward()
    for (n, a), b in zip(model.named_parameters(), other.parameters(), strict=True):
        assert torch.equal(a.grad, b.grad), n
    for name in RESNET18:
        assert torch.equal(points(other)[name].feedback_weight(),
                           points(model)[name].feedback_weight())


def test_copies_have_points_of_their_own():
    model = biograd.convert(resnet18(), "dfa_blocks", seed=0)
    twin = copy.deepcopy(model)
    assert points(twin)["layer1.0"].source is twin.__dict__["_biograd_error_source"]
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 4])
    for m in (model, twin):
        F.cross_entropy(m(x), y).backward()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a.grad, b.grad)


def test_the_report_says_why_layers_in_blocks_transport_weights():
    model = biograd.convert(resnet18(), "dfa_blocks", last="bp", seed=0)
    why = {owner: reason for owner, _, _, reason in biograd.report(model).transport}
    assert why["layer1.0.conv1"] == why["conv1"] == "backprop inside (or around) the dfa blocks"
    assert why["fc"] == "on bp"
    assert "dfa blocks: 8 (layer1.0, layer1.1" in str(biograd.report(model))


QUICK = ["--data", "digits", "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "16",
         "--progress", "none", "--tensorboard", "false", "--angle-batch", "16"]


def test_train_and_compare_run_dfa_blocks(tmp_path, capsys):
    from biograd.cli import main

    vit = ["--model", "vit_small", "--model-options", "{patch: 4}"]
    assert main(["train", "--rule", "dfa_blocks", *vit, *QUICK, "--out",
                 str(tmp_path / "vit")]) == 0
    (line,) = [json.loads(t) for t in (tmp_path / "vit" / "metrics.jsonl").read_text()
               .splitlines()]
    assert line["rule"] == "dfa_blocks" and line["gradient_angles"]["conv_proj"] > 1
    # a model without blocks: one line, before anything trains, naming the way out
    out = tmp_path / "cmp"
    assert main(["compare", "--rules", "bp,dfa_blocks", *QUICK, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--rule dfa_blocks on --model small_cnn" in err[0], err
    assert not out.exists()
    assert main(["compare", "--rules", "bp,dfa_blocks", *QUICK, "--rule-options",
                 "{dfa_blocks: {blocks: '0,3,7'}}", "--out", str(out)]) == 0
    assert "| `dfa_blocks` |" in (out / "report.md").read_text()


def test_compare_with_no_rules_leaves_it_out_of_a_model_without_blocks(tmp_path, monkeypatch,
                                                                        caplog):
    import dataclasses
    import logging

    import biograd.results
    from biograd.config import resolve
    from biograd.engine import classify
    from biograd.engine.compare import compare

    trained = []
    monkeypatch.setattr(classify, "train", lambda cfg, command=None: trained.append(cfg.rule))
    monkeypatch.setattr(biograd.results, "load_run", lambda path: path)
    monkeypatch.setattr(biograd.results, "write_report", lambda runs, out: {})
    base = resolve(data="fake", model="small_cnn", out=str(tmp_path / "small"))
    with caplog.at_level(logging.INFO, logger="biograd"):
        compare(base)  # no rules: every rule the model can take
    # (alignment, a family to compose, is never in the default set)
    assert trained == [r for r in biograd.rules.compared_rules() if r != "dfa_blocks"]
    assert "compare: dfa_blocks left out: --rule dfa_blocks on --model small_cnn: dfa_blocks " \
           "found no block" in caplog.text
    trained.clear()
    compare(dataclasses.replace(base, model="resnet_small", out=str(tmp_path / "resnet")))
    assert trained == biograd.rules.compared_rules()


def test_a_bad_blocks_option_is_one_line_from_the_command(capsys):
    from biograd.cli import main

    assert main(["train", "--rule", "dfa_blocks", "--rule-options",
                 "{dfa_blocks: {blocks: 'layer1, layer2'}}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "blocks='layer1, layer2': use 'auto' or comma-separated" in err[0]


def test_on_a_pre_norm_vit_the_residual_stream_grows_without_bound():
    # docs/rules.md (dfa_blocks, Limits): the final LayerNorm hides the stream's size from the
    # loss, so the projected error never shrinks as the stream grows; backprop's stays put
    torch.manual_seed(0)
    base = build_model("vit_small", num_classes=4, in_channels=1, image_size=8, patch=4,
                       depth=2, width=16, heads=2)
    x, y = torch.randn(32, 1, 8, 8), torch.arange(32) % 4
    grown = {}
    for rule in ("bp", "dfa_blocks"):
        model = biograd.convert(copy.deepcopy(base), rule, last="bp", seed=0)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        norms = []
        model.encoder.layers[-1].register_forward_hook(
            lambda m, a, out: norms.append(out.detach().norm(dim=-1).mean().item()))
        for _ in range(30):
            F.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad()
        grown[rule] = norms[-1] / norms[0]
    assert grown["bp"] < 1.5 and grown["dfa_blocks"] > 100


def test_a_retained_gradient_at_a_block_output_is_the_projected_error():
    """h.retain_grad() at a block's output shows B e, the gradient the block's backward is
    given, not the one that arrived from above."""
    model = biograd.convert(resnet18(), "dfa_blocks", seed=3)
    seen = outputs_of(model, RESNET18)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 5, (4,))
    out = model(x)
    out.retain_grad()
    for h in seen.values():
        h.retain_grad()
    F.cross_entropy(out, y).backward()
    for name, h in seen.items():
        point = points(model)[name]
        assert torch.equal(h.grad, project(point.source, point.seed, out.grad, h.shape)), name
