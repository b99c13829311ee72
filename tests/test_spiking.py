"""Spiking networks of snntorch and spikingjelly, against the libraries themselves.

The nets are built as the libraries' tutorials build them: snntorch's with plain nn.Linear and
nn.Conv2d, Leaky, Synaptic, RLeaky and RSynaptic neurons and a Python loop over time, inside
the forward (records stacked over time) or around a model called once per step; spikingjelly's
with its layer classes and LIF neurons in single-step ('s') and multi-step ('m') mode, and with
plain layers inside SeqToANNContainer. Identities, not numbers: with B = W every rule's forward
and every gradient are the library's own BPTT with its surrogate gradients, bit for bit; under
dfa every layer's call at every time step sends B e, e the error at the readout; the report
leaves no layer behind; unconvert gives back the library's classes and the state dict's keys;
spikingjelly's reset_net and set_step_mode work on the converted nets.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from checks import assert_every_layer_learnt, sweep_rule
from torch import nn

import biograd
from biograd.nn.layers import FeedbackLayer
from biograd.rules import Feedback

snn = pytest.importorskip("snntorch", reason="the spiking tests need biograd[spiking]")
sj_base = pytest.importorskip("spikingjelly.activation_based.base",
                              reason="the spiking tests need biograd[spiking]")
from snntorch import utils as snn_utils  # noqa: E402
from spikingjelly.activation_based import functional, layer, neuron, surrogate  # noqa: E402

RULES = biograd.list_rules()
# Rules whose input gradient is Bᵀδy, on every model: with B = W these are backprop (dfa and drtp
# project a signal instead; dfa_blocks replaces each block's output gradient, whatever B is).
TRANSPOSED = [r for r in RULES if not biograd.get_rule(r).direct
              and biograd.rules.rule_class(r).every_model]
T, N, K = 4, 3, 5


# --- the nets ---------------------------------------------------------------------------------

class SnnRecurrent(nn.Module):
    """snntorch, loop inside the forward (tutorial 5), with the neurons that hold weights: an
    RSynaptic with a recurrent Conv2d, an RLeaky with a recurrent Linear, a Synaptic readout.
    Returns the output spikes and membrane stacked over time, (T, N, K) each."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.rsyn = snn.RSynaptic(alpha=0.8, beta=0.9, conv2d_channels=3, kernel_size=3,
                                  threshold=0.3)
        self.fc1 = nn.Linear(3 * 6 * 6, 8)
        self.rlif = snn.RLeaky(beta=0.9, linear_features=8, threshold=0.2)
        self.fc2 = nn.Linear(8, K)
        self.syn = snn.Synaptic(alpha=0.8, beta=0.9, threshold=0.2)

    def forward(self, x):  # x (N, 1, 6, 6)
        spk1, syn1, mem1 = self.rsyn.init_rsynaptic()
        spk2, mem2 = self.rlif.init_rleaky()
        syn3, mem3 = self.syn.init_synaptic()
        spk_rec, mem_rec = [], []
        for _ in range(T):
            spk1, syn1, mem1 = self.rsyn(self.conv(x), spk1, syn1, mem1)
            spk2, mem2 = self.rlif(self.fc1(spk1.flatten(1)), spk2, mem2)
            spk3, syn3, mem3 = self.syn(self.fc2(spk2), syn3, mem3)
            spk_rec.append(spk3)
            mem_rec.append(mem3)
        return torch.stack(spk_rec), torch.stack(mem_rec)


def snn_recurrent():
    return SnnRecurrent()


def snn_cnn():
    """snntorch's convolutional net (tutorial 6): a Sequential of plain layers and Leaky
    neurons holding their state (init_hidden), the last returning (spk, mem); it is called once
    per time step (`snn_steps`)."""
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.MaxPool2d(2), snn.Leaky(beta=0.9, init_hidden=True),
        nn.Conv2d(4, 6, 3, padding=1), snn.Leaky(beta=0.9, init_hidden=True), nn.Flatten(),
        nn.Linear(6 * 3 * 3, K),
        snn.Leaky(beta=0.9, threshold=0.2, init_hidden=True, output=True))


def snn_steps(net, x):
    """Tutorial 6's forward_pass: reset, then one call per step; records (T, N, K)."""
    snn_utils.reset(net)
    spk, mem = zip(*(net(x) for _ in range(T)), strict=True)
    return torch.stack(spk), torch.stack(mem)


