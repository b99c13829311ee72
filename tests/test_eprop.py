"""e-prop (biograd.nn.eprop) and the zoo's rlif model.

Identities, not numbers: with a symmetric readout, e-prop's gradients are autograd's on the
same network with the recurrent spikes z_{t−1} detached (float64, to rounding), and differ from
full BPTT's; the learning signal is the readout's Bᵀ e on fa and kp; what e-prop saves for the
backward does not grow with T, while BPTT's does. The model trains on every rule in both modes,
through the CLI, resumes bit for bit, and runs on two gloo ranks.
"""

import json
import math
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from checks import assert_resumes_exactly, load_benchmark, sweep_rule
from torch import nn

import biograd
from biograd.engine import checkpoint
from biograd.models import ModelError, build_model
from biograd.nn.eprop import GAMMA, RecurrentLIF, spike

pytestmark = pytest.mark.usefixtures("one_thread")
K = 3


def network(inputs=5, hidden=6, bias=True, learning="eprop", dtype=torch.float64, seed=0):
    """A RecurrentLIF and a readout, with weights large enough that the neurons spike."""
    torch.manual_seed(seed)
    lif = RecurrentLIF(inputs, hidden, tau=4.0, bias=bias, learning=learning).to(dtype)
    with torch.no_grad():
        lif.input.weight.mul_(4)
        lif.recurrent.weight.mul_(3)
    return nn.Sequential(lif, nn.Linear(hidden, K).to(dtype))


def reference_rates(lif, x, detach):
    """The layer's equations written out under autograd, z_{t−1} detached or not."""
    w_in, b, w_rec = lif.input.weight, lif.input.bias, lif.recurrent.weight
    v = z = total = None
    for t in range(x.shape[0]):
        current = x[t] @ w_in.T + (0 if b is None else b)
        if t == 0:
            v = current
        else:
            prev = z.detach() if detach else z
            v = lif.alpha * v + current + prev @ w_rec.T - lif.threshold * prev
        z = spike(v, lif.threshold, GAMMA)
        total = z if total is None else total + z
    return total / x.shape[0]


def grads(model, x, y, rates=None):
    """The loss's gradients of W_in, b and W_rec (b: None without bias; W_rec's zeros where
    it was not used, T = 1)."""
    model.zero_grad(set_to_none=True)
    lif, readout = model
    out = lif(x) if rates is None else rates(lif, x)
    F.cross_entropy(readout(out), y).backward()
    return [None if p is None else torch.zeros_like(p) if p.grad is None else p.grad.clone()
            for p in (lif.input.weight, lif.input.bias, lif.recurrent.weight)]


def close(a, b):
    return (a - b).norm() <= 1e-12 * b.norm()


@pytest.mark.parametrize("steps", [1, 3, 40])  # 40: two whole chunks and a part
@pytest.mark.parametrize("n", [1, 5])
@pytest.mark.parametrize("bias", [True, False])
def test_eprop_is_autograd_with_the_recurrent_spikes_detached(steps, n, bias):
    model = network(bias=bias)
    x, y = torch.randn(steps, n, 5, dtype=torch.float64), torch.randint(0, K, (n,))
    eprop = grads(model, x, y)
    detached = grads(model, x, y, lambda lif, x: reference_rates(lif, x, detach=True))
    full = grads(model, x, y, lambda lif, x: reference_rates(lif, x, detach=False))
    with torch.no_grad():
        rates = model[0](x)
    assert 0 < rates.mean() < 1  # the neurons spike, and not always
    for mine, theirs, name in zip(eprop, detached, ("W_in", "b", "W_rec"), strict=True):
        if theirs is None:
            assert mine is None and not bias
            continue
        assert theirs.norm() > 0 or (name == "W_rec" and steps == 1), name
        assert close(mine, theirs), (name, (mine - theirs).norm() / theirs.norm())
    if steps > 1 and n > 1:  # the check is not vacuous: BPTT's error goes back through z
        assert not close(eprop[0], full[0]) and not close(eprop[2], full[2])


def test_one_step_is_bptt_and_the_bptt_mode_is_the_written_out_network():
    model = network()
    x, y = torch.randn(7, 4, 5, dtype=torch.float64), torch.randint(0, K, (4,))
    full = grads(model, x, y, lambda lif, x: reference_rates(lif, x, detach=False))
    model[0].learning = "bptt"
    for mine, theirs in zip(grads(model, x, y), full, strict=True):
        assert close(mine, theirs)
    model[0].learning = "eprop"  # with one step there is no recurrence: e-prop is BPTT
    one = x[:1]
    a = grads(model, one, y)
    model[0].learning = "bptt"
    for mine, theirs in zip(a, grads(model, one, y), strict=True):
        assert close(mine, theirs)


