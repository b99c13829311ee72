"""biograd.nn.MultiheadAttention against torch's and biograd.nn.swin's window attention against
torchvision's, under every rule; and a converted ViT and Swin.

Forward: within torch.testing.assert_close's float32 tolerance (rtol 1.3e-6, atol 1e-5) of
torch's module, slow path (training mode, gradients on) and fast path (eval, no_grad). With
B = W every gradient, the input's included, is torch's within rtol 1e-5, atol 1e-6 (the same
maths, summed in another order). The in-projection's input gradient is δ[q|k|v] B with the
rule's B, and its weight gradient the true local one.
"""

import copy
import io
import math

import pytest
import torch
import torchvision
from checks import assert_every_layer_learnt
from torch import nn
from torchvision.models import swin_transformer as tv_swin

import biograd
import biograd.nn.attention as attention
from biograd.convert import OPAQUE
from biograd.nn import Linear, MultiheadAttention
from biograd.rules import Feedback, get_rule

# The module-level checks hold for the rules whose δx is Bᵀδy; dfa, whose δx projects a
# model's output error, is checked on whole models below. dfa_blocks needs blocks, which a
# lone attention module has none of (tests/test_dfa_blocks.py runs it on whole ViTs).
RULES = [r for r in biograd.list_rules()
         if not get_rule(r).direct and get_rule(r).every_model]
E, HEADS, N, L, S = 8, 2, 3, 5, 4
GRAD_TOL = {"rtol": 1e-5, "atol": 1e-6}

# (id, constructor options, call options)
CASES = [
    ("self", {}, {}),
    ("batch_first_padding_sdpa", {"batch_first": True}, {"padding": True, "need_weights": False}),
    ("float_mask_per_head", {}, {"mask": "float", "average_attn_weights": False}),
    ("bool_mask_3d_padding", {"batch_first": True}, {"mask": "bool3d", "padding": True}),
    ("causal_sdpa", {"batch_first": True}, {"causal": True, "need_weights": False}),
    ("causal_padding", {}, {"causal": True, "padding": True, "need_weights": False}),
    ("causal_weights", {}, {"causal": True}),
    ("bias_kv_zero_attn", {"add_bias_kv": True, "add_zero_attn": True},
     {"mask": "bool", "padding": True}),
    ("bias_kv_sdpa", {"add_bias_kv": True, "batch_first": True},
     {"mask": "float", "need_weights": False}),
    ("cross_key_is_value", {"batch_first": True}, {"cross": "kv"}),
    ("cross_all_separate", {}, {"cross": "all", "padding": True, "need_weights": False}),
    ("unbatched", {}, {"unbatched": True, "mask": "float3d"}),
    ("dropout_eval_no_bias", {"dropout": 0.5, "bias": False}, {"eval": True}),
]
IDS = [c[0] for c in CASES]

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: nothing to split


def inputs(options: dict, call: dict) -> tuple[tuple, dict]:
    """(query, key, value) and keyword arguments for a case, as leaves that need gradients."""
    first = options.get("batch_first", False) and not call.get("unbatched")
    causal = call.get("causal") or call.get("mask") == "bool"
    s = L if call.get("cross") is None or causal else S

    def seq(length: int) -> torch.Tensor:
        shape = (length, E) if call.get("unbatched") else (N, length, E) if first else \
            (length, N, E)
        return torch.randn(shape, requires_grad=True)

    query = seq(L)
    key = value = query
    if call.get("cross") == "kv":
        key = value = seq(s)
    elif call.get("cross") == "all":
        key, value = seq(s), seq(s)
    kwargs = {k: call[k] for k in ("need_weights", "average_attn_weights") if k in call}
    batch = () if call.get("unbatched") else (N,)
    if call.get("padding"):
        padding = torch.zeros(*batch, s, dtype=torch.bool)
        padding[..., -1] = True  # the last key of every sequence is padding
        kwargs["key_padding_mask"] = padding
    upper = torch.ones(L, s, dtype=torch.bool).triu(1)  # True: not allowed
    mask = call.get("mask")
    if call.get("causal"):
        kwargs["attn_mask"], kwargs["is_causal"] = upper, True
    elif mask == "bool":
        kwargs["attn_mask"] = upper
    elif mask == "float":
        kwargs["attn_mask"] = torch.randn(L, s)
    elif mask == "bool3d":
        kwargs["attn_mask"] = torch.rand(N * HEADS, L, s) < 0.3
        kwargs["attn_mask"][..., 0] = False  # every query sees a key
    elif mask == "float3d":
        kwargs["attn_mask"] = torch.randn(HEADS, L, s)
    return (query, key, value), kwargs


