"""spiking_cnn, the zoo's spiking model (spikingjelly, multi-step): what it computes, that it
holds no state between forwards, its seeded Poisson encoding, every rule on it, and
`biograd train/compare/eval` with it, exact resume included (DDP: tests/test_train_ddp.py;
without the extra: tests/test_packaging.py).

Identities, not numbers: the multi-step forward is spikingjelly's own step-by-step loop; a
forward after another equals a fresh one; a resumed run ends bit for bit where the
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
from biograd.errors import UsageError
from biograd.models import ModelError, build_model
from biograd.rules import Feedback

pytest.importorskip("spikingjelly.activation_based",
                    reason="spiking_cnn needs biograd[spiking]")
from spikingjelly.activation_based import base, functional

from biograd.models.spiking import EVAL_SEED, SURROGATES, Encode

pytestmark = pytest.mark.usefixtures("one_thread")
K, N = 3, 4
TINY = {"width": 4, "steps": 3}  # the smallest model that shows every claim


def tiny(encoding="direct", channels=1, **options):
    return build_model("spiking_cnn", num_classes=K, in_channels=channels, image_size=8,
                       **{**TINY, "encoding": encoding, **options})


def images(channels=1, side=8, n=N):
    return torch.randn(n, channels, side, side)


def neurons(model):
    return [m for m in model.modules() if isinstance(m, base.MemoryModule)]


# --- what it computes ---------------------------------------------------------------------------

@pytest.mark.parametrize(("channels", "side"), [(1, 8), (1, 28), (3, 5), (1, 2)])
def test_images_of_any_size_and_channels_give_logits(channels, side):
    model = tiny(channels=channels)
    out = model(images(channels, side))
    assert out.shape == (N, K)
    out.logsumexp(1).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_the_multi_step_forward_is_the_librarys_step_by_step_loop():
    """Each layer on all T steps at once ('m') = spikingjelly's loop over the steps ('s'),
    and the logits are the time average of fc on each step's normalised rates."""
    model = tiny()
    for norm in model.modules():  # BatchNorm statistics of the data (a plain average of a
        if isinstance(norm, nn.modules.batchnorm._NormBase):  # few batches): neurons fire
            norm.momentum = None
    with torch.no_grad():
        for _ in range(5):
            model(images())
    model.eval()  # (BatchNorm an affine map per step, as the identity needs)
    x = images()
    with torch.no_grad():
        logits = model(x)
        assert (logits.std(0) > 0).all()  # the samples' spikes differ: not a vacuous check
        single = copy.deepcopy(model)
        functional.set_step_mode(single, "s")
        functional.reset_net(single)
        per_step = [single.fc(single.norm(single.features(x).mean((2, 3))))
                    for _ in range(TINY["steps"])]
        functional.reset_net(single)
    torch.testing.assert_close(logits, torch.stack(per_step).mean(0))


def test_every_neuron_is_spikingjellys_lif_in_multi_step_mode():
    from spikingjelly.activation_based import neuron, surrogate

    model = tiny(tau=3.0, surrogate="atan", alpha=1.5)
    lifs = neurons(model)
    assert len(lifs) == 4 and all(type(m) is neuron.LIFNode for m in lifs)
    assert all(m.step_mode == "m" and m.tau == 3.0 for m in lifs)
    assert all(type(m.surrogate_function) is surrogate.ATan for m in lifs)
    assert all(m.surrogate_function.alpha == 1.5 for m in lifs)
    assert all(m.step_mode == "m" for m in model.modules() if isinstance(m, base.StepModule))


@pytest.mark.parametrize("name", list(SURROGATES))
def test_every_surrogate_name_is_spikingjellys_class_and_trains(name):
    from spikingjelly.activation_based import surrogate

    model = tiny(surrogate=name)
    assert all(type(m.surrogate_function) is getattr(surrogate, SURROGATES[name])
               for m in neurons(model))
    model(images()).logsumexp(1).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize(("options", "match"), [
    ({"encoding": "rate"}, "encoding='rate': use one of direct, poisson"),
    ({"surrogate": "relu"}, "surrogate='relu': use one of sigmoid, atan"),
    ({"tau": 1.0}, "tau=1.0: the membrane time constant must be a number > 1"),
    ({"alpha": 0}, "alpha=0: the surrogate's sharpness must be a number > 0"),
    ({"steps": 0}, "steps=0"),
    ({"time_steps": 4}, "unexpected keyword argument 'time_steps'"),
])
def test_bad_options_are_one_line_errors(options, match):
    with pytest.raises(ModelError, match=match) as err:
        tiny(**options)
    assert len(str(err.value).splitlines()) == 1


# --- no state between forwards ------------------------------------------------------------------