class SjCNN(nn.Module):
    """spikingjelly's CNN (its conv_fashion_mnist example, shrunk): layer.Conv2d, BatchNorm2d,
    LIFNode, MaxPool2d, Flatten, Linear; the output is the firing rate over T steps, (N, K).
    Multi-step: the input repeated over time, (T, N, ...), one call; single-step: a loop."""

    def __init__(self, step_mode):
        super().__init__()
        lif = dict(surrogate_function=surrogate.ATan(), v_threshold=0.2)
        self.features = nn.Sequential(
            nn.Sequential(layer.Conv2d(1, 4, 3, padding=1, bias=False), layer.BatchNorm2d(4),
                          neuron.LIFNode(**lif)),
            layer.MaxPool2d(2), layer.Flatten())
        self.head = nn.Sequential(layer.Linear(4 * 3 * 3, K), neuron.LIFNode(**lif))
        functional.set_step_mode(self, step_mode)

    def forward(self, x):  # x (N, 1, 6, 6)
        if self.head[0].step_mode == "m":
            out = self.head(self.features(x.unsqueeze(0).repeat(T, 1, 1, 1, 1)))
        else:
            out = torch.stack([self.head(self.features(x)) for _ in range(T)])
        return out.mean(0)


class SjContainers(nn.Module):
    """spikingjelly multi-step with plain torch layers inside SeqToANNContainer (T folded into
    the batch) and a stateless StepModeContainer; returns the output spikes (T, N, K)."""

    def __init__(self):
        super().__init__()
        lif = dict(surrogate_function=surrogate.Sigmoid(), v_threshold=0.2, step_mode="m")
        self.conv = layer.SeqToANNContainer(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4))
        self.lif1 = neuron.LIFNode(**lif)
        self.fc = layer.StepModeContainer(False, "m", nn.Flatten(), nn.Linear(4 * 6 * 6, K))
        self.lif2 = neuron.LIFNode(**lif)

    def forward(self, x):  # x (N, 1, 6, 6)
        return self.lif2(self.fc(self.lif1(self.conv(x.unsqueeze(0).repeat(T, 1, 1, 1, 1)))))


class SnnLinearLeaky(nn.Module):
    """snntorch's LinearLeaky: its Linear runs on all T steps at once, folded into the batch."""

    def __init__(self):
        super().__init__()
        self.lif = snn.LinearLeaky(beta=0.9, in_features=36, out_features=K, threshold=0.2)

    def forward(self, x):  # x (N, 1, 6, 6)
        return self.lif(x.flatten(1).unsqueeze(0).repeat(T, 1, 1))  # (spk, mem), (T, N, K)


def rate_loss(out, y):
    return F.cross_entropy(out, y)


def every_step_loss(records, y):
    """snntorch tutorial 5's loss: cross-entropy of the membrane at every step, summed."""
    _, mem = records
    return sum(F.cross_entropy(mem[t], y) for t in range(mem.shape[0]))


def spike_count_loss(spikes, y):
    return F.cross_entropy(spikes.sum(0), y)


def call(net, x):
    return net(x)


def reset_and_call(net, x):
    functional.reset_net(net)
    return net(x)


# (id, builder, run(net, x) -> output, loss(output, y), error_source's keyword arguments,
#  dfa_blocks' blocks)
NETS = [
    ("snntorch_recurrent", snn_recurrent, call, every_step_loss, {"output": 1, "time_dim": 0},
     "conv,fc1"),
    ("snntorch_cnn_per_step", snn_cnn, snn_steps, every_step_loss, {"output": 1}, "0,3"),
    ("snntorch_linear_leaky", SnnLinearLeaky, call, every_step_loss,
     {"output": 1, "time_dim": 0}, "lif.linear"),
    ("spikingjelly_s", lambda: SjCNN("s"), reset_and_call, rate_loss, {}, "features.0"),
    ("spikingjelly_m", lambda: SjCNN("m"), reset_and_call, rate_loss, {}, "features.0"),
    ("spikingjelly_containers", SjContainers, reset_and_call, spike_count_loss,
     {"time_dim": 0}, "conv"),
]
NET_IDS = [n[0] for n in NETS]


def batch():
    g = torch.Generator().manual_seed(0)
    return torch.rand(N, 1, 6, 6, generator=g) * 4, torch.randint(0, K, (N,), generator=g)


def build(builder):
    torch.manual_seed(0)
    return builder()


