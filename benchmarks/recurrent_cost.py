"""The cost of the loop over time: forward + backward of nn.LSTM against biograd's, per rule.

torch runs an LSTM's steps in C++ (on CPU, oneDNN's fused kernel; with oneDNN off, aten's
reference loop, whose ops biograd's layer repeats); biograd's layer runs them in Python, one
feedback product per step, so that each step's error goes back through B_hh. On bp (and
dfa_blocks) it runs torch's own forward, fused kernel included.

Interleaved rounds (every variant once per round, order rotated each round), each the CPU time
of `--calls` forward + backward passes of one batch; the table gives the median ms per pass
and the median of the per-round ratios to nn.LSTM's default path.

    python benchmarks/recurrent_cost.py --threads 1
"""

from __future__ import annotations

import argparse
import copy
import shlex
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import biograd
from biograd._machine import cpu_name

DEFAULT = "nn.LSTM"
REFERENCE = "nn.LSTM, oneDNN off"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rules", nargs="+", default=["bp", "fa", "ss", "kp"])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=28, help="T, the sequence length")
    p.add_argument("--input", type=int, default=28)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--calls", type=int, default=5, help="passes per variant per round")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=None)
    return p


def main(args: argparse.Namespace) -> dict[str, tuple[float, float]]:
    """Prints the table; returns {variant: (median ms per pass, median ratio to nn.LSTM)}."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = nn.LSTM(args.input, args.hidden, args.layers, batch_first=True)
    variants = {DEFAULT: (base, nullcontext), REFERENCE: (
        base, lambda: torch.backends.mkldnn.flags(enabled=False))}
    for rule in args.rules:
        layer = biograd.convert(copy.deepcopy(base), rule, seed=0)
        if biograd.get_rule(rule).reads_output:  # dfa, drtp: ŷ is the output sequence
            biograd.error_source(layer, output=0)
        variants[f"biograd {rule}"] = (layer, nullcontext)
    x = torch.randn(args.batch, args.steps, args.input)
    grad = torch.randn(args.batch, args.steps, args.hidden)
    targets = torch.zeros(args.batch, args.steps * args.hidden)  # drtp's

    def timed(name: str) -> float:
        module, context = variants[name]
        start = time.process_time()
        with context():
            for _ in range(args.calls):
                biograd.targets(module, targets)  # a no-op but on drtp
                out, _ = module(x)
                out.backward(grad)
                module.zero_grad(set_to_none=True)
        return (time.process_time() - start) / args.calls * 1e3

    names = list(variants)
    for name in names:  # warm-up
        timed(name)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            times[name].append(timed(name))
    result = {}
    for name in names:
        ratios = [t / d for t, d in zip(times[name], times[DEFAULT], strict=True)]
        result[name] = (statistics.median(times[name]), statistics.median(ratios))
    print(f"# {shlex.join(sys.argv)}\n# torch {torch.__version__}, {cpu_name()}, "
          f"{torch.get_num_threads()} thread(s); LSTM {args.input}→{args.hidden} x "
          f"{args.layers}, batch {args.batch}, {args.steps} steps\n")
    print("| variant | ms per forward + backward | × nn.LSTM |\n| --- | ---: | ---: |")
    for name, (ms, ratio) in result.items():
        print(f"| {name} | {ms:.2f} | {ratio:.2f} |")
    return result


if __name__ == "__main__":
    main(get_args_parser().parse_args())