def pair(options: dict, rule: str, eval_mode: bool = False):
    """torch's module and its biograd twin (converted from a copy)."""
    reference = nn.MultiheadAttention(E, HEADS, **options)
    with torch.no_grad():  # torch starts its biases at 0: give them values to check
        for p in (reference.in_proj_bias, reference.out_proj.bias):
            if p is not None:
                p.normal_()
    layer = biograd.convert(copy.deepcopy(reference), rule, seed=3)
    assert isinstance(layer, MultiheadAttention) and isinstance(layer.out_proj, Linear)
    if eval_mode:
        reference.eval(), layer.eval()
    return reference, layer


def call_args(args):
    """The same tensors, aliased as the case aliases them (self-attention: one tensor)."""
    query, key, value = args
    fresh = {id(t): t.detach().clone().requires_grad_() for t in args}
    return (fresh[id(query)], fresh[id(key)], fresh[id(value)]), list(fresh.values())


def forward_backward(module, args, kwargs):
    module.zero_grad(set_to_none=True)
    call, leaves = call_args(args)
    out, weights = module(*call, **kwargs)
    gen = torch.Generator().manual_seed(1)
    loss = (out * torch.randn(out.shape, generator=gen)).sum()
    if weights is not None:
        loss = loss + (weights * torch.randn(weights.shape, generator=gen)).sum()
    loss.backward()
    return (out, weights), [t.grad for t in leaves], {
        n: p.grad for n, p in module.named_parameters()}


def with_feedback_equal_to_weight(monkeypatch, layer):
    """Every layer's rule with B = W, keeping its plumbing (kp's learned B, brsf's counter)."""
    for module in (layer, layer.out_proj):
        bind = module.learning_rule.bind
        monkeypatch.setattr(type(module.learning_rule), "bind",
                            lambda self, lay, bind=bind: Feedback(lambda w: w, bind(lay).learned))


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_forward_is_torchs(case, rule):
    _, options, call = case
    reference, layer = pair(options, rule, call.get("eval", False))
    args, kwargs = inputs(options, call)
    out, weights = layer(*args, **kwargs)
    out_ref, weights_ref = reference(*args, **kwargs)
    torch.testing.assert_close(out, out_ref)
    assert (weights is None) == (weights_ref is None)
    if weights is not None:
        torch.testing.assert_close(weights, weights_ref)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("padding", [False, True])
@pytest.mark.parametrize("need_weights", [False, True])
def test_forward_is_torchs_fast_path(rule, padding, need_weights):
    reference, layer = pair({"batch_first": True}, rule, eval_mode=True)
    args, kwargs = inputs({"batch_first": True}, {"padding": padding})
    x = args[0].detach()
    with torch.no_grad():  # torch's fast path: eval, no gradients, batch first, even heads
        out_ref, weights_ref = reference(x, x, x, need_weights=need_weights, **kwargs)
        out, weights = layer(x, x, x, need_weights=need_weights, **kwargs)
    torch.testing.assert_close(out, out_ref)
    if need_weights:
        torch.testing.assert_close(weights, weights_ref)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_with_feedback_equal_to_weight_gradients_are_backprop(case, rule, monkeypatch):
    _, options, call = case
    reference, layer = pair(options, rule, call.get("eval", False))
    with_feedback_equal_to_weight(monkeypatch, layer)
    args, kwargs = inputs(options, call)
    outs_ref, gx_ref, g_ref = forward_backward(reference, args, kwargs)
    outs, gx, g = forward_backward(layer, args, kwargs)
    torch.testing.assert_close(outs[0], outs_ref[0])
    for got, expected in zip(gx, gx_ref, strict=True):
        torch.testing.assert_close(got, expected, **GRAD_TOL)
    for name, expected in g_ref.items():
        torch.testing.assert_close(g[name], expected, **GRAD_TOL, msg=name)
    if rule == "kp":
        assert torch.equal(layer.feedback.grad, layer.in_proj_weight.grad)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("cross", [None, "all"], ids=["self", "cross"])
