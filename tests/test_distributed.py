"""DistributedDataParallel: every rank trains with the same feedback, for every rule.

Two processes (gloo on loopback) run all rules in one go. Each rank seeds torch's global
stream differently and trains on its own random data, so any feedback drawn from the global
stream, or from the data, would differ between ranks. DDP runs with broadcast_buffers=False
(no buffer broadcast, neither at construction nor at each forward), so agreement of the
feedback buffers cannot come from DDP; the state right after `convert` is recorded before DDP
broadcasts rank 0's parameters at construction, so kp's initial B is checked on its own too.

Identities checked across the two ranks (torch.equal): the converted state, every step's
feedback_weight() for every layer, and the weights and feedback state after every step. Also:
every Parameter gets a gradient (a kp feedback Parameter without one would hang DDP), kp's B
gets exactly W's all-reduced gradient and moves, wm's B moves, brsf draws a new B at every step.

This file is also the worker: `python tests/test_distributed.py RANK PORT OUT_DIR`.
"""

from __future__ import annotations

import copy
import itertools
import os
import socket
import subprocess
import sys
import time
import warnings
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import biograd

ROOT = Path(__file__).resolve().parents[1]
WORLD = 2
STEPS = 3
TIMEOUT_S = 120  # the whole two-process run; a hang fails the test instead of blocking it
#: (rule name, options): every registered rule, plus brsf's exact per-step draw, plus ss under
#: Dale's law (option "dale": the excitatory fraction, given to biograd.dale, not the rule).
#: A rule not every model can take (dfa_blocks) gets the model's convolutions as its blocks.
CASES = [(name, {} if biograd.rules.rule_class(name).every_model else {"blocks": "0,3"})
         for name in biograd.list_rules()] + [
    ("brsf", {"fresh": "full"}), ("ss", {"dale": 0.8}),
    # Kunin's weight mirror: the family's B learning from noise drawn from seed and step
    ("alignment", {"decay": 1e-3, "amp": 1e-3, "noise": "normal"})]


def _label(name: str, options: dict) -> str:
    rule_options = {k: v for k, v in options.items() if k != "dale"}
    label = str(biograd.get_rule(name, **rule_options))
    return f"{label} + dale({options['dale']})" if "dale" in options else label


LABELS = [_label(name, options) for name, options in CASES]
#: BatchNorm statistics follow each rank's own data: they must differ, nothing else may.
LOCAL_STATS = ("running_mean", "running_var")


# --- the worker ------------------------------------------------------------------------------


def _model() -> nn.Module:
    """A tiny CNN: convolutions with and without bias, BatchNorm, a linear classifier."""
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, stride=2),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 5),
    )


def _snapshot(model: nn.Module) -> dict:
    """The full state dict (weights, feedback state, extra state, BatchNorm statistics)."""
    return copy.deepcopy(model.state_dict())


def _train(name: str, options: dict, rank: int) -> dict:
    """Convert, wrap in DDP, train STEPS steps on this rank's data; return what was seen."""
    torch.manual_seed(0)
    model = _model()  # identical weights on every rank
    torch.manual_seed(1000 + rank)  # ... and a different global stream on each
    x = torch.randn(STEPS, 8, 3, 8, 8)
    y = torch.randint(0, 5, (STEPS, 8))
    rng = torch.get_rng_state()
    rule_options = {k: v for k, v in options.items() if k != "dale"}
    biograd.convert(model, name, seed=0, **rule_options)
    if "dale" in options:  # every unit's sign from the seed: DDP must not need to send it
        biograd.dale(model, options["dale"], seed=0, balance=True)
    initial = _snapshot(model)  # before DDP broadcasts rank 0's parameters
    layers = dict(biograd.feedback_layers(model))
    with warnings.catch_warnings():
        # torch 2.14 deprecates broadcast_buffers, but only broadcast_buffers=False also
        # skips the buffer broadcast at construction: the agreement must not come from it.
        warnings.filterwarnings("ignore", "`broadcast_buffers` is deprecated", FutureWarning)
        ddp = nn.parallel.DistributedDataParallel(model, broadcast_buffers=False)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    steps = []
    for t in range(STEPS):
        opt.zero_grad(set_to_none=True)
        biograd.targets(ddp, y[t])  # drtp's, through DDP's .module; a no-op for other rules
        F.cross_entropy(ddp(x[t]), y[t]).backward()
        record = {
            # (the stem's input needs no gradient: dfa projects nothing there and has no B)
            "feedback_weight": {n: layer.feedback_weight() for n, layer in layers.items()
                                if n != "0" or not layer.learning_rule.direct},
            "no_grad": [n for n, p in model.named_parameters() if p.grad is None],
            "learned_grad_is_weight_grad": {
                n: torch.equal(layer.feedback.grad, layer.weight.grad)
                for n, layer in layers.items()
                if isinstance(getattr(layer, "feedback", None), nn.Parameter)
                and layer.feedback.grad is not None
            },
        }
        opt.step()
        biograd.after_step(ddp)
        record["state"] = _snapshot(model)
        steps.append(record)
    return {
        "layers": list(layers),
        "feedback_keys": [f"{n}.{s}" for n, layer in layers.items()
                          for s in layer.learning_rule.state],
        "global_stream_untouched": torch.equal(rng, torch.get_rng_state()),
        "initial": initial,
        "steps": steps,
    }