def test_both_modes_compute_the_same_rates_bit_for_bit():
    model = network(dtype=torch.float32)
    x = torch.randn(9, 4, 5)
    out = {}
    for learning in ("eprop", "bptt"):
        model[0].learning = learning
        out[learning] = model[0](x)
        with torch.no_grad():
            assert torch.equal(model[0](x), out[learning])
    assert torch.equal(out["eprop"], out["bptt"])
    assert out["eprop"].shape == (4, 6) and 0 < out["eprop"].mean() < 1


def signal_into(model, x, y):
    """dE/d(rates), the learning signal e-prop's backward receives, and the output error e."""
    seen = {}
    rates = model[0](x)
    rates.register_hook(lambda g: seen.setdefault("signal", g))
    logits = model[1](rates)
    F.cross_entropy(logits, y).backward()
    error = (logits.softmax(1) - F.one_hot(y, K)) / len(y)  # dE/dlogits, by hand
    return seen["signal"], error.detach()


@pytest.mark.parametrize("rule", ["bp", "fa", "kp"])
def test_the_learning_signal_is_the_readouts_b_times_the_error(rule):
    """bp: B = W_out (symmetric), fa: a fixed random B, kp: a B that takes W_out's gradient."""
    model = biograd.convert(network(), "bp", last=rule, seed=0)
    readout = model[1]
    x, y = torch.randn(5, 4, 5, dtype=torch.float64), torch.randint(0, K, (4,))
    signal, error = signal_into(model, x, y)
    b = readout.weight if rule == "bp" else readout.feedback
    assert torch.allclose(signal, error @ b, rtol=1e-12, atol=1e-15)
    if rule != "bp":
        assert not torch.allclose(b, readout.weight)
    if rule == "kp":  # B learns: its gradient is W_out's, and a step moves it
        assert torch.equal(readout.feedback.grad, readout.weight.grad)
        before = readout.feedback.detach().clone()
        torch.optim.SGD(model.parameters(), lr=0.1).step()
        assert not torch.equal(readout.feedback, before)
    else:
        assert "feedback" not in dict(readout.named_parameters())


def test_kp_on_the_recurrent_layer_gets_ws_gradient_and_an_aligning_b_zeros():
    model = biograd.convert(network(), "kp", last="bp", seed=0)
    x, y = torch.randn(4, 3, 5, dtype=torch.float64), torch.randint(0, K, (3,))
    grads(model, x, y)
    for layer in (model[0].input, model[0].recurrent):
        assert layer.weight.grad.abs().sum() > 0
        assert torch.equal(layer.feedback.grad, layer.weight.grad)
    biograd.convert(model, "sa", last="bp", seed=0)
    grads(model, x, y)
    for layer in (model[0].input, model[0].recurrent):
        assert layer.weight.grad.abs().sum() > 0
        assert torch.equal(layer.feedback.grad, torch.zeros_like(layer.weight))


@pytest.mark.parametrize("learning", ["eprop", "bptt"])
def test_the_input_gets_zeros_from_eprop_and_bptts_error_from_bptt(learning):
    model = network(learning=learning)
    x = torch.randn(4, 3, 5, dtype=torch.float64, requires_grad=True)
    F.cross_entropy(model(x), torch.tensor([0, 1, 2])).backward()
    assert x.grad is not None
    assert (x.grad.abs().sum() == 0) == (learning == "eprop")


