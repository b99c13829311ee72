"""lstm and gru, the zoo's sequence models: an image read row by row by torch's nn.LSTM or
nn.GRU, a linear readout on the final state. What they compute, every rule on them (dfa's
output error and dfa_blocks' block included), and `biograd train/compare/eval` with them,
exact resume included (DDP: tests/test_train_ddp.py).

Identities, not numbers: the model is torch's layer on the rows; on bp the converted model's
gradients are the unconverted one's; dfa sends B_ih e to every row; dfa_blocks is backprop
through time from B e at the encoder's output; a resumed run ends bit for bit where the
uninterrupted one did; `biograd eval` gives what training logged.
"""

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from checks import (
    assert_resumes_exactly,
    load_benchmark,
    sweep_rule,
    two_steps_every_layer_learns,
)
from torch import nn

import biograd
from biograd.config import resolve
from biograd.engine import classify
from biograd.models import ModelError, build_model
from biograd.rules import Feedback
from biograd.rules.dfa_blocks import points

pytestmark = pytest.mark.usefixtures("one_thread")
K, N, HIDDEN = 3, 4, 6
MODELS = ["lstm", "gru"]
LAYERS = ["encoder.rnn.per_weight.weight_ih_l0", "encoder.rnn.per_weight.weight_hh_l0", "fc"]


def tiny(name, channels=1, side=8, **options):
    return build_model(name, num_classes=K, in_channels=channels, image_size=side,
                       **{"hidden": HIDDEN, **options})


def images(channels=1, side=8, n=N):
    return torch.randn(n, channels, side, side)


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# --- what it computes ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize(("channels", "side", "options"), [
    (1, 8, {}), (1, 28, {}), (3, 8, {}), (3, 5, {"num_layers": 2, "bidirectional": True,
                                                  "dropout": 0.2})])
def test_images_of_each_shape_give_logits_and_every_parameter_a_gradient(name, channels, side,
                                                                         options):
    model = tiny(name, channels, side, **options)
    out = model(images(channels, side))
    assert out.shape == (N, K)
    out.logsumexp(1).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    rnn = model.encoder.rnn
    assert type(rnn) is (nn.LSTM if name == "lstm" else nn.GRU) and rnn.batch_first
    assert rnn.input_size == channels * side


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_rows_are_the_time_steps_and_the_readout_reads_the_final_states(name, bidirectional):
    model = tiny(name, channels=3, side=5, num_layers=2, bidirectional=bidirectional)
    model.eval()
    x = images(3, 5)
    rows = torch.cat([x[:, c] for c in range(3)], dim=2)  # (N, H, 3·W): channels side by side
    with torch.no_grad():
        out, _ = model.encoder.rnn(rows)  # (N, T, D·hidden)
        if bidirectional:  # the forward direction at the last row, the backward at the first
            final = torch.cat([out[:, -1, :HIDDEN], out[:, 0, HIDDEN:]], 1)
        else:
            final = out[:, -1]
        torch.testing.assert_close(model(x), model.fc(final), rtol=0, atol=0)
        assert not torch.equal(model(x.flip(2)), model(x))  # the order of the rows matters


@pytest.mark.parametrize(("options", "match"), [
    ({"bidirectional": "yes"}, "bidirectional='yes': use true or false"),
    ({"dropout": 1.0}, "dropout=1.0: use a probability"),
    ({"dropout": 0.1}, "dropout=0.1 acts between layers, and num_layers=1 has none"),
    ({"hidden": 0}, "hidden=0"),
    ({"num_layers": 0}, "num_layers=0"),
    ({"width": 4}, "unexpected keyword argument 'width'"),
])
def test_bad_options_are_one_line_errors(options, match):
    with pytest.raises(ModelError, match=match) as err:
        build_model("lstm", num_classes=K, in_channels=1, image_size=8, **options)
    assert len(str(err.value).splitlines()) == 1


def test_rows_of_another_width_are_one_line_error():
    with pytest.raises(ValueError, match=r"lstm reads rows of 1×8 values.*\(4, 1, 8, 28\)"):
        tiny("lstm")(images(1, 8)[..., :1].expand(N, 1, 8, 28))


# --- every rule ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("rule", biograd.list_rules())
def test_every_rule_trains_a_step_and_every_layer_learns(name, rule):
    model = biograd.convert(tiny(name), sweep_rule(rule, "encoder"), seed=0)
    assert {n for n, _ in biograd.feedback_layers(model)} == set(LAYERS)
    modules = {"encoder.rnn": model.encoder.rnn, "fc": model.fc}  # what runs the layers
    before = two_steps_every_layer_learns(model, modules, images(), torch.arange(N) % K)
    weights = [n for n in before if "weight" in n and "feedback" not in n]
    assert len(weights) == 3
    assert all(not torch.equal(dict(model.named_parameters())[n], before[n]) for n in weights)


@pytest.mark.parametrize("name", MODELS)
def test_on_bp_the_gradients_are_the_unconverted_models(name):
    reference = tiny(name, num_layers=2, bidirectional=True)
    model = biograd.convert(copy.deepcopy(reference), "bp")
    x, y = images(), torch.arange(N) % K
    for m in (reference, model):
        F.cross_entropy(m(x), y).backward()
    expected, got = grads(reference), grads(model)
    assert expected.keys() == got.keys()
    for key, value in expected.items():
        assert torch.equal(got[key], value), key


