"""torch.compile for every rule: one graph (dfa, drtp: a graph between their layers;
dfa_blocks: between its blocks), no recompiling as the rule's state moves, and the eager
gradients (backend aot_eager: the same autograd graph, without a C++ compiler)."""

import contextlib
import copy
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import biograd

pytestmark = pytest.mark.usefixtures("one_thread")


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 8), nn.ReLU(), nn.Linear(8, 3))


#: dfa_blocks needs blocks, which net() has none of that "auto" knows: its two hidden layers
BLOCKS = {"blocks": "0,4"}


@pytest.mark.parametrize("rule", biograd.list_rules())
def test_compiled_training_matches_eager_without_recompiling(rule):
    import torch._dynamo as dynamo

    dynamo.reset()
    every = biograd.rules.rule_class(rule).every_model
    eager = biograd.convert(net(), rule, seed=0, **({} if every else BLOCKS))
    twin = copy.deepcopy(eager)
    # dfa's backward reads the output error (drtp's the targets, dfa_blocks' points the
    # error), which exists only once the backward has begun: torch.compile cannot trace it
    # ahead, and breaks the graph at each such layer or block instead
    direct = biograd.get_rule(rule).reads_output
    compiled = torch.compile(twin, backend="aot_eager", fullgraph=not direct)
    optimisers = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (eager, twin)]
    strict = dynamo.config.patch(error_on_recompile=True)  # any recompiling fails the test
    with contextlib.ExitStack() as stack:
        for step in range(6):
            if step == int(direct):  # dfa: each piece compiles once, at the first step
                stack.enter_context(strict)
            x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 3, (4,))
            for run in (eager, compiled):
                biograd.targets(run, y)  # drtp's; a no-op for every other rule
                F.cross_entropy(run(x), y).backward()
            for (name, a), b in zip(eager.named_parameters(), twin.parameters(), strict=True):
                torch.testing.assert_close(b.grad, a.grad, msg=name)
            for model, opt in zip((eager, twin), optimisers, strict=True):
                opt.step()
                opt.zero_grad()
                biograd.after_step(model)
    for (name, a), b in zip(eager.state_dict().items(), twin.state_dict().values(),
                            strict=True):
        torch.testing.assert_close(b, a, msg=name)


def test_dfa_compiles_every_layer_shape_past_torchs_default_limit():
    """dfa breaks the graph at each layer, so each distinct layer shape is a cache entry of the
    layers' own code: ten here, past torch's default limit of 8, where torch would otherwise
    run the rest eagerly. The engine's compile_model makes room for them."""
    import torch._dynamo as dynamo

    from biograd.engine.loop import compile_model

    dynamo.reset()
    torch.manual_seed(0)
    widths = [3, *range(4, 14)]  # ten Linear layers, each of another shape
    layers = [m for a, b in itertools.pairwise(widths) for m in (nn.Linear(a, b), nn.ReLU())]
    model = biograd.convert(nn.Sequential(*layers[:-1]), "dfa", seed=0)
    with dynamo.config.patch(fail_on_recompile_limit_hit=True, recompile_limit=8):
        compiled = compile_model(model, model, "default", backend="aot_eager")
        for _ in range(3):
            F.cross_entropy(compiled(torch.randn(4, 3)), torch.randint(0, 13, (4,))).backward()
            biograd.after_step(model)
    assert all(p.grad.abs().sum() > 0 for p in model.parameters())


def test_compiling_dfa_leaves_a_native_model_compiled_beside_it():
    """dfa's layers run eagerly under torch.compile (a graph break each): traced, their
    backward would raise for want of the output error, and dynamo would then skip the frame's
    code for good, so that a native ResNet-18 compiled in the same process ran eagerly after."""
    import torchvision

    graphs = []

    def counting(gm, example_inputs):  # a backend that counts its graphs' calls
        def run(*args):
            graphs.append(1)
            return gm.forward(*args)
        return run

    torch.manual_seed(0)
    base = torchvision.models.resnet18(num_classes=10)
    native = torch.compile(copy.deepcopy(base), backend=counting)
    dfa = torch.compile(biograd.convert(copy.deepcopy(base), "dfa"), backend=counting)
    x = torch.randn(2, 3, 32, 32)

    def step(model) -> int:
        graphs.clear()
        model(x).sum().backward()
        return len(graphs)

    torch._dynamo.reset()
    try:
        with torch._dynamo.config.patch(recompile_limit=64):
            assert step(native) == 1  # one graph, forward and backward
            assert step(dfa) > 1  # broken at its layers
            assert step(native) == 1  # still the compiled graph, not eager (0)
    finally:
        torch._dynamo.reset()
