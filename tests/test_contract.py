"""The contract every rule keeps, for every drop-in layer, parametrised over the registry.

Layers: Linear, Conv1d/2d/3d and ConvTranspose1d/2d/3d. Identities, not numbers: the forward
is torch's; with B = W the gradients are backprop's bit for bit; the input gradient is the
transposed op applied with the rule's B; weight and bias gradients are the true local ones
(gradcheck, float64). A layer on dfa or drtp is here a model of its own (its output is ŷ, so
e = δy), given targets before each forward (drtp): its input gradient is B e (drtp: B y*),
and the identities with B = W, which these rules have no form of, are left out for them. A
bare layer on dfa_blocks holds no block: it runs backprop, which the identities check.

On a GPU: BIOGRAD_TEST_DEVICE=cuda python -m pytest tests/test_contract.py runs every check
there (tensors and layers made on that device, autocast on it), with torch's deterministic
algorithms (set CUBLAS_WORKSPACE_CONFIG=:4096:8 too): all pass on an H100. Should torch's own
backward give other bits on a second run on some GPU (without deterministic algorithms,
cuDNN's conv3d and replicate-padding backward did), "bit for bit" becomes "within
assert_close's tolerance" for that case, and gradcheck allows 1e-12 of non-reentrance.
"""

import contextlib
import copy
import io
import os

import pytest
import torch
from checks import one_hot_targets, targets_at_every_forward
from torch import nn

import biograd
from biograd.nn.layers import DROP_INS
from biograd.rules import Feedback

RULES = biograd.list_rules()
# Rules whose input gradient is Bᵀδy (all but dfa and drtp, whose δx projects the output error
# or the targets): the identities with B = W hold for these.
TRANSPOSED = [r for r in RULES if not biograd.get_rule(r).direct]
DEVICE = torch.device(os.environ.get("BIOGRAD_TEST_DEVICE", "cpu"))
NONDET_TOL = 1e-12 if DEVICE.type == "cuda" else 0.0


@pytest.fixture(autouse=True)
def _on_device():
    """Layers and tensors of every test made on DEVICE, with deterministic kernels there."""
    if DEVICE.type == "cpu":
        yield
        return
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    with DEVICE:
        yield
    torch.use_deterministic_algorithms(deterministic)


def assert_as_torch(got, expected, again):
    """got (gradients) equal torch's `expected` bit for bit when torch is reproducible
    (`again`: torch's own second run), else within assert_close's tolerance."""
    reproducible = all(torch.equal(a, e) for a, e in zip(again, expected, strict=True))
    for g, e in zip(got, expected, strict=True):
        if reproducible:
            assert torch.equal(g, e)
        else:
            torch.testing.assert_close(g, e)

# (id, torch layer factory, input shape)
LAYERS = [
    ("linear", lambda: nn.Linear(6, 5), (3, 6)),
    ("linear_3d_input", lambda: nn.Linear(6, 5), (2, 3, 6)),
    ("linear_4d_nobias", lambda: nn.Linear(6, 5, bias=False), (2, 2, 3, 6)),
    ("conv1d_stride", lambda: nn.Conv1d(4, 6, 3, stride=2, padding=1), (2, 4, 9)),
    ("conv2d", lambda: nn.Conv2d(3, 4, 3, padding=1), (2, 3, 7, 7)),
    ("conv2d_groups_dilation", lambda: nn.Conv2d(4, 6, 3, padding=2, dilation=2, groups=2),
     (2, 4, 8, 8)),
    ("conv2d_same_even", lambda: nn.Conv2d(3, 4, (4, 3), padding="same", bias=False),
     (2, 3, 7, 6)),
    ("conv2d_valid_stride", lambda: nn.Conv2d(3, 4, 3, stride=2, padding="valid"), (2, 3, 9, 9)),
    ("conv2d_reflect", lambda: nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"),
     (2, 3, 6, 6)),
    ("conv2d_circular", lambda: nn.Conv2d(3, 4, 3, padding=2, padding_mode="circular"),
     (2, 3, 6, 6)),
    ("conv2d_replicate_same", lambda: nn.Conv2d(3, 4, 2, padding="same",
                                                padding_mode="replicate"), (2, 3, 5, 5)),
    ("conv3d", lambda: nn.Conv3d(2, 4, 3, padding=1), (2, 2, 4, 5, 5)),
    ("convtranspose1d_output_padding",
     lambda: nn.ConvTranspose1d(4, 6, 3, stride=2, padding=1, output_padding=1), (2, 4, 5)),
    ("convtranspose2d_groups_dilation",
     lambda: nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, groups=2, dilation=2),
     (2, 4, 5, 5)),
    ("convtranspose3d_nobias", lambda: nn.ConvTranspose3d(2, 4, 2, stride=2, bias=False),
     (1, 2, 3, 3, 3)),
]
LAYER_IDS = [name for name, _, _ in LAYERS]