def test_every_forward_starts_from_rest_and_leaves_nothing_behind():
    model = tiny()  # direct encoding, in training (BatchNorm on each batch's own statistics)
    a, b = images(), images()
    with torch.no_grad():
        fresh = model(b)
        model(a)
        assert torch.equal(model(b), fresh)  # a before b changed nothing
        # without the resets, a's membranes would carry over into b: the check above bites
        functional.reset_net(model)
        model.features(model.encode(a))
        leaked = model.fc(model.norm(model.features(model.encode(b)).mean((3, 4))).mean(0))
        functional.reset_net(model)
    assert not torch.equal(leaked, fresh)
    F.cross_entropy(model(a), torch.arange(N) % K).backward()
    for lif in neurons(model):  # at rest: the float the library resets to, not a tensor
        assert not isinstance(lif.v, torch.Tensor)
    copy.deepcopy(model)  # a held graph would refuse this


def test_the_state_dict_holds_weights_and_batchnorm_statistics_alone():
    model = tiny(encoding="poisson")
    expected = {n for n, _ in model.named_parameters()}
    norms = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
    expected |= {f"{n}.{s}" for n in norms
                 for s in ("running_mean", "running_var", "num_batches_tracked")}
    before = set(model.state_dict())
    F.cross_entropy(model(images()), torch.arange(N) % K).backward()
    assert before == set(model.state_dict()) == expected
    biograd.convert(model, "fa")  # and converted: the feedback buffers, nothing more
    model(images())
    added = set(model.state_dict()) - expected
    assert added and all(k.endswith(("feedback", "feedback_seed")) for k in added), added


# --- the Poisson encoding: seeded -------------------------------------------------------------

def test_poisson_spikes_fire_at_the_images_own_intensity():
    encode = Encode(steps=5, encoding="poisson")
    raw = torch.rand(N, 1, 8, 8)
    raw = (raw - raw.amin((1, 2, 3), keepdim=True)) / (raw.amax((1, 2, 3), keepdim=True)
                                                      - raw.amin((1, 2, 3), keepdim=True))
    normalised = (raw - 0.3) / 0.4  # a data set's mean and std: undone by the rescaling
    encode.eval()
    spikes = encode(normalised)
    assert spikes.shape == (5, N, 1, 8, 8) and set(spikes.unique().tolist()) <= {0.0, 1.0}
    draws = torch.rand((5, N, 1, 8, 8), generator=torch.Generator().manual_seed(EVAL_SEED))
    torch.testing.assert_close(spikes, (draws < raw).float(), rtol=0, atol=0)
    direct = Encode(steps=5, encoding="direct")
    assert torch.equal(direct(normalised), normalised.expand(5, *normalised.shape))


def test_poisson_draws_train_from_torchs_stream_and_evaluate_from_a_fixed_seed():
    model = tiny(encoding="poisson")
    x = images()
    torch.manual_seed(7)
    a = model(x)
    b = model(x)
    torch.manual_seed(7)
    assert torch.equal(model(x), a) and not torch.equal(a, b)  # the stream, reseeded
    model.eval()
    with torch.no_grad():
        scored = model(x)
        torch.manual_seed(123)
        torch.rand(10)
        assert torch.equal(model(x), scored)  # whatever ran before


def test_gradient_angles_see_the_same_spikes_in_both_passes(monkeypatch):
    """With B = W, fa's gradient is backprop's, so every angle is 0 only if the rule's pass
    and backprop's pass drew the same spikes."""
    model = biograd.convert(tiny(encoding="poisson"), "fa")
    monkeypatch.setattr(type(biograd.get_rule("fa")), "bind", lambda self, lay: Feedback(
        lambda w: w))
    batch = (images(), torch.arange(N) % K)
    angles = biograd.gradient_angles(model, batch)
    assert angles and all(a < 1e-6 for a in angles.values()), angles


# --- every rule ----------------------------------------------------------------------------------

@pytest.mark.parametrize("rule", biograd.list_rules())
def test_every_rule_trains_a_step_with_the_error_at_the_output(rule):
    model = tiny(encoding="poisson")
    biograd.convert(model, sweep_rule(rule, "features.unit*"), last="bp", seed=0)
    before = two_steps_every_layer_learns(model, dict(biograd.feedback_layers(model)), images(),
                                          torch.arange(N) % K)
    assert all(not torch.equal(p, before[n]) for n, p in model.named_parameters()
               if n.startswith("features") and n.endswith("0.weight"))  # every convolution


def test_dfa_blocks_finds_no_block_by_itself_and_says_how_to_name_them():
    with pytest.raises(ValueError, match=r"dfa_blocks found no block in SpikingCNN.*"
                                         r"features\.unit1"):
        biograd.convert(tiny(), "dfa_blocks")


