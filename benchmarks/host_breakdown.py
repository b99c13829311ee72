"""Where a converted layer's host time goes, per rule: the parts of one forward + backward of
a tiny layer (layer_cost.py's Linear and Conv2d) that are the rule's, each timed alone.

Every layer runs here as biograd's autograd Function (within `biograd.double_backward()`):
the path of every Linear, of learned and direct rules, and of any layer under autocast or
torch.compile. A convolution on fa, ss, frsf, brsf, sign_fixed or wm runs torch's own op by
default instead (layer_cost.py times that).

Timed, median CPU µs per call, for each rule and layer:
  layer     the layer's forward + backward (its model's, for dfa: the layer is its model)
  function  the same through biograd's autograd Function, called by a bare module (as the
            minimal Function is) with the Feedback a forward bound: no bind, no hooks
  bind      the rule's `bind(layer)`, which every forward runs: what the backward will use
  make      the bound `Feedback.of(W)`, which the backward runs: B itself (ss: s·sign(W))
  direct    dfa: the bound `direct(x's shape)`, which the backward runs in place of make and
            the product with B: δx = B e and the checks around it
  project   dfa: `dfa.project` alone, the window of the table and B e
  hooks     dfa: a forward + backward of the layer with its model's output hooks, less one
            of the same layer without them (the pass they start, e's tensor hook)
and native, the minimal autograd.Function (layer_cost.py's) and their difference, the floor.

From these, the parts of the layer's extra over native (they add up to it):
  floor     minimal Function - native: what any autograd.Function costs
  Function  function - minimal - make (or direct): biograd's Function beyond the minimal one
            (the autocast check, the Feedback read, needs_input_grad, a learned B's input)
  bind, make (direct for dfa), hooks
  module    layer - function - bind - hooks: the layer's own forward beyond the bare
            module's (its rule and attribute look-ups, padding, the call into the Function)
Interleaved rounds, the order rotated each round, one warm-up round dropped.

    python benchmarks/host_breakdown.py --threads 1 --json benchmarks/results_host_breakdown.json
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
from biograd.nn.functional import feedback_conv, feedback_linear
from biograd.rules import dfa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from layer_cost import LAYERS, MINIMAL, NATIVE, layer

#: the rules issue 23 names, the default
RULES = ("fa", "ss", "frsf", "brsf", "sign_fixed", "kp", "wm", "dfa")
#: the parts of a layer's extra over native, in the table's order
PARTS = ("floor", "Function", "bind", "make", "direct", "hooks", "module")


class Bound(nn.Module):
    """A module whose forward calls biograd's Function with one Feedback, bound once: the
    minimal Function's module (layer_cost.Minimal) with biograd's Function in its place."""

    def __init__(self, lay: nn.Module, feedback) -> None:
        super().__init__()
        self.lay, self.feedback = lay, feedback
        self.conv = isinstance(lay, nn.Conv2d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lay = self.lay
        if self.conv:
            return feedback_conv(x, lay.weight, lay.bias, self.feedback, lay.stride,
                                 lay.padding, lay.dilation, lay.groups)
        return feedback_linear(x, lay.weight, lay.bias, self.feedback)


def parts(factory, shape, rule: str) -> dict[str, object]:
    """{part: a function of no arguments that runs it once, or a pair (with, without) whose
    difference is the part} for `rule`'s layer."""
    lay = layer(factory, rule)
    x = torch.randn(shape, requires_grad=True)

    def step(m=lay) -> None:  # as layer_cost.py's (it gives drtp its targets: none here)
        m(x).sum().backward()

    out: dict[str, object] = {"layer": step}
    if rule in (NATIVE, MINIMAL):
        return out
    step()  # a pass for dfa's error, brsf's window, ss's s
    w = lay.weight
    rule_obj = lay.learning_rule
    bound = rule_obj.bind(lay)
    bare_function = Bound(lay, bound)
    out["function"] = lambda: step(bare_function)
    out["bind"] = lambda: rule_obj.bind(lay)
    if not rule_obj.direct:  # of W without grad, as the backward makes B
        w_now = w.detach()
        out["make"] = lambda: bound.of(w_now)
    if rule_obj.direct:
        source = lay.__dict__["error_source"]
        e = source.current.error
        out["direct"] = lambda: bound.direct(x.shape)
        out["project"] = lambda: dfa.project(source, lay.feedback_seed, e, x.shape)
        bare = layer(factory, rule)
        dfa.release(bare)  # its own model's hooks
        bare.__dict__["error_source"] = source  # the layer's own, with no model hooks
        out["hooks"] = (step, lambda: step(bare))  # bare reads the hooked layer's last error
    return out


