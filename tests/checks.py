"""Checks shared by the test files that train converted models a step."""

import importlib.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def assert_every_layer_learnt(converted: dict, ran: set, params: dict[str, torch.Tensor]) -> None:
    """After one step: every converted layer ran its forward, and every trainable parameter
    got a finite gradient."""
    assert ran == set(converted), f"converted, but never called: {sorted(set(converted) - ran)}"
    no_grad = [n for n, p in params.items() if p.grad is None]
    assert not no_grad, f"no gradient: {no_grad}"
    bad = [n for n, p in params.items() if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradient: {bad}"


def two_steps_every_layer_learns(model: torch.nn.Module, modules: dict, x: torch.Tensor,
                                 y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Two SGD steps of `model` on (x, y), the way a loop runs them (biograd.attach, targets
    before each forward), checking after each backward that every module of `modules` ran
    and every parameter got a finite gradient. Returns the parameters from before."""
    import torch.nn.functional as F

    import biograd

    ran: set[str] = set()
    for key, module in modules.items():
        module.register_forward_hook(lambda *_, key=key: ran.add(key))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    biograd.attach(opt, model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for _ in range(2):
        opt.zero_grad()
        biograd.targets(model, y)
        F.cross_entropy(model(x), y).backward()
        assert_every_layer_learnt(modules, ran, dict(model.named_parameters()))
        opt.step()
    return before


@contextmanager
def experiments_importable() -> Iterator[None]:
    """Within the block, experiments/ is on sys.path: its scripts import one another."""
    sys.path.insert(0, str(ROOT / "experiments"))
    try:
        yield
    finally:
        sys.path.remove(str(ROOT / "experiments"))


def stop_in_epoch(monkeypatch, epoch: int):
    """From now on, loop.train_one_epoch raises KeyboardInterrupt (a Ctrl-C) when it reaches
    `epoch`; call the returned function to give it back its own."""
    from biograd.engine import loop

    real = loop.train_one_epoch

    def stopping(ctx, loader, at):
        if at == epoch:
            raise KeyboardInterrupt
        return real(ctx, loader, at)

    monkeypatch.setattr(loop, "train_one_epoch", stopping)
    return lambda: monkeypatch.setattr(loop, "train_one_epoch", real)


def assert_resumes_exactly(tmp_path: Path, monkeypatch, **config) -> None:
    """A run of config (3 epochs) stopped by a Ctrl-C in its third epoch and resumed ends bit
    for bit where the uninterrupted run did: every tensor of the model's state, and every
    logged number but the timings."""
    import json

    from biograd.config import resolve
    from biograd.engine import checkpoint, classify

    def metrics(run: Path) -> list[dict]:
        timing = {"epoch_seconds", "images_per_second", "elapsed_seconds"}
        return [{k: v for k, v in json.loads(line).items() if k not in timing}
                for line in (run / "metrics.jsonl").read_text().splitlines()]

    whole, parts = tmp_path / "whole", tmp_path / "parts"
    classify.train(resolve(**config, out=str(whole)))
    give_back = stop_in_epoch(monkeypatch, 3)
    try:
        with pytest.raises(KeyboardInterrupt):
            classify.train(resolve(**config, out=str(parts)))
    finally:
        give_back()
    assert len(metrics(parts)) == 2
    classify.train(resolve(**config, out=str(parts), resume=True))
    a, b = (torch.load(run / checkpoint.NAME, weights_only=True)["model"]
            for run in (whole, parts))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert metrics(whole) == metrics(parts)


def load_benchmark(name: str):
    """benchmarks/NAME.py as a module."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sweep_rule(name: str, blocks: str):
    """The rule `name` for a test that sweeps the registry over small models: a rule that not
    every model can take (dfa_blocks, which needs blocks; "auto" knows none of a plain
    Sequential) gets `blocks`, fnmatch patterns on the model's module names."""
    import biograd

    every = biograd.rules.rule_class(name).every_model
    return biograd.get_rule(name, **({} if every else {"blocks": blocks}))


def one_hot_targets(n: int, k: int) -> torch.Tensor:
    """(n, k) one-hot targets of classes drawn from a fixed seed (the same at every call)."""
    classes = torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(0))
    return torch.nn.functional.one_hot(classes, k).float()


def targets_at_every_forward(layer: torch.nn.Module, reference: torch.nn.Module) -> None:
    """Give `layer`, a model of its own on a rule that projects the targets (drtp), targets
    before each of its forwards: `one_hot_targets` of its output's shape, which `reference`
    (its torch twin, same arguments) gives."""
    import biograd

    def give(module, args, kwargs):
        with torch.no_grad():
            out = reference(*args, **kwargs)
        biograd.targets(layer, one_hot_targets(out.shape[0], out[0].numel()).to(out.device))

    layer.register_forward_pre_hook(give, prepend=True, with_kwargs=True)  # before the pass
