"""biograd's RNN, GRU, LSTM and their cells against torch's, under every rule.

Identities, not numbers:
- Forward: torch's reference CPU computation bit for bit (torch.backends.mkldnn off: the ops
  of aten's RNN.cpp), dropout masks included, under every rule and under autocast. nn.LSTM's
  default CPU forward is oneDNN's fused kernel, which rounds differently: within 1e-6 of it
  (measured at these sizes: at most 1.2e-7 in float32; under bf16 autocast, where the fused
  kernel runs in bf16 and torch's reference path keeps the cell state in float32, about
  3e-3).
- With B = W the gradients of the input, h0, c0 and every parameter are torch's BPTT (its
  default path) within rtol 1e-5, atol 1e-6 (measured: about 5e-7 relative at most; the
  same sums in another order); gradcheck in float64 then passes on the whole Jacobian.
- Under every rule each product's input gradient is δy B with its weight's B, at every step,
  and each weight's gradient the true local one, Σ over its products of δyᵀ x; gradcheck in
  float64 on the weights of one step, whose errors reach no B before them.
- dfa and drtp: B_ih e (B_ih y*) at every step's input, B_hh e at h0; no error through W.
"""

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from checks import assert_every_layer_learnt, load_benchmark, sweep_rule
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import biograd
import biograd.nn.recurrent as recurrent
from biograd.nn import PerWeight, WeightFeedback
from biograd.rules import Feedback, get_rule

RULES = biograd.list_rules()
# the rules whose δx is Bᵀδy: the identities with B = W hold for these (dfa and drtp project
# the model's output signal instead: checked on models below)
TRANSPOSED = [r for r in RULES if not get_rule(r).direct]
DIRECT = [r for r in RULES if get_rule(r).direct]
I, H, T, N, P = 5, 6, 7, 3, 4  # input, hidden, steps, batch, proj_size  # noqa: E741
GRAD_TOL = {"rtol": 1e-5, "atol": 1e-6}

pytestmark = [
    pytest.mark.usefixtures("one_thread"),  # tiny tensors: nothing to split
    # torch.backends.mkldnn.flags (torch's reference path) says this at every use
    pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN:UserWarning"),
    pytest.mark.filterwarnings("ignore:LSTM with projections is not supported:UserWarning"),
]

# (id, torch module, options: "h0" given, "unbatched" input)
CASES = [
    ("rnn", lambda: nn.RNN(I, H), {}),
    ("rnn_relu_2layers_h0", lambda: nn.RNN(I, H, num_layers=2, nonlinearity="relu"),
     {"h0": True}),
    ("gru", lambda: nn.GRU(I, H), {}),
    ("gru_bidirectional_nobias_batch_first",
     lambda: nn.GRU(I, H, bidirectional=True, bias=False, batch_first=True), {}),
    ("gru_2layers_dropout_unbatched", lambda: nn.GRU(I, H, num_layers=2, dropout=0.5),
     {"unbatched": True}),
    ("lstm", lambda: nn.LSTM(I, H), {}),
    ("lstm_2layers_bidirectional_h0", lambda: nn.LSTM(I, H, num_layers=2, bidirectional=True),
     {"h0": True}),
    ("lstm_proj_2layers_dropout_batch_first",
     lambda: nn.LSTM(I, H, num_layers=2, proj_size=P, dropout=0.3, batch_first=True),
     {"h0": True}),
    ("lstm_proj_bidirectional_unbatched",
     lambda: nn.LSTM(I, H, proj_size=P, bidirectional=True, batch_first=True),
     {"unbatched": True, "h0": True}),
    ("rnn_cell", lambda: nn.RNNCell(I, H), {}),
    ("rnn_cell_relu_nobias_h0", lambda: nn.RNNCell(I, H, bias=False, nonlinearity="relu"),
     {"h0": True}),
    ("gru_cell_unbatched_h0", lambda: nn.GRUCell(I, H), {"unbatched": True, "h0": True}),
    ("lstm_cell_h0", lambda: nn.LSTMCell(I, H), {"h0": True}),
]
IDS = [c[0] for c in CASES]


@pytest.fixture(params=CASES, ids=IDS)
def case(request):
    return request.param