def test_in_projection_input_gradient_goes_through_the_rules_feedback(rule, cross,
                                                                      monkeypatch):
    options = {"batch_first": True}
    _, layer = pair(options, rule)
    if rule == "bp":  # both on bp it runs torch's own forward; this makes it run its own
        layer.out_proj.set_rule("fa")
    seen = []  # (input, weight rows, output) of every in-projection product

    def recorded(x, weight, bias, feedback):
        y = feedback_linear(x, weight, bias, feedback)
        y.retain_grad()
        seen.append((x, weight, y))
        return y

    feedback_linear = attention.feedback_linear
    monkeypatch.setattr(attention, "feedback_linear", recorded)
    args, kwargs = inputs(options, {"cross": cross})
    call, leaves = call_args(args)
    out, _ = layer(*call, need_weights=False, **kwargs)
    out.square().sum().backward()
    b = layer.feedback_weight()  # (3E, E); brsf: the draw of that forward
    assert b.shape == layer.in_proj_weight.shape == (3 * E, E)
    assert len(seen) == (1 if cross is None else 3)
    grad_w = torch.zeros_like(b)
    for i, (x, _, y) in enumerate(seen):
        rows = slice(None) if cross is None else slice(i * E, (i + 1) * E)
        # δx = δy B (rows of B for a cross-attention projection), and dW = δyᵀ x
        torch.testing.assert_close(leaves[i].grad, y.grad @ b[rows], **GRAD_TOL)
        grad_w[rows] += y.grad.flatten(0, -2).T @ x.flatten(0, -2)
    torch.testing.assert_close(layer.in_proj_weight.grad, grad_w, **GRAD_TOL)
    if rule != "bp":
        assert not torch.allclose(b, layer.in_proj_weight)
    if rule == "kp":  # B's gradient is W's, rows of cross-attention included
        assert torch.equal(layer.feedback.grad, layer.in_proj_weight.grad)


@pytest.mark.parametrize("rule", RULES)
def test_state_dict_keys_are_torchs_and_round_trip(rule):
    reference, layer = pair({"add_bias_kv": True}, rule)
    state = layer.state_dict()
    own = {"feedback_seed", *layer.learning_rule.state}
    extra = own | {f"out_proj.{k}" for k in own}
    assert set(state) - extra == set(reference.state_dict())
    assert set(state) & extra == extra
    args, kwargs = inputs({}, {})
    layer(*args, **kwargs)[0].sum().backward()
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    _, other = pair({"add_bias_kv": True}, rule)
    other.set_rule(rule, seed=12345)  # other feedback until loaded
    other.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
    for name, value in layer.state_dict().items():
        assert torch.equal(other.state_dict()[name], value), name
    assert torch.equal(other.feedback_weight(), layer.feedback_weight())
    # a plain torch checkpoint loads strictly, and unconvert gives torch's module back
    other.load_state_dict(reference.state_dict(), strict=True)
    plain = biograd.unconvert(other)
    assert type(plain) is nn.MultiheadAttention
    assert type(plain.out_proj) is type(reference.out_proj)
    assert set(plain.state_dict()) == set(reference.state_dict())
    nn.MultiheadAttention(E, HEADS, add_bias_kv=True).load_state_dict(plain.state_dict())