def saved_bytes(model, x):
    """Bytes autograd keeps for the backward of one forward."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return total


def test_what_eprop_saves_is_flat_in_t_and_bptts_grows():
    model = network(dtype=torch.float32)
    saved = {}
    for learning in ("eprop", "bptt"):
        model[0].learning = learning
        saved[learning] = [saved_bytes(model, torch.randn(t, 4, 5)) for t in (5, 50)]
    hidden, inputs, n = 6, 5, 4
    traces = 4 * n * hidden * (inputs + hidden + 1)  # E_in, E_rec, E_b
    assert saved["eprop"][0] == saved["eprop"][1] >= traces
    assert saved["bptt"][1] > 5 * saved["bptt"][0]


def test_errors_are_one_line():
    for options, match in (({"learning": "rtrl"}, "learning='rtrl': use one of bptt, eprop"),
                           ({"tau": 0}, "tau=0: the membrane time constant"),
                           ({"hidden": 0}, "hidden=0")):
        with pytest.raises(ModelError, match=match) as err:
            build_model("rlif", num_classes=K, in_channels=1, image_size=8, **options)
        assert len(str(err.value).splitlines()) == 1
    model = build_model("rlif", num_classes=K, in_channels=1, image_size=8)
    with pytest.raises(ValueError, match=r"rows of 8 values .* got images 1×28×28"):
        model(torch.randn(2, 1, 28, 28))
    with pytest.raises(ValueError, match=r"x of shape \(T, N, 8\), time first"):
        model.lif(torch.randn(2, 8))


def test_the_model_reads_rows_as_steps_and_holds_weights_alone():
    model = build_model("rlif", num_classes=K, in_channels=2, image_size=8, hidden=7,
                        learning="eprop")
    x = torch.randn(3, 2, 5, 8)  # 5 rows of 2×8 values
    steps = []
    model.lif.register_forward_pre_hook(lambda _, args: steps.append(args[0]))
    assert model(x).shape == (3, K)
    assert torch.equal(steps[0][1], torch.cat([x[:, 0, 1], x[:, 1, 1]], 1))  # row 1, (N, C·W)
    assert list(model.state_dict()) == ["lif.input.weight", "lif.input.bias",
                                        "lif.recurrent.weight", "readout.weight",
                                        "readout.bias"]
    bptt = build_model("rlif", num_classes=K, in_channels=2, image_size=8, hidden=7)
    bptt.load_state_dict(model.state_dict())  # the same keys in both modes
    with torch.no_grad():
        assert torch.equal(bptt(x), model(x))


@pytest.mark.parametrize("learning", ["eprop", "bptt"])
@pytest.mark.parametrize("rule", biograd.list_rules())
def test_every_rule_trains_a_step_in_both_modes(rule, learning):
    model = build_model("rlif", num_classes=K, in_channels=1, image_size=8, hidden=8,
                        learning=learning)
    chosen = sweep_rule(rule, blocks="lif")
    biograd.convert(model, chosen, last=chosen, seed=0)
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    biograd.targets(model, F.one_hot(y, K).float())  # drtp's; a no-op elsewhere
    F.cross_entropy(model(x), y).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.lif.input.weight.grad.abs().sum() > 0
    before = model.lif.recurrent.weight.detach().clone()
    torch.optim.SGD(model.parameters(), lr=0.5).step()
    biograd.after_step(model)
    assert not torch.equal(model.lif.recurrent.weight, before)


def metrics(path):
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def test_train_and_eval_through_the_cli(tmp_path):
    from biograd.cli import main

    out = tmp_path / "run"
    assert main(["train", "--data", "digits", "--model", "rlif", "--model-options",
                 "{learning: eprop, hidden: 16}", "--rule", "fa", "--last-rule", "fa",
                 "--epochs", "1", "--steps-per-epoch", "5", "--batch-size", "16",
                 "--progress", "none", "--tensorboard", "false", "--angle-batch", "8",
                 "--out", str(out)]) == 0
    (logged,) = metrics(out)
    assert main(["eval", str(out)]) == 0
    scored = json.loads((out / "eval.json").read_text())
    assert scored["val_top1"] == logged["val_top1"]
    assert scored["val_loss"] == pytest.approx(logged["val_loss"], rel=1e-6)
    state = torch.load(out / checkpoint.NAME, weights_only=True)["model"]
    assert "readout.feedback" in state and "lif.recurrent.feedback" in state


@pytest.mark.parametrize("learning", ["eprop", "bptt"])
def test_resume_continues_bit_for_bit(tmp_path, monkeypatch, learning):
    common = dict(data="digits", model="rlif", model_options={"learning": learning,
                                                               "hidden": 16},
                  rule="kp", last_rule="kp", epochs=3, steps_per_epoch=2, batch_size=16,
                  schedule="cosine", progress="none", tensorboard=False, angle_batch=8)
    assert_resumes_exactly(tmp_path, monkeypatch, **common)


DDP_WORKER = textwrap.dedent("""
    import os, sys, torch, biograd
    from biograd.config import resolve
    from biograd.engine import classify

    torch.set_num_threads(1)
    out, rank = sys.argv[1], int(os.environ["RANK"])
    models = []
    convert = biograd.convert
    biograd.convert = lambda *a, **k: models.append(convert(*a, **k)) or models[-1]
    common = dict(data="digits", model="rlif", model_options={"learning": "eprop",
                  "hidden": 16}, rule="kp", last_rule="fa", batch_size=16, steps_per_epoch=3,
                  schedule="constant", progress="none", tensorboard=False, angle_batch=8)
    for name, epochs, resume in (("whole", 2, False), ("parts", 1, False), ("parts", 2, True)):
        classify.train(resolve(epochs=epochs, out=f"{out}/{name}", resume=resume,
                               accept_changes=resume, **common))
        torch.save(models[-1].state_dict(), f"{out}/{name}-rank{rank}.pt")
    torch.distributed.destroy_process_group()