def pair(factory, rule, dtype=torch.float32):
    """torch's module and a converted copy (equal values, shared nothing). On dfa or drtp the
    layer is a model whose ŷ is its first output, for a forward (these rules' backward needs
    a batch-first ŷ: see the models below)."""
    reference = factory().to(dtype)
    layer = biograd.convert(copy.deepcopy(reference), rule, seed=7)
    assert isinstance(layer, PerWeight) and isinstance(layer, type(reference))
    if rule in DIRECT:
        biograd.error_source(layer, output=lambda out: flat(out)[0])
    return reference, layer


def inputs(module, options, dtype=torch.float32):
    """(x, hx) for a case: x, and hx (None, a tensor, or LSTM's pair) as torch takes them."""
    lstm = isinstance(module, (nn.LSTM, nn.LSTMCell))
    unbatched = options.get("unbatched", False)
    if isinstance(module, nn.RNNCellBase):
        x_shape, shapes = ((I,), [(H,)]) if unbatched else ((N, I), [(N, H)])
        shapes = shapes * (2 if lstm else 1)
    else:
        layers = module.num_layers * (2 if module.bidirectional else 1)
        x_shape = (T, I) if unbatched else (N, T, I) if module.batch_first else (T, N, I)
        batch = () if unbatched else (N,)
        shapes = [(layers, *batch, module.proj_size or H)] + ([(layers, *batch, H)] * lstm)
    x = torch.randn(x_shape, dtype=dtype)
    if not options.get("h0"):
        return x, None
    states = [torch.randn(s, dtype=dtype) for s in shapes]
    return x, (tuple(states) if lstm else states[0])


def leaves(x, hx):
    """Fresh leaves that need gradients: (x, hx, [x, *states])."""
    x = x.detach().clone().requires_grad_()
    if hx is None:
        return x, None, [x]
    states = [s.detach().clone().requires_grad_() for s in
              (hx if isinstance(hx, tuple) else (hx,))]
    return x, (tuple(states) if isinstance(hx, tuple) else states[0]), [x, *states]


def flat(result) -> list[torch.Tensor]:
    """The tensors of a module's result: output and h_n (and c_n), or a cell's h (and c)."""
    out = []
    for r in result if isinstance(result, tuple) else (result,):
        out.extend(r if isinstance(r, tuple) else (r,))
    return out


def forward(module, x, hx, fused=True):
    """The outputs, dropout drawn from seed 0; fused=False: torch's reference CPU path."""
    torch.manual_seed(0)
    with torch.backends.mkldnn.flags(enabled=fused):
        return flat(module(x, hx))


def run(module, x, hx, fused=True):
    """Forward (dropout drawn from seed 0) and backward of Σ outputs ⊙ fixed noise; returns
    (outputs, gradients of x and the given states, {parameter: gradient})."""
    module.zero_grad(set_to_none=True)
    x, hx, given = leaves(x, hx)
    outs = forward(module, x, hx, fused)
    gen = torch.Generator().manual_seed(1)
    sum((o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum() for o in outs).backward()
    return outs, [t.grad for t in given], {n: p.grad for n, p in module.named_parameters()}


def with_feedback_equal_to_weight(monkeypatch, layer):
    """Every weight's rule with B = W, keeping its plumbing (kp's learned B, brsf's counter)."""
    for cls in {type(h.learning_rule) for h in layer.per_weight.values()}:
        bind = cls.bind
        monkeypatch.setattr(cls, "bind", lambda self, lay, bind=bind: Feedback(
            lambda w: w, bind(self, lay).learned))


def torch_params(module):
    """{name: parameter} of the torch layer's own (not the rules' state)."""
    return {n: p for n, p in module.named_parameters() if not n.startswith("per_weight.")}


# --- forward --------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", RULES)
def test_forward_is_torchs_reference_path_bit_for_bit(case, rule):
    _, factory, options = case
    reference, layer = pair(factory, rule)
    x, hx, _ = leaves(*inputs(reference, options))
    expected = forward(reference, x, hx, fused=False)
    got = forward(layer, x, hx, fused=False)
    for g, e in zip(got, expected, strict=True):
        assert g.shape == e.shape and torch.equal(g, e)


@pytest.mark.parametrize("rule", ["fa", "kp"])
def test_forward_is_within_rounding_of_torchs_default_path(case, rule):
    _, factory, options = case
    reference, layer = pair(factory, rule)
    x, hx = inputs(reference, options)
    expected, _, _ = run(reference, x, hx)  # nn.LSTM: oneDNN's fused kernel
    got, _, _ = run(layer, x, hx)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-6)