def make(factory, rule, dtype=torch.float32):
    """A torch layer and its biograd twin sharing nothing but equal values."""
    reference = factory().to(dtype)
    layer = DROP_INS[type(reference)].from_torch(copy.deepcopy(reference), rule, seed=7)
    if layer.learning_rule.direct:
        biograd.error_source(layer)  # the layer is the model: its output error is δy
    if getattr(layer.learning_rule, "wants_targets", False):  # drtp: targets at every forward
        targets_at_every_forward(layer, reference)
    return reference, layer


def run(layer, x, grad_out, functions=False, **autocast):
    """Forward and backward; returns (output, x.grad, {param name: grad}). `functions`: the
    forward within biograd.double_backward(), where every layer runs its autograd Function."""
    x = x.detach().clone().requires_grad_()
    layer.zero_grad(set_to_none=True)
    with torch.autocast(DEVICE.type, **(autocast or {"enabled": False})), \
            (biograd.double_backward() if functions else contextlib.nullcontext()):
        y = layer(x)
    y.backward(grad_out.to(y.dtype))
    grads = {n: p.grad for n, p in layer.named_parameters()}
    return y, x.grad, grads


@pytest.fixture(params=LAYERS, ids=LAYER_IDS)
def case(request):
    return request.param


@pytest.mark.parametrize("rule", RULES)
def test_forward_is_torch_bit_for_bit(case, rule):
    _, factory, shape = case
    reference, layer = make(factory, rule)
    x = torch.randn(shape)
    assert torch.equal(layer(x), reference(x))


def through_torch_op(layer) -> bool:
    """Whether `layer`'s forward runs torch's own op with B saved in W's place (a convolution
    whose rule has neither a learned B nor a direct δx) rather than biograd's Function."""
    feedback = layer.learning_rule.bind(layer)
    return not isinstance(layer, nn.Linear) and not layer.learning_rule.transports_weights \
        and feedback.learned is None and feedback.direct is None


# Both ways a layer runs: as it runs by default, and within biograd.double_backward() (its
# Function, for every layer): the identities hold for each.
PATHS = pytest.mark.parametrize("functions", [False, True], ids=["default", "functions"])


@pytest.mark.parametrize("rule", ["fa", "ss", "kp", "dfa"])
def test_each_path_runs_what_it_says(rule):
    """A convolution whose B is fixed or made from W runs torch's own op (its backward
    torch's node), within double_backward() biograd's Function; a Linear, and a learned or
    direct rule's layer, always the Function."""
    for factory, shape in ((lambda: nn.Conv2d(3, 4, 3), (2, 3, 5, 5)),
                           (lambda: nn.Linear(6, 5), (3, 6))):
        _, layer = make(factory, rule)
        x = torch.randn(shape, requires_grad=True)
        with biograd.double_backward():
            assert type(layer(x).grad_fn).__name__ in ("_ConvBackward", "_LinearBackward")
        torch_op = isinstance(layer, nn.Conv2d) and rule in ("fa", "ss")
        assert through_torch_op(layer) == torch_op
        assert (type(layer(x).grad_fn).__name__ == "ConvolutionBackward0") == torch_op


