"""Where a training step's time goes, per rule: forward, backward, optimiser step, after_step.

step_time.py gives a rule's whole step over native's; this splits the same step (zero_grad
and forward with the loss, backward, SGD step, `biograd.after_step`) into its four parts and
gives each rule's CPU µs per part beside native's, so that a rule's extra can be put down to
the part that pays it. Interleaved rounds (native, then every rule, the order rotated each
round), one step per variant per round, warm-up rounds dropped; the median over the rounds of
each part. One process holds every model: on a short step the native model, run as often as
any other, is no warmer in the caches than a rule's; compare parts, not the whole step, with
step_time.py --each.

    python benchmarks/step_parts.py --threads 1 --json benchmarks/results_step_parts.json
    python benchmarks/step_parts.py --rules fa kp --fused
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import step_time  # (this folder's)

import biograd

PARTS = ("forward", "backward", "optimiser", "after_step")


def parts_of(v: step_time.Variant, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """CPU seconds of each of one step's PARTS (the step of step_time.Variant, split)."""
    clock = time.process_time
    t0 = clock()
    loss = v.loss(x, y)
    t1 = clock()
    loss.backward()
    t2 = clock()
    v.opt.step()
    t3 = clock()
    biograd.after_step(v.model)
    t4 = clock()
    return [t1 - t0, t2 - t1, t3 - t2, t4 - t3]


def measure(args: argparse.Namespace) -> dict:
    rules = args.rules or [r for r in biograd.list_rules() if r != "bp"]
    device = torch.device("cpu")
    variants = [step_time.Variant(r, device, model=args.model, classes=args.classes,
                                  size=args.size, fused=args.fused)
                for r in [step_time.NATIVE, *rules]]
    x, y = step_time.batch(args.size, args.batch, device, classes=args.classes)
    times = {v.rule: [[] for _ in PARTS] for v in variants}
    for r in range(args.warmup + args.repeats):
        k = r % len(variants)
        for v in variants[k:] + variants[:k]:
            got = parts_of(v, x, y)
            if r >= args.warmup:
                for series, t in zip(times[v.rule], got, strict=True):
                    series.append(t)
        print(f"  round {r + 1}/{args.warmup + args.repeats}", end="\r", file=sys.stderr)
    print(file=sys.stderr)
    return {rule: {part: statistics.median(series) * 1e6
                   for part, series in zip(PARTS, parts, strict=True)}
            for rule, parts in times.items()}


def table(result: dict) -> str:
    """Each rule's median µs per part, and its extra over native's in brackets."""
    us = result["us"]
    native = us[step_time.NATIVE]
    head = ["rule", *(f"{p} µs" for p in PARTS), "step µs"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for rule, parts in us.items():
        cells = [rule]
        for p in (*PARTS, None):
            got = sum(parts.values()) if p is None else parts[p]
            base = sum(native.values()) if p is None else native[p]
            cells.append(f"{got:.0f}" if rule == step_time.NATIVE else
                         f"{got:.0f} ({got - base:+.0f})")
        lines.append("| " + " | ".join(cells) + " |")
    info = result["machine"]
    lines += ["", "machine: " + ", ".join(f"{k} {v}" for k, v in info.items()),
              f"command: `{result['command']}`",
              f"model: {result['model']}, batch {result['batch']} at {result['size']}², "
              f"{result['classes']} classes; {result['optimizer']}; CPU µs, the median of "
              f"{result['repeats']} interleaved rounds (in brackets: the extra over native)"]
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet18-narrow", choices=step_time.MODELS[:2],
                   help="resnet18-narrow (default: a step bound by the layers' host cost) or "
                        "resnet18")
    p.add_argument("--size", type=step_time.at_least(8), default=16, help="input height = width")
    p.add_argument("--batch", type=step_time.at_least(1), default=2)
    p.add_argument("--classes", type=step_time.at_least(2), default=1000)
    p.add_argument("--fused", action="store_true", help="SGD(fused=True) for every variant")
    return step_time.timing_args(p, repeats=101)


def main(argv: list[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    command = "python benchmarks/step_parts.py " + shlex.join(
        sys.argv[1:] if argv is None else argv)
    result = {"machine": step_time.machine(), "command": command.strip(), "model": args.model,
              "size": args.size, "batch": args.batch, "classes": args.classes,
              "optimizer": "SGD fused" if args.fused else "SGD foreach",
              "repeats": args.repeats, "parts": list(PARTS), "us": measure(args)}
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