@pytest.mark.parametrize("name", MODELS)
def test_fa_with_feedback_equal_to_weight_is_torchs_bptt_through_the_python_loop(name,
                                                                                 monkeypatch):
    """Off bp the layer runs its own loop over the rows: with B = W it gives torch's BPTT."""
    reference = tiny(name)
    model = biograd.convert(copy.deepcopy(reference), "fa", seed=0)
    monkeypatch.setattr(type(biograd.get_rule("fa")), "bind",
                        lambda self, layer: Feedback(lambda w: w))
    x, y = images(), torch.arange(N) % K
    for m in (reference, model):
        F.cross_entropy(m(x), y).backward()
    expected, got = grads(reference), grads(model)
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("rule", ["dfa", "drtp"])
def test_direct_rules_take_the_models_output_and_send_b_e_to_every_row(name, rule):
    """The recurrent layer returns a tuple; dfa's e is the model's output error (the logits',
    K values per sample), and every row x_t gets B_ih e: no error through W_ih or W_hh."""
    model = biograd.convert(tiny(name), rule, seed=0)
    x, y = images().requires_grad_(), torch.arange(N) % K
    biograd.targets(model, y)
    out = model(x)
    out.retain_grad()
    F.cross_entropy(out, y).backward()
    signal = out.grad if rule == "dfa" else F.one_hot(y, K).float()
    b_ih = model.encoder.rnn.per_weight.weight_ih_l0.feedback_weight()
    assert b_ih.shape == (K, 8)  # (K, C·W): one B for every row
    torch.testing.assert_close(x.grad, (signal @ b_ih)[:, None, None].expand_as(x))


@pytest.mark.parametrize("name", MODELS)
def test_dfa_blocks_is_backprop_through_time_from_b_e_at_the_encoders_output(name):
    reference = tiny(name)
    model = biograd.convert(copy.deepcopy(reference), "dfa_blocks", seed=0)
    assert list(points(model)) == ["encoder"]  # found by "auto"
    x, g = images(), torch.randn(N, K)
    (model(x) * g).sum().backward()  # e = g
    b = points(model)["encoder"].feedback_weight()  # (K, hidden)
    assert b.shape == (K, HIDDEN)
    rows = x.squeeze(1)
    h = reference.encoder(rows)
    h.backward(g @ b)  # the encoder's output gradient replaced by B e, backprop inside
    got = grads(model)
    for key, value in grads(reference).items():
        torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-7, msg=key)
    torch.testing.assert_close(got["fc.weight"], g.T @ h.detach())  # the head: the true one


def test_dfa_blocks_on_the_recurrent_layer_itself_is_refused_naming_its_tuple():
    model = biograd.convert(tiny("lstm"), biograd.get_rule("dfa_blocks", blocks="encoder.rnn"))
    with pytest.raises(TypeError, match=r"block 'encoder\.rnn' returned tuple, not one tensor"):
        model(images())


# --- the command line ----------------------------------------------------------------------------

FLAGS = ["--model-options", "{hidden: 8}", "--epochs", "1", "--steps-per-epoch", "3",
         "--batch-size", "16", "--progress", "none", "--tensorboard", "false"]
RUN = dict(data="digits", model="gru", model_options={"hidden": 8}, steps_per_epoch=2,
           batch_size=16, progress="none", tensorboard=False, angle_batch=8)


def metrics(path):
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(("name", "rule"), [("lstm", "ss"), ("gru", "dfa")])
def test_train_then_eval_on_digits_gives_what_training_logged(tmp_path, name, rule):
    from biograd.cli import main

    out = tmp_path / "run"
    assert main(["train", "--model", name, "--data", "digits", "--rule", rule, *FLAGS,
                 "--out", str(out)]) == 0
    (logged,) = metrics(out)
    assert set(logged["gradient_angles"]) == set(LAYERS[:2])  # each weight apart; fc on bp
    assert all(v == v for v in logged["gradient_angles"].values())
    assert main(["eval", str(out)]) == 0
    scored = json.loads((out / "eval.json").read_text())
    assert scored["val_top1"] == logged["val_top1"]
    assert scored["val_loss"] == pytest.approx(logged["val_loss"], rel=1e-6)


def test_compare_two_rules_and_every_rule_takes_the_model(tmp_path):
    from biograd.cli import main

    cfg = resolve(rule="dfa_blocks", **RUN, out=str(tmp_path / "x"))
    classify.check(cfg)  # dfa_blocks finds the encoder: not refused
    assert main(["compare", "--model", "lstm", "--data", "digits", "--rules", "fa,dfa_blocks",
                 *FLAGS, "--angle-batch", "0", "--out", str(tmp_path / "cmp")]) == 0
    report = (tmp_path / "cmp" / "report.md").read_text()
    assert "| `fa` |" in report and "| `dfa_blocks` |" in report


@pytest.mark.parametrize("rule", ["kp", "dfa"])
def test_resume_continues_bit_for_bit(tmp_path, monkeypatch, rule):
    common = dict(RUN, rule=rule, epochs=3, schedule="cosine")
    assert_resumes_exactly(tmp_path, monkeypatch, **common)


# --- the cost benchmark --------------------------------------------------------------------------

def test_the_cost_benchmark_times_every_rule_against_torchs_lstm(capsys):
    import math

    bench = load_benchmark("sequence_cost")
    result = bench.main(bench.get_args_parser().parse_args(
        ["--batch", "2", "--size", "4", "--hidden", "3", "--repeats", "1", "--warmup", "0"]))
    assert list(result["rules"]) == ["native", "native, oneDNN off", *biograd.list_rules()]
    for name, clocks in result["rules"].items():
        assert all(math.isfinite(c["ratio"]) and c["ratio"] > 0 for c in clocks.values()), name
    assert "| dfa_blocks |" in capsys.readouterr().out
