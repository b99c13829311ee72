"""The host cost of one converted layer: forward + backward of a tiny layer, per rule.

A layer so small that its kernels take a few microseconds shows what each rule adds in Python
and autograd machinery over torch's own layer, the cost that dominates short GPU steps
(ResNet-18 at bf16, batch 128, on an H100: 13 ms for 62 layers' forward and backward).

Interleaved rounds (native, a minimal autograd.Function, then every rule, order rotated each
round), each the CPU time of `--calls` forward + backward calls; the table gives the median µs
per call and the median of the per-round differences to native. The minimal Function (torch's
op forward, one backward call with W) is the floor of any rule written as a Function.

    python benchmarks/layer_cost.py --threads 1
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import biograd
from biograd._machine import cpu_name

NATIVE = "native"

LAYERS = {
    "Conv2d 4→4, 3×3, 1×4×4 input": (lambda: nn.Conv2d(4, 4, 3, padding=1), (1, 4, 4, 4)),
    "Linear 8→8, 2×8 input": (lambda: nn.Linear(8, 8), (2, 8)),
}


MINIMAL = "minimal Function"

_convolution_backward = torch.ops.aten.convolution_backward.default


class _Minimal(torch.autograd.Function):
    """The least an autograd.Function can do for a layer: torch's op forward, one backward
    call with W (what every rule's Function builds on)."""

    @staticmethod
    def forward(ctx, x, weight, bias, conv):
        ctx.save_for_backward(x, weight)
        ctx.conv = conv
        if conv is None:
            return torch.nn.functional.linear(x, weight, bias)
        return torch.convolution(x, weight, bias, *conv, False, [0, 0], 1)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        if ctx.conv is None:
            return grad @ weight, grad.T @ x, grad.sum(0), None
        gx, gw, gb = _convolution_backward(grad, x, weight, [grad.shape[1]], *ctx.conv,
                                           False, [0, 0], 1, [True, True, True])
        return gx, gw, gb, None


class Minimal(nn.Module):
    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        is_conv = isinstance(module, nn.Conv2d)
        self.conv = (module.stride, module.padding, module.dilation) if is_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Minimal.apply(x, self.module.weight, self.module.bias, self.conv)


def layer(factory, rule: str) -> nn.Module:
    torch.manual_seed(0)
    module = factory()
    if rule == MINIMAL:
        return Minimal(module)
    return module if rule == NATIVE else biograd.convert(module, rule, seed=0)


def timed(module: nn.Module, x: torch.Tensor, calls: int) -> float:
    """CPU µs per forward + backward call (a layer on drtp given targets of its output's
    shape before each, as a training loop gives them)."""
    with torch.no_grad():
        targets = torch.rand_like(module(x))
    start = time.process_time()
    for _ in range(calls):
        biograd.targets(module, targets)
        module(x).sum().backward()
    return (time.process_time() - start) / calls * 1e6


def measure(factory, shape, rules: list[str], rounds: int, calls: int) -> dict[str, list]:
    modules = {r: layer(factory, r) for r in [NATIVE, *rules]}
    x = torch.randn(shape, requires_grad=True)
    for m in modules.values():  # warm up: first calls allocate
        timed(m, x, 20)
    times: dict[str, list[float]] = {r: [] for r in modules}
    order = list(modules)
    for i in range(rounds):
        k = i % len(order)
        for r in order[k:] + order[:k]:
            times[r].append(timed(modules[r], x, calls))
    return times


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    rules = [MINIMAL, *(args.rules or biograd.list_rules())]
    lines = []
    for name, (factory, shape) in LAYERS.items():
        times = measure(factory, shape, rules, args.rounds, args.calls)
        native = statistics.median(times[NATIVE])
        lines += [f"{name}: native {native:.1f} µs per forward + backward", "",
                  "| rule | µs per call | over native (µs) |", "| --- | ---: | ---: |"]
        for r in rules:
            over = statistics.median(a - b for a, b in zip(times[r], times[NATIVE],
                                                          strict=True))
            lines.append(f"| {r} | {statistics.median(times[r]):.1f} | {over:+.1f} |")
        lines.append("")
    lines += [f"machine: {cpu_name()}, torch {torch.__version__}, threads {args.threads}; "
              f"{args.rounds} rounds × {args.calls} calls",
              "command: `python " + shlex.join(sys.argv) + "`"]
    print("\n".join(lines))


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rules", nargs="+", default=None)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--calls", type=int, default=300)
    p.add_argument("--threads", type=int, default=1)
    return p


if __name__ == "__main__":
    main(get_args_parser().parse_args())