def test_with_gradients_off_torchs_own_forward_runs():
    reference, layer = pair(lambda: nn.LSTM(I, H, num_layers=2), "fa")
    x = torch.randn(T, N, I)
    with torch.no_grad():  # evaluation: the rule has nothing to do, the fused kernel runs
        assert all(torch.equal(a, b) for a, b in zip(flat(layer(x)), flat(reference(x)),
                                                     strict=True))


# --- gradients ------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", TRANSPOSED)
def test_with_feedback_equal_to_weight_gradients_are_torchs_bptt(case, rule, monkeypatch):
    _, factory, options = case
    reference, layer = pair(factory, rule)
    with_feedback_equal_to_weight(monkeypatch, layer)
    x, hx = inputs(reference, options, torch.float32)
    _, given_ref, params_ref = run(reference, x, hx)
    _, given, params = run(layer, x, hx)
    for got, expected in zip(given, given_ref, strict=True):  # x, h0, c0
        torch.testing.assert_close(got, expected, **GRAD_TOL)
    for name, expected in params_ref.items():
        torch.testing.assert_close(params[name], expected, **GRAD_TOL, msg=name)
    if rule == "kp":  # B's gradient is W's, summed over the same steps
        for key, holder in layer.per_weight.items():
            assert torch.equal(holder.feedback.grad, params[key]), key


@pytest.mark.parametrize("rule", [r for r in TRANSPOSED if not get_rule(r).transports_weights])
def test_every_product_sends_its_input_gradient_through_its_weights_b(case, rule, monkeypatch):
    """At every step, every feedback product's input gets δy B (B: that weight's rule's), and
    every weight's gradient is Σ δyᵀ x over its products: the true local one."""
    _, factory, options = case
    reference, layer = pair(factory, rule)
    calls = []

    def recorded(x, weight, bias, feedback):
        branch = x.clone() if x.requires_grad else x  # this product's share of x's gradient
        y = feedback_linear(branch, weight, bias, feedback)
        for t in (branch, y):
            if t.requires_grad:
                t.retain_grad()
        calls.append((branch, weight, y))
        return y

    feedback_linear = recurrent.feedback_linear
    monkeypatch.setattr(recurrent, "feedback_linear", recorded)
    x, hx = inputs(reference, options)
    layer.eval()  # no dropout between the layers: x.grad below is the products' alone
    _, _, params = run(layer, x, hx)
    feedback = {id(getattr(layer, k)): h.feedback_weight() for k, h in layer.per_weight.items()}
    expected_w = {k: torch.zeros_like(getattr(layer, k)) for k in layer.per_weight}
    by_id = {id(getattr(layer, k)): k for k in layer.per_weight}
    assert len(calls) >= len(layer.per_weight)
    for branch, weight, y in calls:
        b = feedback[id(weight)]
        if branch.grad is not None:
            torch.testing.assert_close(branch.grad, y.grad @ b, **GRAD_TOL)
        expected_w[by_id[id(weight)]] += y.grad.flatten(0, -2).T @ branch.flatten(0, -2)
        assert not torch.equal(b, weight), "the test needs B ≠ W"
    for key, expected in expected_w.items():
        torch.testing.assert_close(params[key], expected, **GRAD_TOL, msg=key)


ONE_STEP = [("lstm", lambda: nn.LSTM(I, H), 1), ("gru_bidirectional",
            lambda: nn.GRU(I, H, bidirectional=True), 1), ("rnn", lambda: nn.RNN(I, H), 1),
            ("rnn_cell", lambda: nn.RNNCell(I, H), 0), ("gru_cell", lambda: nn.GRUCell(I, H), 0),
            ("lstm_cell", lambda: nn.LSTMCell(I, H), 0)]


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("one", ONE_STEP, ids=[c[0] for c in ONE_STEP])
def test_gradcheck_float64_weights_of_one_step_under_every_rule(one, rule):
    _, factory, steps = one
    _, layer = pair(factory, rule, torch.float64)
    x, _ = inputs(layer, {}, torch.float64)
    x = x[:1] if steps else x  # one step: no error reaches a weight through a B first
    params = tuple(torch_params(layer).values())

    def f(*ps):
        return flat(layer(x))

    assert torch.autograd.gradcheck(f, params, fast_mode=True)


