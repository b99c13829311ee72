"""Checks shared by the test files that train converted models a step."""

import torch


def assert_every_layer_learnt(converted: dict, ran: set, params: dict[str, torch.Tensor]) -> None:
    """After one step: every converted layer ran its forward, and every trainable parameter
    got a finite gradient."""
    assert ran == set(converted), f"converted, but never called: {sorted(set(converted) - ran)}"
    no_grad = [n for n, p in params.items() if p.grad is None]
    assert not no_grad, f"no gradient: {no_grad}"
    bad = [n for n, p in params.items() if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradient: {bad}"


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