def test_made_directly_keeps_torchs_constructor_and_puts_out_proj_on_the_rule():
    layer = MultiheadAttention(E, HEADS, dropout=0.1, bias=False, batch_first=True,
                               dtype=torch.float64, rule="fa", seed=5)
    assert layer.in_proj_bias is None and layer.in_proj_weight.dtype == torch.float64
    assert layer.rule == layer.out_proj.rule == "fa"
    assert layer.feedback.shape == (3 * E, E)  # drawn as a Linear's (3E, E): U(-s, s)
    assert layer.feedback.abs().max() <= 1 / math.sqrt(E) < 2 * layer.feedback.abs().max()
    assert layer.weight is layer.in_proj_weight
    again = MultiheadAttention(E, HEADS, bias=False, batch_first=True, dtype=torch.float64,
                               rule="fa", seed=5)
    assert torch.equal(again.out_proj.feedback, layer.out_proj.feedback)
    assert not torch.equal(layer.out_proj.feedback, layer.feedback[:E])


def test_separate_qkv_weights_are_refused_naming_the_module():
    model = nn.Sequential(nn.Linear(E, E), nn.MultiheadAttention(E, HEADS, kdim=4, vdim=6))
    with pytest.raises(ValueError, match=r"^1: MultiheadAttention\(.*kdim=4.*exclude"):
        biograd.convert(model, "fa")
    biograd.convert(model, "fa", exclude="1")  # left out, with its out_proj
    assert [n for n, _ in biograd.feedback_layers(model)] == ["0"]
    why = {owner: reason for owner, _, _, reason in biograd.report(model).transport}
    assert why["1"].startswith("separate q, k and v weights")


def test_out_proj_is_not_converted_without_its_attention():
    # torch's forward reads out_proj.weight: converting out_proj alone would change nothing
    model = nn.Sequential(nn.MultiheadAttention(E, HEADS))
    biograd.convert(model, "ss", include="*.out_proj")
    assert not list(biograd.feedback_layers(model))
    why = {owner: reason for owner, _, _, reason in biograd.report(model).transport}
    assert "0.out_proj" in why and "0" in why


def test_sign_fixed_holds_the_in_projections_signs():
    layer = biograd.convert(nn.MultiheadAttention(E, HEADS), "sign_fixed")
    signs = torch.sign(layer.feedback)
    with torch.no_grad():
        layer.in_proj_weight.neg_()
    biograd.after_step(layer)
    assert torch.equal(torch.sign(layer.in_proj_weight), signs)


def tiny_vit() -> nn.Module:
    model = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
        num_classes=10)
    nn.init.normal_(model.heads.head.weight, std=0.1)  # torchvision starts it at 0
    return model


def test_vit_learns_through_weight_transport_only_in_norms_and_embeddings():
    assert "torch.nn.modules.activation.MultiheadAttention" not in OPAQUE
    model = biograd.convert(tiny_vit(), "ss")
    report = biograd.report(model)
    attentions = [n for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
    assert len(attentions) == 2
    assert {n for n, *_ in report.layers} >= {*attentions, *(f"{a}.out_proj" for a in attentions)}
    assert {r for *_, r in report.layers} == {"ss"}
    owners = {owner: kind for owner, kind, _, _ in report.transport}
    assert {kind for kind in owners.values()} == {"LayerNorm", "VisionTransformer", "Encoder"}
    modules = dict(model.named_modules())
    others = {f"{o}.{n}" if o else n for o, kind in owners.items() if kind != "LayerNorm"
              for n, _ in modules[o].named_parameters(recurse=False)}
    assert others == {"class_token", "encoder.pos_embedding"}
    assert sum(kind == "LayerNorm" for kind in owners.values()) == 2 * 2 + 1


def learn_one_step(model: nn.Module) -> set[str]:
    """One SGD step on a batch of 32x32 images: every converted layer runs and every
    parameter gets a finite gradient (checks.py). Returns the layers that ran."""
    ran = set()
    for name, layer in biograd.feedback_layers(model):
        layer.register_forward_hook(lambda *_, name=name: ran.add(name))
    loss = nn.functional.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.tensor([1, 2]))
    loss.backward()
    assert_every_layer_learnt(dict(biograd.feedback_layers(model)), ran,
                              dict(model.named_parameters()))
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    return ran


@pytest.mark.parametrize("rule", ["ss", "dfa"])
def test_converted_vit_trains_one_step(rule):
    model = biograd.convert(tiny_vit(), rule)
    learn_one_step(model)
    assert all(m.in_proj_weight.grad.abs().sum() > 0 for m in model.modules()
               if isinstance(m, MultiheadAttention))