@pytest.mark.parametrize("rule", TRANSPOSED)
def test_gradcheck_float64_with_feedback_equal_to_weight_the_whole_jacobian(case, rule,
                                                                              monkeypatch):
    _, factory, options = case
    _, layer = pair(factory, rule, torch.float64)
    layer.eval()  # no dropout: a function to differentiate
    with_feedback_equal_to_weight(monkeypatch, layer)
    x, hx, given = leaves(*inputs(layer, options, torch.float64))
    params = tuple(torch_params(layer).values())

    def f(*tensors):
        return flat(layer(x, hx))

    assert torch.autograd.gradcheck(f, (*given, *params), fast_mode=True)


@pytest.mark.parametrize("rule", TRANSPOSED)
def test_every_parameter_gets_a_gradient(case, rule):
    _, factory, options = case
    _, layer = pair(factory, rule)
    _, given, params = run(layer, *inputs(layer, options))
    assert all(g is not None for g in given)
    for name, grad in params.items():  # kp's and the alignment family's B included
        assert grad is not None and torch.isfinite(grad).all(), name


def test_a_weight_on_bp_sends_its_error_as_backprop_does():
    """Per-weight rules: the recurrent weights on bp, the input's on fa. Errors go back in
    time exactly (every parameter's gradient is torch's), and only x's goes through B_ih."""
    reference, layer = pair(lambda: nn.GRU(I, H), "fa")
    layer.per_weight.weight_hh_l0.set_rule("bp")
    assert layer.rule == "weight_ih_l0: fa, weight_hh_l0: bp"
    x = torch.randn(T, N, I)
    _, (gx_ref,), params_ref = run(reference, x, None)
    _, (gx,), params = run(layer, x, None)
    for name, expected in params_ref.items():
        torch.testing.assert_close(params[name], expected, **GRAD_TOL, msg=name)
    assert not torch.allclose(gx, gx_ref)


# --- dfa and drtp: the output's signal at every step ----------------------------------------


class Classifier(nn.Module):
    """An LSTM read out at its last step: (N, T, I) -> (N, K)."""

    def __init__(self, batch_first=True, classes=3):
        super().__init__()
        self.rnn = nn.LSTM(I, H, batch_first=batch_first)
        self.head = nn.Linear(H, classes)

    def forward(self, x, hx=None):
        out, _ = self.rnn(x, hx)
        return self.head(out[:, -1] if self.rnn.batch_first else out[-1])


@pytest.mark.parametrize("rule", DIRECT)
@pytest.mark.parametrize("batch_first", [True, False])
def test_direct_rules_send_the_signal_to_every_steps_input_and_to_h0(rule, batch_first):
    model = biograd.convert(Classifier(batch_first), rule, seed=0)
    x = torch.randn((N, T, I) if batch_first else (T, N, I), requires_grad=True)
    h0, c0 = (torch.randn(1, N, H, requires_grad=True) for _ in range(2))
    y = torch.tensor([0, 2, 1])
    biograd.targets(model, y)  # drtp's; a no-op on dfa
    out = model(x, (h0, c0))
    out.retain_grad()
    F.cross_entropy(out, y).backward()
    signal = out.grad if rule == "dfa" else F.one_hot(y, 3).float()
    holders = model.rnn.per_weight
    b_ih = holders.weight_ih_l0.feedback_weight()  # (K, I): one B for every step
    b_hh = holders.weight_hh_l0.feedback_weight()  # (K, H)
    assert b_ih.shape == (3, I) and b_hh.shape == (3, H)
    per_step = (signal @ b_ih).unsqueeze(1 if batch_first else 0).expand_as(x)
    torch.testing.assert_close(x.grad, per_step, **GRAD_TOL)  # no error through W_ih
    torch.testing.assert_close(h0.grad[0], signal @ b_hh, **GRAD_TOL)  # nor through W_hh
    assert c0.grad is not None and torch.isfinite(c0.grad).all()  # f ⊙ c: exact, no weight


def test_packed_sequences_are_refused_on_direct_rules_in_one_line():
    model = biograd.convert(nn.LSTM(I, H), "dfa")
    packed = pack_padded_sequence(torch.randn(T, N, I), torch.tensor([7, 5, 2]))
    with pytest.raises(ValueError, match=r"PackedSequence has no batch dimension.*padded"):
        model(packed)