# --- the command line ----------------------------------------------------------------------------

RUN = dict(model="spiking_cnn", model_options={**TINY, "encoding": "poisson"}, epochs=1,
           steps_per_epoch=2, batch_size=16, progress="none", tensorboard=False,
           angle_batch=8)


def metrics(path):
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def test_train_and_eval_on_digits_and_synthetic_images(tmp_path, monkeypatch, capsys):
    """(80 steps: BatchNorm statistics under which the neurons fire in evaluation.)"""
    import biograd.models.spiking
    from biograd.cli import main

    flags = ["--model", "spiking_cnn", "--model-options",
             "{width: 4, steps: 2, encoding: poisson}", "--epochs", "1", "--steps-per-epoch",
             "80", "--batch-size", "16", "--progress", "none", "--tensorboard", "false"]
    for data in (["--data", "digits"], ["--data", "fake", "--image-size", "8"]):
        out = tmp_path / data[1]
        assert main(["train", "--rule", "dfa", *data, *flags, "--out", str(out)]) == 0
        (logged,) = metrics(out)
        assert logged["gradient_angles"] and all(v == v for v in logged["gradient_angles"].values())
        assert main(["eval", str(out)]) == 0  # the same spikes: the number training logged
        scored = json.loads((out / "eval.json").read_text())
        assert scored["val_top1"] == logged["val_top1"]
        assert scored["val_loss"] == pytest.approx(logged["val_loss"], rel=1e-6)
        # each LIF layer's spike rate, in evaluation: logged by training, given by eval
        rates = logged["val_spike_rates"]
        assert list(rates) == [f"features.unit{i}.2" for i in (1, 2, 3, 4)]
        assert all(0 <= rate < 1 for rate in rates.values()) and rates["features.unit1.2"] > 0
        assert scored["val_spike_rates"] == pytest.approx(rates, rel=1e-9)
    # other draws score otherwise: the agreement above is the seed's, not silent neurons'
    monkeypatch.setattr(biograd.models.spiking, "EVAL_SEED", EVAL_SEED + 1)
    assert main(["eval", str(tmp_path / "digits")]) == 0
    redrawn = json.loads((tmp_path / "digits" / "eval.json").read_text())
    assert redrawn["val_loss"] != pytest.approx(metrics(tmp_path / "digits")[0]["val_loss"],
                                                rel=1e-6)


def test_compare_leaves_dfa_blocks_out_and_refuses_it_by_name(tmp_path, capsys):
    from biograd.cli import main

    cfg = resolve(rule="dfa_blocks", **RUN, out=str(tmp_path / "x"))
    with pytest.raises(UsageError, match="found no block in SpikingCNN"):
        classify.check(cfg)
    flags = ["--model", "spiking_cnn", "--model-options", "{width: 4, steps: 2}", "--epochs",
             "1", "--steps-per-epoch", "1", "--batch-size", "8", "--progress", "none",
             "--tensorboard", "false", "--angle-batch", "0"]
    assert main(["compare", "--rules", "fa,dfa_blocks", *flags,
                 "--out", str(tmp_path / "refused")]) == 2
    assert "dfa_blocks on --model spiking_cnn" in capsys.readouterr().err
    assert not (tmp_path / "refused" / "fa").exists()  # refused before any run trained
    assert main(["compare", "--rules", "bp,dfa", *flags, "--out", str(tmp_path / "cmp")]) == 0
    report = (tmp_path / "cmp" / "report.md").read_text()
    assert "| `bp` |" in report and "| `dfa` |" in report


@pytest.mark.parametrize("rule", ["dfa", "brsf"])
def test_resume_continues_bit_for_bit(tmp_path, monkeypatch, rule):
    common = dict(RUN, rule=rule, epochs=3, steps_per_epoch=2, schedule="cosine")
    assert_resumes_exactly(tmp_path, monkeypatch, **common)


# --- the cost benchmark --------------------------------------------------------------------------

def test_the_cost_benchmark_times_every_rule_and_each_number_of_steps(capsys):
    import math

    bench = load_benchmark("spiking_cost")
    result = bench.main(bench.get_args_parser().parse_args(
        ["--batch", "2", "--size", "8", "--width", "2", "--steps", "2", "--repeats", "1",
         "--warmup", "0"]))
    assert set(result["rules"]) == {"native", *biograd.list_rules()}
    assert set(result["time_steps"]) == {"native", "T=2", "T=4", "T=8", "small_cnn"}
    for part in ("rules", "time_steps"):
        for name, clocks in result[part].items():
            assert all(math.isfinite(c["ratio"]) and c["ratio"] > 0 for c in clocks.values()), name
    assert "| dfa_blocks |" in capsys.readouterr().out