def timed(fn, calls: int) -> float:
    start = time.process_time()
    for _ in range(calls):
        fn()
    return (time.process_time() - start) / calls * 1e6


def measure(rules: list[str], rounds: int, calls: int) -> dict[str, dict[str, dict]]:
    """{layer name: {rule: {part: [µs, one per round]}}}, every job of both layers
    interleaved."""
    jobs = {(name, r, part): fn for name, (factory, shape) in LAYERS.items()
            for r in [NATIVE, MINIMAL, *rules] for part, fn in parts(factory, shape, r).items()}
    times: dict[tuple, list[float]] = {k: [] for k in jobs}
    keys = list(jobs)
    for i in range(rounds + 1):
        k = (7 * i) % len(keys)
        for key in keys[k:] + keys[:k]:
            fn = jobs[key]
            t = timed(fn[0], calls) - timed(fn[1], calls) if isinstance(fn, tuple) \
                else timed(fn, calls)
            if i:
                times[key].append(t)
        print(f"  round {i + 1}/{rounds + 1}", end="\r", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    out: dict[str, dict[str, dict]] = {}
    for (name, r, part), ts in times.items():
        out.setdefault(name, {}).setdefault(r, {})[part] = ts
    return out


def split(times: dict[str, dict]) -> dict[str, dict[str, float | None]]:
    """{rule: {part: µs}}: each rule's extra over native in PARTS, each the median over rounds
    of that round's part (so they add up to "extra" only within the rounds' spread), and
    "ratio", the median of the rounds' extra over the minimal Function's."""
    native, minimal = times[NATIVE]["layer"], times[MINIMAL]["layer"]
    out = {}
    for r, m in times.items():
        if r in (NATIVE, MINIMAL):
            continue
        rows = []
        for i in range(len(native)):
            one = {p: m[p][i] for p in m}
            inner = one.get("make", 0.0) + one.get("direct", 0.0)
            hooks = one.get("hooks", 0.0)
            rows.append({"extra": one["layer"] - native[i], "floor": minimal[i] - native[i],
                         "ratio": (one["layer"] - native[i]) / (minimal[i] - native[i]),
                         "Function": one["function"] - minimal[i] - inner,
                         "bind": one["bind"], "make": one.get("make"),
                         "direct": one.get("direct"), "hooks": one.get("hooks"),
                         "module": one["layer"] - one["function"] - one["bind"] - hooks,
                         "project": one.get("project")})
        out[r] = {p: None if rows[0][p] is None else statistics.median(row[p] for row in rows)
                  for p in rows[0]}
    return out


def table(record: dict) -> str:
    lines = []
    for name, med in record["median_us"].items():
        native, minimal = med[NATIVE]["layer"], med[MINIMAL]["layer"]
        lines += [f"{name}: native {native:.1f} µs, minimal Function {minimal:.1f} µs per "
                  f"forward + backward", "",
                  "| rule | extra over native | floor | Function | bind | make | direct "
                  "(project) | hooks | module |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r, p in record["parts_us"][name].items():
            cell = {k: "—" if p[k] is None else f"{p[k]:.1f}" for k in p}
            if p["direct"] is not None:
                cell["direct"] += f" ({p['project']:.1f})"
            lines.append(f"| {r} | {p['extra']:.1f} ({p['ratio']:.2f}) | "
                         + " | ".join(cell[k] for k in PARTS) + " |")
        lines.append("")
    lines.append(f"machine: {record['machine']}; {record['rounds']} rounds × "
                 f"{record['calls']} calls; command: `{record['command']}`")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rules", nargs="+", default=list(RULES))
    p.add_argument("--rounds", type=int, default=11)
    p.add_argument("--calls", type=int, default=500)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None, help="write the record here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    with biograd.double_backward():  # every layer as a Function: what this breaks down
        times = measure(args.rules, args.rounds, args.calls)
    med = {name: {r: {p: statistics.median(ts) for p, ts in m.items()} for r, m in t.items()}
           for name, t in times.items()}
    record = {"machine": f"{cpu_name()}, torch {torch.__version__}, threads {args.threads}",
              "command": shlex.join(["python", "benchmarks/host_breakdown.py",
                                     *(sys.argv[1:] if argv is None else argv)]),
              "rounds": args.rounds, "calls": args.calls, "median_us": med,
              "parts_us": {name: split(t) for name, t in times.items()},
              "rounds_us": times}
    print(table(record))
    if args.json:
        args.json.write_text(json.dumps(record, indent=1))
    return record


if __name__ == "__main__":
    main()