# --- packed sequences ----------------------------------------------------------------------


PACKED = [("lstm_2layers_bidirectional_h0", lambda: nn.LSTM(I, H, 2, bidirectional=True), True),
          ("gru", lambda: nn.GRU(I, H), False),
          ("lstm_proj", lambda: nn.LSTM(I, H, proj_size=P), True),
          ("rnn_bidirectional", lambda: nn.RNN(I, H, bidirectional=True), False)]


@pytest.mark.parametrize("rule", TRANSPOSED)
@pytest.mark.parametrize("packed", PACKED, ids=[c[0] for c in PACKED])
def test_packed_sequences_are_torchs(packed, rule, monkeypatch):
    _, factory, h0 = packed
    reference, layer = pair(factory, rule)
    x, hx = inputs(reference, {"h0": h0})
    lengths = torch.tensor([4, 7, 1])  # unsorted: torch sorts and unsorts

    def call(module):
        module.zero_grad(set_to_none=True)
        xs, states, given = leaves(x, hx)
        with torch.backends.mkldnn.flags(enabled=False):
            out, hidden = module(pack_padded_sequence(xs, lengths, enforce_sorted=False), states)
        outs = [out.data, *flat(hidden)]
        sum(o.square().sum() for o in outs).backward()
        return outs, [t.grad for t in given], torch_params(module)

    expected, given_ref, params_ref = call(reference)
    got, _, _ = call(layer)
    assert all(torch.equal(g, e) for g, e in zip(got, expected, strict=True))
    with_feedback_equal_to_weight(monkeypatch, layer)
    _, given, params = call(layer)
    for g, e in zip(given, given_ref, strict=True):
        torch.testing.assert_close(g, e, **GRAD_TOL)
    for name, p in params_ref.items():
        torch.testing.assert_close(params[name].grad, p.grad, **GRAD_TOL, msg=name)


# --- autocast -------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", RULES)
def test_autocast_bf16_is_torchs_reference_path(case, rule):
    """Under autocast torch's reference path runs the products in bf16 and the element-wise
    maths in the dtypes they meet (LSTM's c and GRU's h from a float32 h0 stay float32, so
    their outputs do): so do these, bit for bit, dtypes included."""
    _, factory, options = case
    reference, layer = pair(factory, rule)
    x, hx = inputs(reference, options)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = forward(reference, *leaves(x, hx)[:2], fused=False)
        got, given, params = run(layer, x, hx, fused=False) if rule in TRANSPOSED else \
            (forward(layer, *leaves(x, hx)[:2], fused=False), [], {})  # dfa: forward only
    for g, e in zip(got, expected, strict=True):
        assert g.dtype == e.dtype and torch.equal(g, e)
    plain = forward(layer, *leaves(x, hx)[:2], fused=False)
    assert not torch.equal(got[0].float(), plain[0])  # autocast reached the products
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in given)
    for name, grad in params.items():
        assert grad.dtype == torch.float32 and torch.isfinite(grad).all(), name


# --- state ----------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("which", [0, 6, 8, 12], ids=[IDS[i] for i in (0, 6, 8, 12)])
def test_state_dict_round_trips_and_torchs_keys_load_both_ways(which, rule):
    _, factory, options = CASES[which]
    reference, layer = pair(factory, rule)
    holders = layer.per_weight
    own = {f"per_weight.{k}.{s}" for k, h in holders.items()
           for s in ("feedback_seed", *h.learning_rule.state)}
    assert set(layer.state_dict()) == set(reference.state_dict()) | own
    x, hx = inputs(reference, options)
    run(layer, x, hx) if rule in TRANSPOSED else forward(layer, x, hx)  # dfa's: on a model
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    _, other = pair(factory, rule)
    other.set_rule(rule, seed=12345)  # other feedback until loaded
    other.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
    for name, value in layer.state_dict().items():
        assert torch.equal(other.state_dict()[name], value), name
    if not get_rule(rule).reads_output:  # dfa's B takes its shape from a backward
        for key, b in layer.feedback_weights().items():
            assert torch.equal(other.feedback_weights()[key], b), key
    # torch's checkpoint loads strict (the feedback drawn from its weights), and back
    other.load_state_dict(reference.state_dict(), strict=True)
    plain = biograd.unconvert(other)
    assert type(plain) is type(reference) and not hasattr(plain, "per_weight")
    reference.load_state_dict(plain.state_dict(), strict=True)