@PATHS
@pytest.mark.parametrize("rule", TRANSPOSED)
def test_with_feedback_equal_to_weight_gradients_are_backprop(case, rule, functions,
                                                                monkeypatch):
    _, factory, shape = case
    reference, layer = make(factory, rule)
    bind = layer.learning_rule.bind
    # Keep the rule's plumbing (kp's learned B, brsf's counter), swap only B for W.
    monkeypatch.setattr(type(layer.learning_rule), "bind",
                        lambda self, lay: Feedback(lambda w: w, bind(lay).learned))
    x = torch.randn(shape)
    grad_out = torch.randn(reference(x).shape)
    y_ref, gx_ref, g_ref = run(reference, x, grad_out)
    _, gx_again, g_again = run(reference, x, grad_out)
    y, gx, g = run(layer, x, grad_out, functions)
    assert torch.equal(y, y_ref)
    assert_as_torch([gx, *(g[n] for n in g_ref)], [gx_ref, *g_ref.values()],
                    [gx_again, *g_again.values()])


@PATHS
@pytest.mark.parametrize("rule", RULES)
def test_input_gradient_is_transposed_op_with_rule_feedback(case, rule, functions):
    _, factory, shape = case
    reference, layer = make(factory, rule)
    x = torch.randn(shape)
    grad_out = torch.randn(reference(x).shape)
    _y, gx, grads = run(layer, x, grad_out, functions)
    b = layer.feedback_weight()  # for brsf: the draw of that forward pass
    if layer.learning_rule.direct:  # δx = B e, e = δy flattened per sample (here in float64)
        signal = grad_out.flatten(1)  # drtp: δx = B y*, the targets in place of e
        if layer.learning_rule.wants_targets:
            signal = one_hot_targets(*signal.shape)
        gx_expected = (signal.double() @ b.flatten(1).double()).view(x.shape)
        gx_expected = gx_expected.float()  # a float32 sum of K = C_out·H·W terms: atol 1e-5
    else:
        with torch.no_grad():
            reference.weight.copy_(b)
        _, gx_expected, _ = run(reference, x, grad_out)
    atol = 1e-5 if layer.learning_rule.direct else 1e-6
    torch.testing.assert_close(gx, gx_expected, rtol=1e-5, atol=atol)
    # the weight and bias gradients are the true ones whatever B is
    with torch.no_grad():
        reference.weight.copy_(layer.weight)
    _, _, g_true = run(reference, x, grad_out)
    for name, grad in g_true.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rule", RULES)
def test_gradcheck_float64(case, rule, monkeypatch):
    _, factory, shape = case
    _, layer = make(factory, rule, torch.float64)
    x = torch.randn(shape, dtype=torch.float64)
    params = (layer.weight,) + ((layer.bias,) if layer.bias is not None else ())

    def f(x, *ps):
        return layer(x)

    # weight and bias gradients are the true local ones under every rule
    assert torch.autograd.gradcheck(f, (x, *params), fast_mode=True, nondet_tol=NONDET_TOL)
    if rule not in TRANSPOSED:
        return
    # and with B = W the whole Jacobian, input included, is the true one
    bind = layer.learning_rule.bind
    monkeypatch.setattr(type(layer.learning_rule), "bind",
                        lambda self, lay: Feedback(lambda w: w, bind(lay).learned))
    assert torch.autograd.gradcheck(f, (x.requires_grad_(), *params), fast_mode=True,
                                    nondet_tol=NONDET_TOL)


UNBATCHED = [("conv1d", lambda: nn.Conv1d(4, 6, 3, stride=2, padding=1), (4, 9)),
             ("conv2d_reflect", lambda: nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"),
              (3, 6, 6)),
             ("convtranspose2d", lambda: nn.ConvTranspose2d(4, 6, 3, stride=2), (4, 5, 5))]