def on_rule(net, rule, source, blocks="*"):
    """`net` converted to `rule` (dfa_blocks on `blocks`), its output error taken at `source`."""
    biograd.convert(net, sweep_rule(rule, blocks), seed=1)
    if biograd.get_rule(rule).reads_output:
        biograd.error_source(net, **source)
    return net


def targets_before_every_forward(net, y):
    """drtp's targets, y, given before every forward of `net` (every step's, per-step nets)."""
    net.register_forward_pre_hook(lambda *_: biograd.targets(net, y), prepend=True)


def step(net, run, loss_fn, x, y):
    """One forward and backward; returns the output."""
    out = run(net, x)
    loss_fn(out, y).backward()
    return out


def grads(net, names):
    return {n: p.grad for n, p in net.named_parameters() if n in names}


@pytest.fixture(params=NETS, ids=NET_IDS)
def case(request):
    return request.param


# --- with B = W, the library's own BPTT ---------------------------------------------------------

@pytest.mark.parametrize("rule", TRANSPOSED)
def test_with_feedback_equal_to_weights_every_gradient_is_the_librarys_bptt(case, rule,
                                                                           monkeypatch):
    _, builder, run, loss_fn, source, _ = case
    reference = build(builder)
    net = on_rule(copy.deepcopy(reference), rule, source)
    bind = type(biograd.get_rule(rule)).bind
    # Keep the rule's plumbing (kp's learned B, brsf's counter), swap only B for W.
    monkeypatch.setattr(type(biograd.get_rule(rule)), "bind",
                        lambda self, lay: Feedback(lambda w: w, bind(self, lay).learned))
    x, y = batch()
    out_ref = step(reference, run, loss_fn, x, y)
    out = step(net, run, loss_fn, x, y)
    for got, expected in zip(torch.utils._pytree.tree_leaves(out),
                             torch.utils._pytree.tree_leaves(out_ref), strict=True):
        assert torch.equal(got, expected)
    names = dict(reference.named_parameters())
    expected = grads(reference, names)
    got = grads(net, names)
    assert got.keys() == expected.keys()
    for name, g in got.items():
        assert torch.equal(g, expected[name]), name
    assert any(isinstance(m, FeedbackLayer) for m in net.modules())


def test_spikingjelly_single_and_multi_step_agree_on_every_rule_layer():
    """The same weights in 's' (a loop) and 'm' (folded) mode, converted: the same forward and,
    with the rule's B, the same gradients up to float rounding (a sum over T in another order)."""
    single = on_rule(build(lambda: SjCNN("s")), "fa", {})
    multi = copy.deepcopy(single)
    functional.set_step_mode(multi, "m")
    x, y = batch()
    outs = [step(net, reset_and_call, rate_loss, x, y) for net in (single, multi)]
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    for (name, a), (_, b) in zip(single.named_parameters(), multi.named_parameters(),
                                 strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6, msg=name)


# --- every rule trains --------------------------------------------------------------------------

@pytest.mark.parametrize("rule", RULES)
def test_every_rule_trains_a_few_steps(case, rule):
    _, builder, run, loss_fn, source, blocks = case
    net = on_rule(build(builder), rule, source, blocks)
    converted = dict(biograd.feedback_layers(net))
    ran: set[str] = set()
    for name, module in converted.items():
        module.register_forward_hook(lambda *_, name=name: ran.add(name))
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    biograd.attach(opt, net)
    x, y = batch()
    if rule == "drtp":
        targets_before_every_forward(net, y)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    for _ in range(3):
        opt.zero_grad()
        step(net, run, loss_fn, x, y)
        assert_every_layer_learnt(converted, ran, dict(net.named_parameters()))
        opt.step()
    moved = [n for n, p in net.named_parameters() if not torch.equal(p, before[n])]
    assert moved, "no parameter moved in three steps"
    assert all(torch.isfinite(p).all() for p in net.parameters())


# --- dfa: the output error at the readout, one backward through all time steps ------------------

def inputs_at_every_call(module):
    """The input tensor of every call of `module`, its .grad kept (one per time step)."""
    seen = []

    def keep(_, args):
        args[0].retain_grad()
        seen.append(args[0])
    module.register_forward_pre_hook(keep)
    return seen


def sent_at_every_call(module):
    """What `module` sends down to its input at every call, last call first (the backward's
    order): the gradient of its input through its own backward alone."""
    sent = []
    module.register_full_backward_hook(lambda _, into, __: sent.append(into[0]))
    return sent


