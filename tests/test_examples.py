"""examples/: each runs, and in each, biograd's between-step work runs once per optimiser
step through `biograd.attach`, whichever framework calls the step."""

import argparse
import importlib.util
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


EXAMPLES = [
    ("plain_loop", {"epochs": 1, "steps": 5}, 5),
    ("accelerate_loop", {"epochs": 1}, 512 // 32),
    ("lightning_module", {"epochs": 1}, 512 // 32),
    ("hf_trainer", {"epochs": 1, "out": None}, 512 // 32),
]


@pytest.mark.parametrize(("name", "args", "steps"), EXAMPLES)
def test_example_runs_after_step_once_per_step(name, args, steps, monkeypatch, capsys,
                                               tmp_path):
    example = load(name)
    calls = []
    converter = importlib.import_module("biograd.convert")  # the module, not the function
    real = converter.after_step
    monkeypatch.setattr(converter, "after_step", lambda model: calls.append(1) or real(model))
    if "out" in args:
        args = {**args, "out": str(tmp_path / "out")}
    example.main(argparse.Namespace(rule="wm", **args))
    assert len(calls) == steps
    assert "°" in capsys.readouterr().out  # it printed the angles


@pytest.mark.parametrize(("name", "args", "steps"), EXAMPLES)
def test_example_trains_its_first_layer_differently_under_fa_than_under_bp(
        name, args, steps, monkeypatch, tmp_path):
    """The rule reaches the first layer's weights. (Where the only layer on the rule is the
    one before a backprop classifier, its input gradient, the one thing a rule forms, goes
    nowhere, and every rule trains exactly as bp does: this test then fails.)"""
    import biograd

    example = load(name)
    trained = []  # each example ends by printing the angles of its trained net
    real = biograd.weight_angles
    monkeypatch.setattr(biograd, "weight_angles", lambda net: trained.append(net) or real(net))
    if "out" in args:
        args = {**args, "out": str(tmp_path / "out")}
    first = {}
    for rule in ("bp", "fa"):
        example.main(argparse.Namespace(rule=rule, **args))
        first[rule] = trained[-1][0].weight.detach().clone()
    assert not torch.allclose(first["fa"], first["bp"])