@pytest.mark.parametrize("rule", TRANSPOSED)  # dfa: the model's output needs a batch
@pytest.mark.parametrize("case", UNBATCHED, ids=[c[0] for c in UNBATCHED])
def test_unbatched_input_is_taken_as_torch_takes_it(case, rule):
    _, factory, shape = case
    reference, layer = make(factory, rule)
    x = torch.randn(shape)
    grad_out = torch.randn(reference(x).shape)
    y, gx, g = run(layer, x, grad_out)
    y1, gx1, g1 = run(layer, x[None], grad_out[None])  # as a batch of one
    assert torch.equal(y, reference(x)) and torch.equal(y, y1[0]) and torch.equal(gx, gx1[0])
    for name, grad in g.items():
        assert torch.equal(grad, g1[name]), name


@pytest.mark.parametrize("rule", RULES)
def test_output_can_be_modified_in_place(case, rule):
    _, factory, shape = case
    reference, layer = make(factory, rule)
    x = torch.randn(shape)
    y = nn.ReLU(inplace=True)(layer(x))  # a custom Function's view output would refuse this
    y.sum().backward()
    assert torch.equal(y, torch.relu(reference(x)))


@pytest.mark.parametrize("rule", RULES)
def test_every_parameter_gets_a_gradient(case, rule):
    _, factory, shape = case
    _, layer = make(factory, rule)
    layer(torch.randn(shape, requires_grad=True)).square().sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None, name
    if rule == "kp":  # B.grad is exactly W.grad, in its own storage
        assert torch.equal(layer.feedback.grad, layer.weight.grad)
        assert layer.feedback.grad.data_ptr() != layer.weight.grad.data_ptr()


@pytest.mark.parametrize("rule", RULES)
def test_state_dict_round_trip(case, rule):
    _, factory, shape = case
    _, layer = make(factory, rule)
    x = torch.randn(shape)
    layer(x).sum().backward()
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    _, other = make(factory, rule)
    other.set_rule(rule, seed=12345)  # different feedback until loaded
    other.load_state_dict(state, strict=True)
    assert other.feedback_seed == layer.feedback_seed
    for name, value in layer.state_dict().items():  # feedback and counters included
        assert torch.equal(other.state_dict()[name], value), name
    with torch.no_grad():
        grad_out = torch.randn(layer(x).shape)
    y, gx, _ = run(layer, x, grad_out)
    y2, gx2, _ = run(other, x, grad_out)
    assert torch.equal(y, y2) and torch.equal(gx, gx2)
    # (after a backward: dfa's B takes its shape from the error and the input)
    torch.testing.assert_close(other.feedback_weight(), layer.feedback_weight(), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rule", RULES)
def test_autocast(case, rule, dtype, monkeypatch):
    _, factory, shape = case
    reference, layer = make(factory, rule)
    x = torch.randn(shape)
    with torch.autocast(DEVICE.type, dtype=dtype):
        expected = reference(x)
    grad_out = torch.randn(expected.shape)
    y, gx, grads = run(layer, x, grad_out, dtype=dtype)
    assert y.dtype == dtype
    assert torch.equal(y, expected)
    assert gx.dtype == torch.float32 and torch.isfinite(gx).all()
    for name, p in layer.named_parameters():
        assert grads[name].dtype == p.dtype, name
    if rule not in TRANSPOSED:
        return
    # with B = W, autocast gradients are torch's own autocast gradients, bit for bit
    bind = layer.learning_rule.bind
    monkeypatch.setattr(type(layer.learning_rule), "bind",
                        lambda self, lay: Feedback(lambda w: w, bind(lay).learned))
    _, gx, grads = run(layer, x, grad_out, dtype=dtype)
    _, gx_ref, grads_ref = run(reference, x, grad_out, dtype=dtype)
    _, gx_again, grads_again = run(reference, x, grad_out, dtype=dtype)
    assert_as_torch([gx, *(grads[n] for n in grads_ref)], [gx_ref, *grads_ref.values()],
                    [gx_again, *grads_again.values()])


@pytest.mark.parametrize("rule", RULES)
def test_transposed_convolution_takes_torchs_output_size(rule):
    reference, layer = make(lambda: nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1), rule)
    x = torch.randn(2, 3, 5, 5)
    assert torch.equal(layer(x, output_size=[10, 10]), reference(x, output_size=[10, 10]))
    assert layer(x, output_size=[10, 10]).shape[-2:] == (10, 10)