def _worker(rank: int, port: int, out: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=timedelta(seconds=60),
    )
    try:
        results = {
            label: _train(name, options, rank)
            for label, (name, options) in zip(LABELS, CASES, strict=True)
        }
    finally:
        dist.destroy_process_group()
    torch.save(results, out / f"rank{rank}.pt")


# --- the parent ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """Run the two workers once; the results of rank 0 and rank 1."""
    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this build of torch")
    if not dist.is_gloo_available():
        pytest.skip("the gloo backend is not available in this build of torch")
    out = tmp_path_factory.mktemp("ddp")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
        "OMP_NUM_THREADS": "1",
    }
    if "lo" in {name for _, name in socket.if_nameindex()}:
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    port = _free_port()
    logs = [out / f"rank{rank}.log" for rank in range(WORLD)]
    procs = []
    for rank, log in enumerate(logs):
        with open(log, "w") as f:
            cmd = [sys.executable, str(Path(__file__).resolve()), str(rank), str(port), str(out)]
            procs.append(subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + TIMEOUT_S
    timed_out = False
    try:
        # Wait for both; stop at the first failure (the other rank would wait for it in a
        # collective until gloo's own timeout) or at the deadline.
        while any(p.poll() is None for p in procs):
            if any(p.poll() not in (None, 0) for p in procs):
                break
            if time.monotonic() > deadline:
                timed_out = True
                break
            time.sleep(0.1)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    codes = [p.returncode for p in procs]
    if codes != [0] * WORLD:
        why = f"timed out after {TIMEOUT_S} s" if timed_out else "failed"
        text = "\n".join(f"--- rank {r} (exit {c}) ---\n{log.read_text()[-4000:]}"
                         for r, (c, log) in enumerate(zip(codes, logs, strict=True)))
        pytest.fail(f"DDP workers {why}:\n{text}")
    return [torch.load(out / f"rank{rank}.pt") for rank in range(WORLD)]


def _differences(a: dict, b: dict, skip: tuple[str, ...] = ()) -> list[str]:
    """Keys whose values are not identical (tensors: torch.equal; other values: ==)."""
    assert a.keys() == b.keys()
    bad = []
    for key in a:
        if key.endswith(skip):
            continue
        va, vb = a[key], b[key]
        same = torch.equal(va, vb) if isinstance(va, torch.Tensor) else va == vb
        if not same:
            bad.append(key)
    return bad


def test_dale_signs_agree_and_hold_across_ranks(ranks):
    label = _label("ss", {"dale": 0.8})
    for rank in ranks:
        state = rank[label]["steps"][-1]["state"]
        signs = {k[: -len(".dale_sign")]: v for k, v in state.items() if k.endswith("dale_sign")}
        assert len(signs) == 2  # the stem is left free; the second conv and the classifier
        for name, sign in signs.items():
            w = state[f"{name}.weight"]
            assert torch.equal(torch.sign(w), sign.view(1, -1, *[1] * (w.dim() - 2))
                               .expand_as(w)), name
    assert torch.equal(ranks[0][label]["initial"]["3.dale_sign"],
                       ranks[1][label]["initial"]["3.dale_sign"])


def test_covers_every_rule():
    assert set(biograd.list_rules()) <= {name for name, _ in CASES}


@pytest.mark.parametrize("label", LABELS)
def test_conversion_agrees_across_ranks(ranks, label):
    r0, r1 = (r[label] for r in ranks)
    assert r0["layers"] == r1["layers"] and r0["layers"]
    assert _differences(r0["initial"], r1["initial"]) == []


@pytest.mark.parametrize("label", LABELS)
def test_feedback_never_from_global_stream(ranks, label):
    for r in ranks:
        assert r[label]["global_stream_untouched"]


@pytest.mark.parametrize("label", LABELS)
def test_every_step_agrees_across_ranks(ranks, label):
    r0, r1 = (r[label] for r in ranks)
    assert set(r0["feedback_keys"]) <= r0["steps"][0]["state"].keys()
    for t, (s0, s1) in enumerate(zip(r0["steps"], r1["steps"], strict=True)):
        assert s0["feedback_weight"].keys() == s1["feedback_weight"].keys()
        assert len(s0["feedback_weight"]) >= len(r0["layers"]) - 1
        for layer in s0["feedback_weight"]:
            same = torch.equal(s0["feedback_weight"][layer], s1["feedback_weight"][layer])
            assert same, f"step {t}, layer {layer!r}: feedback_weight() differs across ranks"
        assert _differences(s0["state"], s1["state"], skip=LOCAL_STATS) == [], f"step {t}"


@pytest.mark.parametrize("label", LABELS)
def test_ranks_really_differ_and_train(ranks, label):
    """The agreement is not vacuous: the ranks saw different data, and the weights moved."""
    r0, r1 = (r[label] for r in ranks)
    final0, final1 = r0["steps"][-1]["state"], r1["steps"][-1]["state"]
    stats = [k for k in final0 if k.endswith(LOCAL_STATS)]
    assert stats and _differences({k: final0[k] for k in stats}, {k: final1[k] for k in stats})
    for layer in r0["layers"]:
        key = f"{layer}.weight"
        moved = not torch.equal(r0["initial"][key], final0[key])
        assert moved, f"{key} did not train"


@pytest.mark.parametrize("label", LABELS)
def test_every_parameter_gets_a_gradient(ranks, label):
    for r in ranks:
        for t, step in enumerate(r[label]["steps"]):
            assert step["no_grad"] == [], f"step {t}: no gradient for {step['no_grad']}"


@pytest.mark.parametrize("label", [lb for lb in LABELS if lb.startswith("brsf")])
def test_brsf_redraws_every_step(ranks, label):
    for r in ranks:
        result = r[label]
        for layer in result["layers"]:
            drawn = [s["feedback_weight"][layer] for s in result["steps"]]
            for t in range(1, STEPS):
                redrawn = not torch.equal(drawn[t - 1], drawn[t])
                assert redrawn, f"layer {layer!r}: step {t} used step {t - 1}'s B"
            # one draw per training forward pass
            assert int(result["steps"][-1]["state"][f"{layer}.feedback_step"]) == STEPS


def test_kp_feedback_learns_through_ddp(ranks):
    for r in ranks:
        result = r["kp"]
        names = result["feedback_keys"]
        assert names and all(isinstance(result["initial"][n], torch.Tensor) for n in names)
        for step in result["steps"]:
            assert sorted(step["learned_grad_is_weight_grad"]) == sorted(result["layers"])
            assert all(step["learned_grad_is_weight_grad"].values())
        final = result["steps"][-1]["state"]
        for key in names:
            moved = not torch.equal(result["initial"][key], final[key])
            assert moved, f"{key} never moved"


@pytest.mark.parametrize("label", ["aa", "ia", "alignment(decay=0.001, amp=0.001, "
                                   "noise='normal')"])
def test_an_aligning_b_learns_through_ddp(ranks, label):
    # aa's and ia's B learn from each rank's own input: the ranks agree on B at every step
    # (test_every_step_agrees_across_ranks) only because DDP averages its gradient
    for r in ranks:
        result = r[label]
        names = [n for n in result["feedback_keys"] if n.endswith(".feedback")]
        assert names
        for step in result["steps"]:
            assert not any(step["learned_grad_is_weight_grad"].values())  # no task gradient
        states = [result["initial"]] + [s["state"] for s in result["steps"]]
        for before, after in itertools.pairwise(states):
            for key in names:
                assert not torch.equal(before[key], after[key]), f"{key} did not move"


def test_wm_feedback_moves_every_step(ranks):
    for r in ranks:
        result = r["wm"]
        names = result["feedback_keys"]
        assert names
        states = [result["initial"]] + [s["state"] for s in result["steps"]]
        for before, after in itertools.pairwise(states):
            for key in names:
                moved = not torch.equal(before[key], after[key])
                assert moved, f"{key} did not move in a step"


if __name__ == "__main__":
    _worker(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
