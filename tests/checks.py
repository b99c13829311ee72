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