# gradgradcheck is slow on the larger cases: one of each kind of layer
SECOND_ORDER = [c for c in LAYERS if c[0] in (
    "linear_3d_input", "conv1d_stride", "conv2d_same_even", "convtranspose1d_output_padding")]


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("case", SECOND_ORDER, ids=[c[0] for c in SECOND_ORDER])
def test_autocast_leaves_float64_alone_as_torch_does(case, rule):
    _, factory, shape = case
    reference, layer = make(factory, rule, torch.float64)
    x = torch.randn(shape, dtype=torch.float64)
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        expected = reference(x)
    grad_out = torch.randn(expected.shape, dtype=torch.float64)
    y, gx, grads = run(layer, x, grad_out, dtype=torch.bfloat16)
    assert expected.dtype == y.dtype == gx.dtype == torch.float64
    assert torch.equal(y, expected)
    assert all(g.dtype == torch.float64 for g in grads.values())


@pytest.mark.parametrize("rule", TRANSPOSED)
@pytest.mark.parametrize("case", SECOND_ORDER, ids=[c[0] for c in SECOND_ORDER])
def test_double_backward_differentiates_the_rules_backward(case, rule, monkeypatch):
    _, factory, shape = case
    _, layer = make(factory, rule, torch.float64)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    params = (layer.weight,) + ((layer.bias,) if layer.bias is not None else ())

    def f(x, *ps):
        with biograd.double_backward():
            return layer(x)

    if rule != "brsf":  # brsf draws a new B at every forward: no function to differentiate
        assert torch.autograd.gradgradcheck(f, (x, *params), fast_mode=True,
                                            nondet_tol=NONDET_TOL)
    # with B = W, second derivatives are backprop's own
    bind = layer.learning_rule.bind
    monkeypatch.setattr(type(layer.learning_rule), "bind",
                        lambda self, lay: Feedback(lambda w: w, bind(lay).learned))
    assert torch.autograd.gradgradcheck(f, (x, *params), fast_mode=True, nondet_tol=NONDET_TOL)


@pytest.mark.parametrize("rule", TRANSPOSED)
@pytest.mark.parametrize("case", SECOND_ORDER, ids=[c[0] for c in SECOND_ORDER])
def test_double_backward_outside_the_block_raises_where_torchs_op_ran(case, rule):
    """A create_graph backward through a layer that ran torch's own op with B in W's place
    raises, saying what to do; through any other layer it runs (gradgradcheck above)."""
    _, factory, shape = case
    _, layer = make(factory, rule, torch.float64)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    grad = lambda: torch.autograd.grad(y, x, torch.ones_like(y), create_graph=True)  # noqa: E731
    if through_torch_op(layer):
        with pytest.raises(RuntimeError, match=r"within `with biograd.double_backward\(\):`"):
            grad()
    else:
        grad()


# (layers on bp and dfa_blocks run torch's own op, which the transforms take; so does, for
# vmap and jvp, which need no backward, a convolution that runs torch's op, see
# through_torch_op)
@pytest.mark.parametrize("rule", [r for r in RULES if not biograd.get_rule(r).transports_weights])
@pytest.mark.parametrize("transform", ["vmap", "grad", "jvp"])
def test_torch_func_transforms_are_refused_naming_layer_and_rule(rule, transform):
    from torch import func

    layer = DROP_INS[nn.Conv2d](3, 4, 3, rule=rule)
    x = torch.randn(2, 3, 5, 5)
    calls = {"vmap": lambda m: func.vmap(m)(x),
             "grad": lambda m: func.grad(lambda x: m(x).sum())(x),
             "jvp": lambda m: func.jvp(m, (x,), (x,))}
    if transform != "grad" and through_torch_op(layer):
        torch.testing.assert_close(calls[transform](layer), calls[transform](layer.to_torch()),
                                   rtol=0, atol=0)
    else:
        with pytest.raises(RuntimeError, match=rf"Conv2d on rule {rule}.*torch.func transforms"):
            calls[transform](layer)
    params = dict(layer.named_parameters())  # functional_call alone is fine
    assert torch.equal(func.functional_call(layer, params, (x,)), layer(x))