@pytest.mark.parametrize("rule", ["fa", "kp", "wm"])
def test_unconvert_gives_torchs_module_with_the_same_parameters(rule):
    model = nn.Sequential(nn.LSTM(I, H, num_layers=2, bidirectional=True), nn.GRUCell(I, H))
    params = dict(model.named_parameters())
    biograd.convert(model, rule)
    assert isinstance(model[0], biograd.nn.LSTM) and isinstance(model[1], biograd.nn.GRUCell)
    biograd.unconvert(model)
    assert type(model[0]) is nn.LSTM and type(model[1]) is nn.GRUCell
    assert all(p is params[n] for n, p in model.named_parameters())  # the same objects
    x = torch.randn(T, N, I)
    out, _ = model[0](x)  # torch's forward, with torch's flat weights
    assert out.shape == (T, N, 2 * H)


def test_feedback_comes_from_the_seed_alone_for_ddp():
    """Every rank converts with the same seed: the same feedback, whatever torch's global
    stream; feedback_buffers lists every weight's, so DDP leaves them alone."""
    states = []
    for stream in (1, 2):
        torch.manual_seed(0)
        model = nn.Sequential(nn.LSTM(I, H, num_layers=2), nn.Linear(H, 3))
        torch.manual_seed(stream)
        biograd.convert(model, "fa", seed=0)
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    names = biograd.feedback_buffers(model)
    assert names == [f"0.per_weight.{w}_l{k}.feedback" for k in (0, 1) for w in
                     ("weight_ih", "weight_hh")] + ["1.feedback"]
    biograd.exclude_feedback_from_ddp(model)
    assert set(names) <= set(model._ddp_params_and_buffers_to_ignore)
    biograd.convert(model, "brsf", seed=0)  # a pool and a CPU step counter per weight
    assert "0.per_weight.weight_hh_l1.feedback_step" in biograd.feedback_buffers(model)


# --- conversion, rules between steps, angles --------------------------------------------------


def test_convert_reports_every_weight_as_converted_and_switches_rules():
    model = nn.Sequential(nn.Linear(I, I), nn.LSTM(I, H, proj_size=P), nn.LSTMCell(P, H))
    biograd.convert(model, "ss", seed=3)
    report = biograd.report(model)
    assert [n for n, *_ in report.layers] == [
        "0", "1.per_weight.weight_ih_l0", "1.per_weight.weight_hh_l0", "1.per_weight.weight_hr_l0",
        "2.per_weight.weight_ih", "2.per_weight.weight_hh"]
    assert report.transport == []  # the biases learn from their own local gradient
    assert [n for n, _ in biograd.feedback_layers(model)] == [n for n, *_ in report.layers]
    seeds = {n: h.feedback_seed for n, h in biograd.feedback_layers(model)}
    biograd.convert(model, "ss", seed=3, rules={"1": "bp"})  # a switch, as one layer
    assert model[1].rule == "bp" and model[2].rule == "ss"
    assert {n: h.feedback_seed for n, h in biograd.feedback_layers(model)} == seeds
    (_, kind, count, why), = biograd.report(model).transport
    assert (kind, count) == ("LSTM", sum(p.numel() for p in torch_params(model[1]).values()))
    assert why == "on bp"


def test_a_parametrised_recurrent_layer_is_refused_naming_it():
    model = nn.Sequential(nn.GRU(I, H))
    nn.utils.parametrizations.weight_norm(model[0], "weight_hh_l0")
    with pytest.raises(ValueError, match=r"^0: GRU with a parametrised weight.*exclude="):
        biograd.convert(model, "fa")


@pytest.mark.parametrize("rule", ["wm", "sign_fixed", "brsf"])
def test_after_step_reaches_every_weight(rule):
    layer = biograd.convert(nn.LSTM(I, H, bidirectional=True), rule, seed=0)
    before = {k: b.clone() for k, b in layer.feedback_weights().items()}  # wm's: in place
    with torch.no_grad():
        for key in layer.per_weight:
            getattr(layer, key).neg_()  # every sign flips
    biograd.after_step(layer)
    after = layer.feedback_weights()
    for key, holder in layer.per_weight.items():
        w = getattr(layer, key)
        if rule == "sign_fixed":  # W held to B's signs: back to its first signs
            assert torch.equal(torch.sign(w), torch.sign(holder.feedback)), key
        else:  # wm mirrors the new W; brsf draws anew
            assert not torch.equal(before[key], after[key]), key