""")


def test_eprop_on_two_ranks_agrees_and_resumes_exactly(tmp_path):
    """e-prop with kp's learned B on the recurrent weights (a Parameter DDP must see a
    gradient for) and a random readout B: both ranks end alike; 1 + 1 epochs end where 2 did."""
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    worker = tmp_path / "worker.py"
    worker.write_text(DDP_WORKER)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_addr", "127.0.0.1", "--master_port", str(port), str(worker),
         str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    states = {(name, rank): torch.load(tmp_path / f"{name}-rank{rank}.pt", weights_only=True)
              for name in ("whole", "parts") for rank in (0, 1)}
    whole = states["whole", 0]
    assert "lif.recurrent.feedback" in whole and "readout.feedback" in whole
    for key, value in whole.items():
        for other in (("whole", 1), ("parts", 0), ("parts", 1)):
            assert torch.equal(value, states[other][key]), (other, key)


def test_the_cost_benchmark_measures_both_modes_at_every_length(capsys):
    bench = load_benchmark("eprop_cost")
    result = bench.main(bench.get_args_parser().parse_args(
        ["--steps", "2", "6", "--batch", "2", "--input", "3", "--hidden", "4", "--rounds",
         "1", "--calls", "1", "--peak"]))
    assert set(result["rows"]) == {"2", "6"}
    for row in result["rows"].values():
        assert set(row) == {"eprop", "bptt"}
        for cell in row.values():
            assert cell["ms"] > 0 and math.isfinite(cell["ms"]) and cell["saved_bytes"] > 0
            assert cell["peak_bytes"] >= cell["saved_bytes"]
    rows = result["rows"]
    assert rows["2"]["eprop"]["saved_bytes"] == rows["6"]["eprop"]["saved_bytes"]
    assert rows["6"]["bptt"]["saved_bytes"] > rows["2"]["bptt"]["saved_bytes"]
    assert "| 6 |" in capsys.readouterr().out


def test_under_eprop_the_recurrent_layers_rule_changes_nothing_learnt():
    """docs/beyond.md: "a run on `--rule bp` and one on `--rule fa`, the same readout, end
    with the same weights"."""
    x, y = torch.randn(6, 8, 5), torch.randint(0, K, (8,))
    ends = []
    for rule in ("bp", "fa", "kp", "sa"):
        model = biograd.convert(network(dtype=torch.float32), rule, last="fa", seed=0)
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        for _ in range(3):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        ends.append({k: v for k, v in model.state_dict().items()
                     if k.endswith(("weight", "bias")) or k == "1.feedback"})
    for other in ends[1:]:
        assert ends[0].keys() == other.keys()
        for key, value in ends[0].items():
            assert torch.equal(value, other[key]), key


def test_compare_takes_rlif(tmp_path):
    """docs/beyond.md: "`biograd compare --rules`, which varies `--rule` and holds
    `--last-rule`, trains the same e-prop network under each"."""
    from biograd.cli import main

    assert main(["compare", "--rules", "bp,fa", "--data", "digits", "--model", "rlif",
                 "--model-options", "{learning: eprop, hidden: 8}", "--epochs", "1",
                 "--steps-per-epoch", "2", "--batch-size", "8", "--progress", "none",
                 "--tensorboard", "false", "--angle-batch", "0",
                 "--out", str(tmp_path / "cmp")]) == 0
    report = (tmp_path / "cmp" / "report.md").read_text()
    assert "| `bp` |" in report and "| `fa` |" in report
    # under e-prop --rule changes nothing learnt, and compare holds --last-rule: the same run
    bp, fa = (metrics(tmp_path / "cmp" / rule)[-1] for rule in ("bp", "fa"))
    assert bp["val_loss"] == fa["val_loss"] and bp["train_loss"] == fa["train_loss"]