@pytest.mark.parametrize("wrap", ["checkpoint", "save_on_cpu"])
@pytest.mark.parametrize("rule", ["fa", "ss", "brsf"])
def test_saved_tensor_hooks_of_the_callers_get_the_rules_gradients(rule, wrap):
    """Under saved-tensor hooks of the caller's own (activation checkpointing, offloading), a
    convolution runs its Function (its own hook would hide the caller's): the gradients are
    those of the same forward without them, B included."""
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(0)
    net = biograd.convert(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
                                        nn.Conv2d(4, 2, 3, padding=1)), rule, seed=5)
    x = torch.randn(2, 3, 6, 6, requires_grad=True)

    def grads(forward):
        net.zero_grad(set_to_none=True)
        x.grad = None
        forward().square().sum().backward()
        return [x.grad, *(p.grad for p in net.parameters())]

    plain = grads(lambda: net(x))
    if wrap == "checkpoint":
        wrapped = grads(lambda: checkpoint(net, x, use_reentrant=False))
    else:
        def offloaded():
            with torch.autograd.graph.save_on_cpu():
                return net(x)
        wrapped = grads(offloaded)
    for a, b in zip(plain, wrapped, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("rule", ["fa", "ss", "frsf"])
def test_channels_last_convolution_gets_the_functions_gradients(rule):
    """A channels_last convolution (W, B and x in that layout) on torch's op with B saved in
    W's place gives the gradients its Function gives (within double_backward())."""
    torch.manual_seed(0)
    layer = DROP_INS[nn.Conv2d](3, 4, 3, padding=1, rule=rule, seed=2).to(
        memory_format=torch.channels_last)
    x = torch.randn(2, 3, 6, 6).to(memory_format=torch.channels_last)
    grad_out = torch.randn(2, 4, 6, 6)
    _, gx, g = run(layer, x, grad_out)
    _, gx_f, g_f = run(layer, x, grad_out, functions=True)
    torch.testing.assert_close(gx, gx_f, rtol=1e-6, atol=1e-7)
    for name in g:
        torch.testing.assert_close(g[name], g_f[name], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("modified", ["weight", "input"])
def test_in_place_change_of_a_saved_tensor_is_caught_on_torchs_op(modified):
    """On torch's op with B in W's place, the saved-tensor hook stands in for autograd's own
    version check: W or x changed in place between forward and backward raises, as torch's
    layer does, instead of a backward with other values."""
    layer = DROP_INS[nn.Conv2d](3, 4, 3, rule="ss", seed=1)
    x = torch.randn(2, 3, 5, 5, requires_grad=True)
    x_in = x * 1  # a non-leaf input, which may be changed in place
    y = layer(x_in)
    assert type(y.grad_fn).__name__ == "ConvolutionBackward0"
    with torch.no_grad():
        (layer.weight if modified == "weight" else x_in).add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_an_op_that_saves_no_w_falls_back_to_the_function(monkeypatch):
    """Where torch's op saves no W (a kernel that saves a copy of it), the convolution runs
    its Function instead, whose gradients are the rule's."""
    from biograd.nn import functional

    _, layer = make(lambda: nn.Conv2d(3, 4, 3, padding=1), "fa")
    x, grad_out = torch.randn(2, 3, 5, 5), torch.randn(2, 4, 5, 5)
    _, gx, g = run(layer, x, grad_out)
    monkeypatch.setattr(functional._Saving, "pack", lambda self, t: (t, t._version))
    y, gx_fallback, g_fallback = run(layer, x, grad_out)
    assert type(y.grad_fn).__name__ == "_ConvBackward"
    torch.testing.assert_close(gx_fallback, gx, rtol=1e-6, atol=1e-7)
    for name in g:
        torch.testing.assert_close(g_fallback[name], g[name], rtol=1e-6, atol=1e-7)