def test_angles_are_per_weight_input_and_recurrent_apart():
    model = biograd.convert(Classifier(), "fa", seed=0)
    angles = biograd.weight_angles(model)
    assert list(angles) == ["rnn.per_weight.weight_ih_l0", "rnn.per_weight.weight_hh_l0", "head"]
    assert all(60 < a < 120 for a in angles.values())  # random B: about 90°
    x, y = torch.randn(N, T, I), torch.tensor([0, 1, 2])
    grads = biograd.gradient_angles(model, (x, y))
    assert list(grads) == list(angles) and grads["head"] == pytest.approx(0, abs=1e-3)
    assert grads["rnn.per_weight.weight_hh_l0"] > 1  # its error came back in time through B
    assert model.rnn.rule == "fa"  # gradient_angles puts every rule back


def test_kp_decay_reaches_every_weight_and_its_b():
    model = biograd.convert(nn.GRU(I, H), biograd.get_rule("kp", decay=0.1))
    groups = biograd.optim.weight_decay_groups(model)
    decayed = next(g for g in groups if g.get("weight_decay") == 0.1)["params"]
    expected = [p for n, p in model.named_parameters() if "weight" in n or "feedback" in n]
    assert {id(p) for p in decayed} == {id(p) for p in expected}


def test_dale_leaves_recurrent_layers_free(caplog):
    model = nn.Sequential(nn.Linear(I, I), nn.ReLU(), nn.Linear(I, I), nn.LSTM(I, H))
    with caplog.at_level("INFO", logger="biograd"):
        biograd.dale(model, 0.8)
    assert "3 (recurrent" in caplog.text


@pytest.mark.parametrize("rule", [r for r in RULES if not get_rule(r).transports_weights])
def test_torch_func_transforms_are_refused_naming_the_layer(rule):
    from torch import func

    layer = biograd.nn.GRU(I, H, rule=rule)
    x = torch.randn(T, N, I)
    with pytest.raises(RuntimeError, match=rf"GRU on rule {rule}.*torch.func transforms"):
        func.grad(lambda x: layer(x)[0].sum())(x)


def test_made_directly_takes_torchs_constructor_and_a_seed():
    layer = biograd.nn.LSTM(I, H, 2, bias=False, batch_first=True, proj_size=P,
                            dtype=torch.float64, rule="fa", seed=5)
    again = biograd.nn.LSTM(I, H, 2, bias=False, batch_first=True, proj_size=P,
                            dtype=torch.float64, rule="fa", seed=5)
    assert list(layer.per_weight) == [f"weight_{w}_l{k}" for k in (0, 1) for w in
                                      ("ih", "hh", "hr")]
    for key, holder in layer.per_weight.items():
        assert isinstance(holder, WeightFeedback) and holder.weight is getattr(layer, key)
        assert holder.feedback.dtype == torch.float64
        assert torch.equal(holder.feedback, again.per_weight[key].feedback)  # from the seed
    assert biograd.nn.GRUCell(I, H).rule == "bp"
    assert "rule=fa" in repr(layer)


# --- a model with an LSTM, and one with a cell, train on every rule ----------------------------