def test_dfa_sends_the_summed_error_of_the_record_to_every_step():
    """snntorch, loop inside the forward: ŷ the membrane record (T, N, K), e = Σ_t ∂L/∂ŷ_t,
    and the readout layer's input gets B e at each of the T steps."""
    net = on_rule(build(snn_recurrent), "dfa", {"output": 1, "time_dim": 0})
    sent = sent_at_every_call(net.fc2)
    x, y = batch()
    spk, mem = net(x)
    mem.retain_grad()
    every_step_loss((spk, mem), y).backward()
    e = mem.grad.sum(0)  # (N, K)
    assert len(sent) == T
    for got in sent:
        torch.testing.assert_close(got, e @ net.fc2.feedback_weight(), rtol=1e-6, atol=1e-7)


def test_dfa_takes_each_steps_own_error_where_the_net_is_called_per_step():
    """snntorch's tutorial 6 calls the net once per step: each call is a forward with its own
    output (spk, mem), so each step's layers send B e_t, e_t = ∂L/∂mem_t."""
    net = on_rule(build(snn_cnn), "dfa", {"output": 1})
    seen = inputs_at_every_call(net[6])
    x, y = batch()
    snn_utils.reset(net)
    records = [net(x) for _ in range(T)]
    for _, mem in records:
        mem.retain_grad()
    every_step_loss((None, torch.stack([m for _, m in records])), y).backward()
    for spikes, (_, mem) in zip(seen, records, strict=True):
        torch.testing.assert_close(spikes.grad, mem.grad @ net[6].feedback_weight(),
                                   rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("step_mode", ["s", "m"])
def test_dfa_on_spikingjelly_projects_the_rates_error_to_every_step(step_mode):
    """spikingjelly: ŷ the firing rate (N, K); the readout layer's input, one (N, d) per step
    ('s') or the sequence (T, N, d) at once ('m'), gets B e at every step."""
    net = on_rule(build(lambda: SjCNN(step_mode)), "dfa", {})
    seen = inputs_at_every_call(net.head[0])
    x, y = batch()
    functional.reset_net(net)
    rate = net(x)
    rate.retain_grad()
    rate_loss(rate, y).backward()
    sent = rate.grad @ net.head[0].feedback_weight()
    # what each step's input received: T calls of (N, d), or one call of (T, N, d)
    received = [x.grad for x in seen] if step_mode == "s" else list(seen[0].grad)
    assert len(received) == T
    for got in received:
        torch.testing.assert_close(got, sent, rtol=1e-6, atol=1e-7)


def test_dfa_inside_seq_to_ann_container_projects_to_every_folded_step():
    """A plain Conv2d inside SeqToANNContainer sees (T·N, ...): its input gradient is B e of
    each sample, at each step; e summed over the spike record (time_dim=0)."""
    net = on_rule(build(SjContainers), "dfa", {"time_dim": 0})
    seen = inputs_at_every_call(net.fc[1])  # Linear inside StepModeContainer: (T·N, 144)
    x, y = batch()
    functional.reset_net(net)
    spikes = net(x)
    spikes.retain_grad()
    spike_count_loss(spikes, y).backward()
    e = spikes.grad.sum(0)
    (folded,) = seen
    assert folded.shape[0] == T * N
    expected = (e @ net.fc[1].feedback_weight()).repeat(T, 1)
    torch.testing.assert_close(folded.grad, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("cls", ["Linear", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d",
                                 "ConvTranspose2d", "ConvTranspose3d"])
def test_every_spikingjelly_layer_projects_the_error_to_every_step(cls):
    """Each of spikingjelly's layers alone in multi-step mode on dfa: e = Σ_t δy_t, and its
    input gradient at each step is B e."""
    args = {"Linear": (4, 3)}.get(cls, (2, 3, 3))
    shape = {"Linear": (4,), "Conv1d": (2, 5), "Conv2d": (2, 5, 5), "Conv3d": (2, 4, 4, 4)}
    x_shape = shape.get(cls) or shape[cls.replace("Transpose", "")]
    torch.manual_seed(0)
    plain = getattr(layer, cls)(*args, step_mode="m")
    model = nn.Sequential(plain)
    biograd.convert(model, "dfa")
    biograd.error_source(model, time_dim=0)
    assert isinstance(model[0], type(plain)) and type(model[0]) is not type(plain)
    assert model[0].step_mode == "m"
    x = torch.randn(T, N, *x_shape, requires_grad=True)
    out = model(x)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    e = grad_out.sum(0).reshape(N, -1)
    sent = (e @ model[0].feedback_weight().flatten(1)).view(N, *x_shape)
    for t in range(T):
        torch.testing.assert_close(x.grad[t], sent, rtol=1e-5, atol=1e-5)


def test_drtp_projects_the_targets_to_every_step():
    net = on_rule(build(snn_recurrent), "drtp", {"output": 1, "time_dim": 0})
    sent = sent_at_every_call(net.fc2)
    x, y = batch()
    biograd.targets(net, y)
    every_step_loss(net(x), y).backward()
    assert len(sent) == T
    for got in sent:
        torch.testing.assert_close(got, F.one_hot(y, K).float() @ net.fc2.feedback_weight(),
                                   rtol=1e-6, atol=1e-7)


def test_misplaced_readouts_say_what_to_do():
    net = biograd.convert(build(snn_recurrent), "dfa")
    x, _ = batch()
    with pytest.raises(TypeError, match=r"returned tuple, not one tensor.*output=1"):
        net(x)
    biograd.error_source(net, "syn", output=2)  # the readout neuron, called at every step
    with pytest.raises(RuntimeError, match=r"ran again within one forward.*time_dim=0"):
        net(x)
    biograd.error_source(net, output=lambda out: out[1].sum(0))
    with pytest.raises(TypeError, match=r"does not hold.*out\[1\]"):
        net(x)
    biograd.error_source(net, output=5)
    with pytest.raises(TypeError, match="output=5 picks nothing"):
        net(x)
    biograd.error_source(net, output=1, time_dim=3)
    with pytest.raises(ValueError, match=r"time_dim=3.*shape"):
        net(x)
    with pytest.raises(TypeError, match="time_dim is the dimension"):
        biograd.error_source(net, output=1, time_dim="T")
    biograd.error_source(net, output=lambda out: out[1], time_dim=0)  # picks a tensor: fine
    every_step_loss(net(x), torch.zeros(N, dtype=torch.long)).backward()
    assert net.fc1.weight.grad is not None


# --- conversion: nothing left behind, and back ----------------------------------------------------

def test_the_report_leaves_no_layer_behind(case):
    _, builder, *_ = case
    net = biograd.convert(build(builder), "fa")
    layers = [n for n, m in net.named_modules()
              if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    assert layers and all(isinstance(net.get_submodule(n), FeedbackLayer) for n in layers)
    report = biograd.report(net)
    assert {kind for _, kind, _, _ in report.transport} <= {"BatchNorm2d"}, str(report)
    assert "custom forward" not in str(report)


def test_what_stays_on_backprop_is_reported_with_why():
    """Weight-standardised layers compute W in their own forward; TLastSeqToANNContainer maps
    its layers over time with torch.vmap (torch.func), which biograd's layers do not support."""
    net = nn.Sequential(layer.WSConv2d(1, 2, 3),
                        layer.TLastSeqToANNContainer(nn.Conv2d(2, 2, 1)), layer.Linear(2, 3))
    biograd.convert(net, "fa")
    assert [n for n, _ in biograd.feedback_layers(net)] == ["2"]
    why = {name: reason for name, _, _, reason in biograd.report(net).transport}
    assert why["0"] == "custom forward, not converted"
    assert "torch.vmap" in why["1.0"]
    h = net[1](net[0](torch.randn(N, 1, 5, 5)).unsqueeze(-1).repeat(1, 1, 1, 1, T))
    net[2](h.mean((2, 3, 4))).sum().backward()  # the container's layers run on backprop
    assert net[1][0].weight.grad is not None


@pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning")  # step 0's
def test_the_recurrent_layers_send_errors_back_in_time_through_b():
    """RLeaky's and RSynaptic's recurrent layer: at every step of BPTT, the error it sends to
    the previous step's spikes is its B applied to the error at its output."""
    net = biograd.convert(build(snn_recurrent), "fa")
    sent = []
    for recurrent in (net.rsyn.recurrent, net.rlif.recurrent):
        recurrent.register_full_backward_hook(
            lambda mod, gin, gout: sent.append((mod, gin[0], gout[0])))
    x, y = batch()
    every_step_loss(net(x), y).backward()
    assert len(sent) == 2 * T
    sent = [(mod, into, out) for mod, into, out in sent if into is not None]
    assert len(sent) == 2 * (T - 1)  # step 0's input, the initial state, needs no gradient
    for mod, into, out in sent:
        b = mod.feedback_weight()
        if isinstance(mod, nn.Linear):
            expected = out @ b
        else:
            expected = torch.nn.grad.conv2d_input(into.shape, b, out, padding=mod.padding)
        torch.testing.assert_close(into, expected, rtol=1e-5, atol=1e-6)


def test_unconvert_gives_back_the_librarys_classes_and_state_dict(case):
    _, builder, run, *_ = case
    reference = build(builder)
    classes = {n: type(m) for n, m in reference.named_modules()}
    keys = list(reference.state_dict())
    net = biograd.convert(copy.deepcopy(reference), "kp")
    assert any(isinstance(m, FeedbackLayer) for m in net.modules())
    biograd.unconvert(net)
    assert {n: type(m) for n, m in net.named_modules()} == classes
    assert list(net.state_dict()) == keys
    modes = {n: m.step_mode for n, m in reference.named_modules() if hasattr(m, "step_mode")}
    assert {n: m.step_mode for n, m in net.named_modules() if hasattr(m, "step_mode")} == modes
    fresh = build(builder)
    fresh.load_state_dict(net.state_dict(), strict=True)
    x, _ = batch()
    for got, expected in zip(torch.utils._pytree.tree_leaves(run(net, x)),
                             torch.utils._pytree.tree_leaves(run(reference, x)), strict=True):
        assert torch.equal(got, expected)


def test_reset_net_and_set_step_mode_work_after_converting():
    reference = build(lambda: SjCNN("s"))
    net = copy.deepcopy(reference)
    x, _ = batch()
    functional.reset_net(net)  # caches the modules it resets
    net(x)
    biograd.convert(net, "ss")
    functional.reset_net(net)
    neurons = [m for m in net.modules() if isinstance(m, neuron.LIFNode)]
    assert neurons and all(isinstance(m.v, float) and m.v == m.v_reset for m in neurons)
    functional.reset_net(reference)
    assert torch.equal(net(x), reference(x))  # the state was reset: the same first steps
    functional.set_step_mode(net, "m")
    functional.set_step_mode(reference, "m")
    converted = [m for _, m in biograd.feedback_layers(net)]
    assert converted and all(isinstance(m, sj_base.StepModule) and m.step_mode == "m"
                             for m in converted)
    for model in (net, reference):
        functional.reset_net(model)
    assert torch.equal(net(x), reference(x))


def test_spikingjelly_drop_ins_take_the_librarys_constructor():
    from biograd.nn import spikingjelly as bsj

    conv = bsj.Conv2d(2, 4, 3, padding=1, step_mode="m", rule="fa", seed=3)
    assert conv.step_mode == "m" and conv.rule == "fa" and conv.feedback_seed == 3
    assert isinstance(conv, layer.Conv2d) and isinstance(conv, biograd.nn.Conv2d)
    assert conv(torch.randn(T, N, 2, 5, 5)).shape == (T, N, 4, 5, 5)
    plain = biograd.unconvert(conv)
    assert type(plain) is layer.Conv2d and plain.step_mode == "m"


def test_linear_leaky_folds_time_and_its_layer_sends_b_e_to_every_step():
    reference = build(SnnLinearLeaky)
    net = on_rule(copy.deepcopy(reference), "dfa", {"output": 1, "time_dim": 0})
    assert type(net.lif) is not snn.LinearLeaky and isinstance(net.lif, snn.LinearLeaky)
    seen = inputs_at_every_call(net.lif.linear)
    x, y = batch()
    spk, mem = net(x.requires_grad_())  # so that the Linear's input has a gradient
    mem.retain_grad()
    every_step_loss((spk, mem), y).backward()
    (folded,) = seen
    assert folded.shape == (T * N, 36)
    expected = (mem.grad.sum(0) @ net.lif.linear.feedback_weight()).repeat(T, 1)
    torch.testing.assert_close(folded.grad, expected, rtol=1e-6, atol=1e-7)
    biograd.unconvert(net)
    assert type(net.lif) is snn.LinearLeaky and type(net.lif.linear) is nn.Linear
    for got, expected in zip(net(x), reference(x), strict=True):
        assert torch.equal(got, expected)