@pytest.mark.parametrize("cross", [None, "kv", "all"])
@pytest.mark.parametrize("batch_first", [True, False])
def test_under_dfa_the_in_projection_sends_the_projected_output_error(cross, batch_first):
    class Attend(nn.Module):  # attention, then a classifier on the mean token
        def __init__(self):
            super().__init__()
            self.attention = nn.MultiheadAttention(E, HEADS, batch_first=batch_first)
            self.head = nn.Linear(E, 3)

        def forward(self, query, key, value):
            out, _ = self.attention(query, key, value, need_weights=False)
            return self.head(out.mean(1 if batch_first else 0))

    model = biograd.convert(Attend(), "dfa", seed=0)
    shape = (N, L, E) if batch_first else (L, N, E)
    query = torch.randn(shape, requires_grad=True)
    key = query if cross is None else torch.randn(shape, requires_grad=True)
    value = key if cross in (None, "kv") else torch.randn(shape, requires_grad=True)
    out = model(query, key, value)
    out.retain_grad()
    nn.functional.cross_entropy(out, torch.tensor([0, 1, 2])).backward()
    b = model.attention.feedback_weight()  # (K, L, E): the latest input's, batch first
    expected = (out.grad @ b.flatten(1)).view(N, L, E)
    if not batch_first:
        expected = expected.transpose(0, 1)
    # every input the projection reads gets B e: no error through W_in, whichever it feeds
    for x in {id(t): t for t in (query, key, value)}.values():
        torch.testing.assert_close(x.grad, expected, rtol=1e-5, atol=1e-6)


# --- torchvision's Swin: qkv and proj called as modules -------------------------------------

SWIN = [  # (id, class, shift, input height and width)
    ("v1", tv_swin.ShiftedWindowAttention, [0, 0], (8, 8)),
    ("v1_shift_padded", tv_swin.ShiftedWindowAttention, [2, 2], (7, 10)),
    ("v1_shift_one_side", tv_swin.ShiftedWindowAttention, [2, 2], (8, 4)),
    ("v2_shift", tv_swin.ShiftedWindowAttentionV2, [2, 2], (8, 8)),
    ("v2_padded", tv_swin.ShiftedWindowAttentionV2, [0, 0], (7, 10)),
]
SWIN_IDS = [c[0] for c in SWIN]


