"""The host cost of one converted layer: forward + backward of a tiny layer, per rule.

A layer so small that its kernels take a few microseconds shows what each rule adds in Python
and autograd machinery over torch's own layer, the cost that dominates short GPU steps
(ResNet-18 at bf16, batch 128, on an H100: 13 ms for 62 layers' forward and backward).

Each layer is timed alone (the layer is its model) and in a stack of --depth of them (a
Sequential, no nonlinearity), whose time is reported per layer: what a rule pays once per
model forward (dfa's and drtp's output hooks) counts once per layer alone, once per stack in
a stack. Interleaved rounds (native, a minimal autograd.Function, then every rule, the order
rotated each round), each the CPU time of `--calls` forward + backward calls; the table gives
the median µs per call, the median of the per-round differences to native, and that extra
over the minimal Function's (the median of the rounds' ratios). The minimal Function (torch's
op forward, one backward call with W) is the floor of any rule written as a Function; the
same with a learned B as a fourth input (returned W's gradient) the floor of kp's design.

    python benchmarks/layer_cost.py --threads 1 --json benchmarks/results_layer_cost.json
"""

from __future__ import annotations

import argparse
import json
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
#: the same with a learned B as a fourth input, given W's gradient (kp's design: B a
#: Parameter whose .grad the backward fills, for the optimiser, AMP and DDP to see)
LEARNED = "minimal Function, learned B"

_convolution_backward = torch.ops.aten.convolution_backward.default


class _Minimal(torch.autograd.Function):
    """The least an autograd.Function can do for a layer: torch's op forward, one backward
    call with W (what every rule's Function builds on); given a learned B, W's gradient is
    B's too."""

    @staticmethod
    def forward(ctx, x, weight, bias, learned, conv):
        ctx.save_for_backward(x, weight)
        ctx.conv = conv
        if conv is None:
            return torch.nn.functional.linear(x, weight, bias)
        return torch.convolution(x, weight, bias, *conv, False, [0, 0], 1)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        need_x, _, need_b, need_learned, _ = ctx.needs_input_grad
        if ctx.conv is None:
            gx, gw, gb = grad @ weight, grad.T @ x, grad.sum(0) if need_b else None
        else:
            gx, gw, gb = _convolution_backward(grad, x, weight, [grad.shape[1]] if need_b else
                                               None, *ctx.conv, False, [0, 0], 1,
                                               [need_x, True, need_b])
        return gx, gw, gb, gw if need_learned else None, None


class Minimal(nn.Module):
    def __init__(self, module: nn.Module, learned: bool = False) -> None:
        super().__init__()
        self.module = module
        is_conv = isinstance(module, nn.Conv2d)
        self.conv = (module.stride, module.padding, module.dilation) if is_conv else None
        self.learned = nn.Parameter(module.weight.detach().clone()) if learned else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Minimal.apply(x, self.module.weight, self.module.bias, self.learned, self.conv)


def layer(factory, rule: str, depth: int = 1) -> nn.Module:
    """`factory`'s layer on `rule` (native: torch's; MINIMAL: under the minimal Function), or
    with depth > 1 a Sequential of `depth` of them, converted as one model."""
    torch.manual_seed(0)
    modules = [factory() for _ in range(depth)]
    if rule in (MINIMAL, LEARNED):
        modules = [Minimal(m, learned=rule == LEARNED) for m in modules]
    module = modules[0] if depth == 1 else nn.Sequential(*modules)
    return module if rule in (NATIVE, MINIMAL, LEARNED) else biograd.convert(module, rule, seed=0)


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


def measure(factory, shape, rules: list[str], rounds: int, calls: int,
            depth: int = 1) -> dict[str, list]:
    """{rule: [µs per call, one per round]} for NATIVE, MINIMAL, LEARNED and `rules`."""
    modules = {r: layer(factory, r, depth) for r in [NATIVE, MINIMAL, LEARNED, *rules]}
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


def summary(times: dict[str, list[float]], depth: int) -> dict[str, dict[str, float]]:
    """{rule: {"us": median µs per call, "extra_us": median extra over native per layer,
    "of_minimal" and "of_learned": medians of the rounds' extra over the minimal Function's,
    without and with a learned B}}."""
    native = times[NATIVE]

    def extra(r: str) -> list[float]:
        return [a - b for a, b in zip(times[r], native, strict=True)]

    def of(r: str, floor: str) -> float:
        return statistics.median(e / f for e, f in zip(extra(r), extra(floor), strict=True))

    return {r: {"us": statistics.median(ts), "extra_us": statistics.median(extra(r)) / depth,
                "of_minimal": of(r, MINIMAL), "of_learned": of(r, LEARNED)}
            for r, ts in times.items()}


