"""torch.compile for every rule: one graph (dfa: a graph between its layers), no recompiling as
the rule's state moves, and the eager gradients (backend aot_eager: the same autograd graph,
without a C++ compiler)."""

import contextlib
import copy

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


@pytest.mark.parametrize("rule", biograd.list_rules())
def test_compiled_training_matches_eager_without_recompiling(rule):
    import torch._dynamo as dynamo

    dynamo.reset()
    eager = biograd.convert(net(), rule, seed=0)
    twin = copy.deepcopy(eager)
    # dfa's backward reads the output error, which exists only once the backward has begun:
    # torch.compile cannot trace it ahead, and breaks the graph at each dfa layer instead
    direct = biograd.get_rule(rule).direct
    compiled = torch.compile(twin, backend="aot_eager", fullgraph=not direct)
    optimisers = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (eager, twin)]
    strict = dynamo.config.patch(error_on_recompile=True)  # any recompiling fails the test
    with contextlib.ExitStack() as stack:
        for step in range(6):
            if step == int(direct):  # dfa: each piece compiles once, at the first step
                stack.enter_context(strict)
            x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 3, (4,))
            for run in (eager, compiled):
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
