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