# --- what docs/beyond.md and benchmarks/RESULTS.md quote ------------------------------------------

ROOT = Path(__file__).resolve().parents[1]


def section():
    text = (ROOT / "docs" / "beyond.md").read_text()
    return text.split("### Online: e-prop")[1].split("## What the studies found")[0]


def test_the_docs_example_runs():
    (code,) = [block.split("```")[0] for block in section().split("```python\n")[1:]]
    exec(compile(code, "docs/beyond.md", "exec"), {})


def test_the_numbers_quoted_are_the_records_own():

    from biograd.nn import eprop

    bench = load_benchmark("eprop_cost")
    cost = json.loads((ROOT / "benchmarks" / "results_eprop_cost.json").read_text())
    digits = json.loads((ROOT / "benchmarks" / "results_eprop_digits.json").read_text())
    docs, results = section(), (ROOT / "benchmarks" / "RESULTS.md").read_text()
    flat = " ".join(docs.split())
    for line in bench.table(cost):
        assert line in docs and line in results, line
    rows = cost["rows"]
    steps = [int(t) for t in rows]
    kept = {rows[str(t)]["eprop"]["saved_bytes"] for t in steps}
    assert len(kept) == 1 and f"keeps the same {kept.pop() / 1e6:.2f} MB whatever T" in flat
    last, first = rows[str(steps[-1])]["bptt"], rows[str(steps[0])]["bptt"]
    per_step = (last["saved_bytes"] - first["saved_bytes"]) / (steps[-1] - steps[0])
    assert f"about {per_step / 1e3:.0f} kB a step" in flat
    assert f"about {per_step / 1e3:.0f} kB a step" in " ".join(results.split())
    cross = rows[str(steps[0])]["eprop"]["saved_bytes"] / per_step
    assert f"near T = {round(cross, -1):.0f}" in flat
    faster = [t for t in steps if rows[str(t)]["eprop"]["ms"] < rows[str(t)]["bptt"]["ms"]]
    assert faster == steps[1:] and f"cheaper from T = {steps[1]} on" in flat
    assert f"at T = {steps[0]} BPTT is" in flat
    assert eprop.CHUNK == 16 and "up to 16 steps" in flat
    assert "to 1e-12 relative" in flat  # `close` above
    for name, run in digits["runs"].items():
        rule = run["command"].split("--rule ")[1].split()[0]
        last_rule = run["command"].split("--last-rule ")[1].split()[0]
        row = f"| {name} | `{rule}` / `{last_rule}` |"
        assert f"{row} {run['val_top1']:.1f} | {run['val_loss']:.3f} |" in docs, name
        assert f"{row} {run['train_top1']:.1f} | {run['val_top1']:.1f} | " \
               f"{run['val_loss']:.3f} |" in results, name


def test_under_autocast_both_modes_compute_the_same_rates_and_float32_gradients():
    x, y = torch.randn(7, 4, 5), torch.tensor([0, 1, 2, 0])
    out = {}
    for learning in ("eprop", "bptt"):
        model = biograd.convert(network(dtype=torch.float32, learning=learning), "fa",
                                last="fa", seed=0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out[learning] = model[0](x)
            loss = F.cross_entropy(model[1](out[learning]), y)
        loss.backward()
        for name, p in model.named_parameters():
            assert p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all(), name
    assert out["eprop"].dtype == torch.bfloat16
    assert torch.equal(out["eprop"], out["bptt"])


def test_gradient_angles_of_an_eprop_run_compare_with_symmetric_feedback():
    """docs/beyond.md: "for an e-prop run they compare e-prop under the run's feedback with
    e-prop under symmetric feedback"."""
    import copy

    model = biograd.convert(network(), "fa", last="fa", seed=0)
    x, y = torch.randn(6, 5, 5, dtype=torch.float64), torch.randint(0, K, (5,))
    symmetric = biograd.convert(copy.deepcopy(model), "bp")
    ours, theirs = grads(model, x, y), grads(symmetric, x, y)
    angles = biograd.gradient_angles(model, (x, y))
    for g, h, name in ((ours[0], theirs[0], "0.input"), (ours[2], theirs[2], "0.recurrent")):
        cos = (g * h).sum() / (g.norm() * h.norm())
        assert angles[name] == pytest.approx(math.degrees(math.acos(cos.clamp(-1, 1))),
                                             abs=1e-6), name
        assert angles[name] > 1e-3  # the readout's B is not W_out: the angle is not zero