def swin_pair(cls, shift, rule):
    """torchvision's window attention (dim 16, window 4, 2 heads) and a converted copy."""
    reference = cls(16, [4, 4], shift, 2)
    with torch.no_grad():  # biases, the V2 key bias (which V2 ignores) and scale too
        reference.qkv.bias.normal_(), reference.proj.bias.normal_()
        if hasattr(reference, "logit_scale"):
            reference.logit_scale.normal_()
    layer = biograd.convert(copy.deepcopy(reference), rule, seed=3)
    assert type(layer).__module__ == "biograd.nn.swin" and isinstance(layer, cls)
    assert isinstance(layer.qkv, Linear) and isinstance(layer.proj, Linear)
    return reference, layer


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("case", SWIN, ids=SWIN_IDS)
def test_swin_attention_forward_is_torchvisions(case, rule):
    _, cls, shift, size = case
    reference, layer = swin_pair(cls, shift, rule)
    x = torch.randn(2, *size, 16)
    torch.testing.assert_close(layer(x), reference(x))


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("case", SWIN, ids=SWIN_IDS)
def test_swin_attention_with_feedback_equal_to_weight_gradients_are_backprop(case, rule,
                                                                              monkeypatch):
    _, cls, shift, size = case
    reference, layer = swin_pair(cls, shift, rule)
    layers = [m for m in layer.modules() if isinstance(m, biograd.nn.FeedbackLayer)]
    assert {"qkv", "proj"} <= {n for n, m in layer.named_modules() if m in layers}
    for module in layers:
        bind = module.learning_rule.bind
        monkeypatch.setattr(type(module.learning_rule), "bind",
                            lambda self, lay, bind=bind: Feedback(lambda w: w, bind(lay).learned))
    x = torch.randn(2, *size, 16)
    grad_out = torch.randn(2, *size, 16)
    grads = []
    for module in (reference, layer):
        xi = x.clone().requires_grad_()
        module(xi).backward(grad_out)
        grads.append({"input": xi.grad, **{n: p.grad for n, p in module.named_parameters()}})
    # atol 1e-5: V1's key bias gradient is 0 in exact arithmetic (softmax ignores a constant
    # per query), and in float32 rounding noise of about 1e-6 in both
    for name, expected in grads[0].items():
        torch.testing.assert_close(grads[1][name], expected, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("rule", ["fa", "kp"])
def test_swin_attention_state_is_torchvisions_and_unconverts(rule):
    reference, layer = swin_pair(tv_swin.ShiftedWindowAttentionV2, [2, 2], rule)
    own = {"feedback_seed", *get_rule(rule).state}
    children = ["qkv", "proj", "cpb_mlp.0", "cpb_mlp.2"]
    extra = {f"{c}.{k}" for c in children for k in own}
    assert set(layer.state_dict()) == set(reference.state_dict()) | extra
    plain = biograd.unconvert(layer)
    assert type(plain) is tv_swin.ShiftedWindowAttentionV2 and type(plain.qkv) is nn.Linear
    reference.load_state_dict(plain.state_dict(), strict=True)
    x = torch.randn(1, 8, 8, 16)
    assert torch.equal(plain(x), reference(x))


def test_swin_attention_on_bp_runs_torchvisions_forward():
    reference, layer = swin_pair(tv_swin.ShiftedWindowAttention, [2, 2], "bp")
    x = torch.randn(2, 8, 8, 16)
    assert torch.equal(layer(x), reference(x))


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_converted_swin_learns_through_rules_but_norms_and_position_bias(version):
    v2 = version == "v2"
    model = tv_swin.SwinTransformer(
        patch_size=[4, 4], embed_dim=16, depths=[2, 1], num_heads=[2, 2], window_size=[2, 2],
        num_classes=10, stochastic_depth_prob=0.0,
        block=tv_swin.SwinTransformerBlockV2 if v2 else tv_swin.SwinTransformerBlock,
        downsample_layer=tv_swin.PatchMergingV2 if v2 else tv_swin.PatchMerging)
    attention_class = tv_swin.ShiftedWindowAttentionV2 if v2 else tv_swin.ShiftedWindowAttention
    assert not any(name.startswith("torchvision.models.swin") for name in OPAQUE)
    model = biograd.convert(model, "ss")
    report = biograd.report(model)
    modules = dict(model.named_modules())
    owners = {owner: kind for owner, kind, _, _ in report.transport}
    others = {n for o, kind in owners.items() if kind != "LayerNorm"
              for n, _ in modules[o].named_parameters(recurse=False)}
    assert {owners[o] for o in owners if owners[o] != "LayerNorm"} == {attention_class.__name__}
    assert others == {"logit_scale" if v2 else "relative_position_bias_table"}
    ran = learn_one_step(model)
    assert any(n.endswith(".attn.qkv") for n in ran) and any(n.endswith(".attn.proj") for n in ran)


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
def test_nested_tensors_are_refused_off_bp_in_one_line():
    layer = biograd.nn.MultiheadAttention(8, 2, batch_first=True, rule="fa").eval()
    nested = torch.nested.nested_tensor([torch.randn(3, 8), torch.randn(5, 8)])
    with torch.no_grad(), pytest.raises(ValueError, match="nested tensors run only on bp"):
        layer(nested, nested, nested, need_weights=False)


def test_vit_small_says_which_patches_fit_the_image(tmp_path, capsys):
    from biograd.cli import main

    assert main(["train", "--model", "vit_small", "--data", "fake", "--out",
                 str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == ("biograd: error: vit_small: image_size 32 is not a multiple of patch 7: "
                   "give --model-options '{patch: P}' with P dividing it (2, 4, 8, 16), or "
                   "another --image-size")