class Encoder(nn.Module):
    """An LSTM, read at its last step: a block (one tensor out) for dfa_blocks."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(I, H, batch_first=True)

    def forward(self, x):
        return self.lstm(x)[0][:, -1]


class CellLoop(nn.Module):
    """A GRUCell stepped over time in the model's own loop."""

    def __init__(self):
        super().__init__()
        self.cell = nn.GRUCell(I, H)

    def forward(self, x):
        h = None
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
        return h


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("body", [Encoder, CellLoop], ids=["lstm", "gru_cell_loop"])
def test_a_recurrent_model_converts_and_trains_on_every_rule(body, rule):
    torch.manual_seed(0)
    model = nn.Sequential(body(), nn.Linear(H, 3))
    biograd.convert(model, sweep_rule(rule, "0"), seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    biograd.attach(opt, model)
    x, y = torch.randn(16, T, I), torch.randint(0, 3, (16,))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = []
    for step in range(6):
        ran = set()
        hooks = [m.register_forward_hook(lambda *_, n=n: ran.add(n))
                 for n, m in model.named_modules() if isinstance(m, (PerWeight, nn.Linear))]
        biograd.targets(model, y)  # drtp's; a no-op for the others
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        if step == 0:
            convertible = {n for n, m in model.named_modules()
                           if isinstance(m, (PerWeight, nn.Linear))}
            assert_every_layer_learnt(dict.fromkeys(convertible), ran,
                                      dict(model.named_parameters()))
        for h in hooks:
            h.remove()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    weights = [n for n in before if ".weight_" in n and "per_weight" not in n]
    assert weights and all(not torch.equal(before[n], model.get_parameter(n)) for n in weights)


@pytest.mark.parametrize("rule", ["fa", "kp", "sa", "wm"])
def test_ddp_trains_with_the_feedback_left_alone(rule):
    """One gloo rank in this process: DDP finds every parameter's gradient at every step (a
    learned B without one would stop it at the next), and leaves the feedback buffers alone."""
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = biograd.convert(Classifier(), rule, seed=0)
        ignored = biograd.exclude_feedback_from_ddp(model)
        # fa's B, wm's B and counter, of W_ih, W_hh and the head (kp's and sa's B: Parameters)
        assert len(ignored) == 3 * {"fa": 1, "wm": 2}.get(rule, 0)
        ddp = nn.parallel.DistributedDataParallel(model)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
        biograd.attach(opt, model)
        x, y = torch.randn(N, T, I), torch.tensor([0, 1, 2])
        before = {k: v.clone() for k, v in model.state_dict().items()}
        for _ in range(3):
            F.cross_entropy(ddp(x), y).backward()
            assert all(p.grad is not None for p in model.parameters())
            opt.step()
            opt.zero_grad()
        moved = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
        assert "rnn.weight_hh_l0" in moved
        assert ("rnn.per_weight.weight_hh_l0.feedback" in moved) == (rule != "fa")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("rule", ["fa", "kp"])
@pytest.mark.parametrize("which", [6, 11], ids=[IDS[6], IDS[11]])
def test_double_backward_with_feedback_equal_to_weight_is_backprops(which, rule, monkeypatch):
    _, factory, options = CASES[which]
    _, layer = pair(factory, rule, torch.float64)
    with_feedback_equal_to_weight(monkeypatch, layer)
    x, hx, given = leaves(*inputs(layer, options, torch.float64))
    params = tuple(torch_params(layer).values())

    def f(*tensors):
        return flat(layer(x, hx))

    assert torch.autograd.gradgradcheck(f, (*given, *params), fast_mode=True)


def test_the_loop_cost_benchmark_times_torch_and_every_rule_asked(capsys):
    bench = load_benchmark("recurrent_cost")
    args = bench.get_args_parser().parse_args(
        ["--rules", "bp", "fa", "dfa", "drtp", "--batch", "2", "--steps", "3", "--input", "4",
         "--hidden", "5", "--calls", "1", "--rounds", "2"])
    result = bench.main(args)
    assert list(result) == ["nn.LSTM", "nn.LSTM, oneDNN off", "biograd bp", "biograd fa",
                            "biograd dfa", "biograd drtp"]
    assert result["nn.LSTM"][1] == 1.0
    assert "| biograd fa |" in capsys.readouterr().out


def test_copies_and_pickles_keep_each_weights_rule_with_its_own_layer():
    model = biograd.convert(Classifier(), "kp", seed=0)
    for clone in (copy.deepcopy(model), _pickled(model)):
        for key, holder in clone.rnn.per_weight.items():
            assert holder.weight is getattr(clone.rnn, key)  # the copy's W, not the original's
            assert torch.equal(holder.feedback, getattr(model.rnn.per_weight, key).feedback)
        x = torch.randn(N, T, I)
        assert torch.equal(clone(x), model(x))
    double = copy.deepcopy(model).double()
    assert double.rnn.per_weight.weight_hh_l0.weight.dtype == torch.float64
    assert double.rnn.per_weight.weight_hh_l0.feedback.dtype == torch.float64


def _pickled(module):
    buffer = io.BytesIO()
    torch.save(module, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)