def table(record: dict) -> str:
    """The markdown tables of a record: per layer, alone and per layer of the stack."""
    depth = record["depth"]
    lines = []
    for name, kinds in record["layers"].items():
        alone, stack = kinds["alone"], kinds["stack"]
        lines += [f"{name}: native {alone[NATIVE]['us']:.1f} µs per forward + backward alone, "
                  f"{stack[NATIVE]['us'] / depth:.1f} per layer in a stack of {depth}", "",
                  f"| rule | alone: µs per call | extra over native (µs) | of the minimal's "
                  f"extra | stack of {depth}: extra per layer (µs) | of the minimal's extra |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for r in alone:
            if r == NATIVE:
                continue
            a, s = alone[r], stack.get(r)
            lines.append(f"| {r} | {a['us']:.1f} | {a['extra_us']:+.1f} | {a['of_minimal']:.2f} "
                         + (f"| {s['extra_us']:+.1f} | {s['of_minimal']:.2f} |" if s else
                            "| — | — |"))
        if "kp" in alone:
            lines += ["", f"kp over the minimal Function with a learned B: "
                          f"{alone['kp']['of_learned']:.2f} alone, "
                          f"{stack['kp']['of_learned']:.2f} in the stack"]
        lines.append("")
    lines += [f"machine: {record['machine']}, torch {record['torch']}, threads "
              f"{record['threads']}; {record['rounds']} rounds × {record['calls']} calls alone, "
              f"{record['stack_calls']} in the stack", f"command: `{record['command']}`"]
    return "\n".join(lines)


def ab_table(record: dict) -> str:
    """The markdown table of an A/B record (`benchmarks/results_layer_cost_ab.json`: runs of
    this script on the code before a change and after it, alternated): per rule, its extra
    over the minimal Function's in every run of each code, in run order, alone and per layer
    of the stack; and native's µs alone, which shows how the machine moved between runs."""
    runs = {code: [r["record"] for r in record["runs"] if r["code"] == code]
            for code in ("before", "after")}
    first = runs["before"][0]["layers"]
    kinds = [(name, kind) for name in first for kind in ("alone", "stack")]
    head = ["rule"] + [f"{name.split()[0]} {kind}: {code}" for name, kind in kinds
                       for code in runs]
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]

    def row(label: str, value) -> str:
        return f"| {label} | " + " | ".join(
            ", ".join(value(rec, rec["layers"][name][kind], kind) for rec in runs[code])
            for name, kind in kinds for code in runs) + " |"

    def native(rec: dict, rows: dict, kind: str) -> str:
        return f"{rows[NATIVE]['us'] / (rec['depth'] if kind == 'stack' else 1):.0f}"

    lines.append(row("native (µs per layer)", native))
    for rule in first[next(iter(first))]["alone"]:
        if rule not in (NATIVE, MINIMAL, LEARNED):
            lines.append(row(rule, lambda rec, rows, kind, rule=rule:
                             f"{rows[rule]['of_minimal']:.2f}"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    rules = args.rules or biograd.list_rules()
    stack_calls = max(1, args.calls // args.depth * 2)
    record = {"depth": args.depth, "rounds": args.rounds, "calls": args.calls,
              "stack_calls": stack_calls, "threads": args.threads, "machine": cpu_name(),
              "torch": torch.__version__,
              "command": "python " + shlex.join(["benchmarks/layer_cost.py", *(
                  sys.argv[1:] if argv is None else argv)]), "layers": {}}
    # (a rule that some models cannot take, dfa_blocks with no block in a Sequential, is
    # timed alone only)
    stacked = [r for r in rules if biograd.get_rule(r).every_model]
    for name, (factory, shape) in LAYERS.items():
        record["layers"][name] = {
            "alone": summary(measure(factory, shape, rules, args.rounds, args.calls), 1),
            "stack": summary(measure(factory, shape, stacked, args.rounds, stack_calls,
                                     args.depth), args.depth)}
    print(table(record))
    if args.json:
        args.json.write_text(json.dumps(record, indent=1) + "\n")
    return record


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rules", nargs="+", default=None, choices=biograd.list_rules())
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--calls", type=int, default=300)
    p.add_argument("--depth", type=int, default=8, help="layers in the stacked variant")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None, help="write the record here")
    return p


if __name__ == "__main__":
    main()
