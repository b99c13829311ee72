"""Training-step time of spiking_cnn per rule, and the share of its time steps.

Two interleaved measurements with step_time.py's protocol (its `time_interleaved`: native,
two variants, native, ...; the order rotated every round; each ratio over the mean of the
native steps around it, median over the rounds, wall and CPU time):

  rules: spiking_cnn (--steps T) on each rule, against the same model unconverted (spikingjelly's
      layers on plain autograd). Every layer on the rule, the classifier included, as
      step_time.py converts; dfa_blocks with its blocks named (features.unit*: each
      conv-BatchNorm-LIF unit a block), as it finds none by itself.
  time steps: the unconverted spiking_cnn at T = 1, 2, 4, 8 and small_cnn, the same network
      without spikes (ReLU for LIF, one pass), against spiking_cnn at T = 1: how the step
      grows with T, and what one time step costs against the network without spikes.

One step: zero_grad, forward, cross-entropy, backward, SGD (momentum 0.9, weight decay 1e-4)
step, `biograd.after_step`. Inputs: batch × 1 × size² (Fashion-MNIST's shape at 28).

    python benchmarks/spiking_cost.py --batch 64 --size 28 --steps 4 --repeats 9 --threads 1

About 6 minutes on 2 shared cores. Needs biograd[spiking].
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled
import step_time  # the interleaved protocol

import biograd
from biograd.models import build_model

NATIVE = step_time.NATIVE
CLASSES = 10


class Variant:
    """spiking_cnn (or small_cnn) on a rule, with its optimiser and one training step: what
    step_time.time_interleaved runs (`rule` names it in the tables)."""

    def __init__(self, label: str, rule: str, model: str = "spiking_cnn",
                 options: dict | None = None, size: int = 28):
        self.rule, self.device = label, torch.device("cpu")
        torch.manual_seed(0)
        self.model = build_model(model, num_classes=CLASSES, in_channels=1, image_size=size,
                                 **(options or {}))
        if rule != NATIVE:
            every = biograd.rules.rule_class(rule).every_model
            biograd.convert(self.model, biograd.get_rule(
                rule, **({} if every else {"blocks": "features.unit*"})), seed=0)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9,
                                   weight_decay=1e-4)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        biograd.targets(self.model, y)  # drtp's; a no-op for every other rule
        F.cross_entropy(self.model(x), y).backward()
        self.opt.step()
        biograd.after_step(self.model)


def summarise(times: step_time.Times, ratios: step_time.Times) -> dict:
    """{variant: {clock: {median_s, ratio, ratio_q1, ratio_q3}}}, as step_time.py's."""
    out: dict = {}
    for clock in step_time.CLOCKS:
        for name, t in times[clock].items():
            q1, q2, q3 = step_time.quartiles(ratios[clock][name]) if name != NATIVE else (1, 1, 1)
            out.setdefault(name, {})[clock] = {"median_s": statistics.median(t), "ratio": q2,
                                               "ratio_q1": q1, "ratio_q3": q3}
    return out


def table(title: str, summary: dict, native: str) -> str:
    lines = [f"| {title} | wall: ratio (IQR) | CPU time: ratio (IQR) | CPU ms |",
             "| --- | --- | --- | --- |"]
    for name, clocks in summary.items():
        cells = [native if name == NATIVE else name]
        for clock in step_time.CLOCKS:
            r = clocks[clock]
            cells.append("1" if name == NATIVE else
                         f"**{r['ratio']:.3f}** ({r['ratio_q1']:.3f}–{r['ratio_q3']:.3f})")
        cells.append(f"{clocks['cpu']['median_s'] * 1e3:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    at_least = step_time.at_least
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=at_least(1), default=64)
    p.add_argument("--size", type=at_least(2), default=28, help="image side (default 28)")
    p.add_argument("--steps", type=at_least(1), default=4, help="T of the rules' model")
    p.add_argument("--width", type=at_least(1), default=32)
    return step_time.timing_args(p, repeats=9)


def main(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(args.size)
    x = torch.randn(args.batch, 1, args.size, args.size, generator=g)
    y = torch.randint(0, CLASSES, (args.batch,), generator=g)
    options = {"width": args.width, "steps": args.steps}
    result: dict = {"machine": step_time.machine(), "command": "python " + shlex.join(sys.argv),
                    "batch": args.batch, "size": args.size, "width": args.width,
                    "steps": args.steps}

    print(f"rules, spiking_cnn T={args.steps}", file=sys.stderr)
    native = Variant(NATIVE, NATIVE, options=options, size=args.size)
    rules = [Variant(r, r, options=options, size=args.size)
             for r in args.rules or biograd.list_rules()]
    result["rules"] = summarise(*step_time.time_interleaved(
        native, rules, x, y, args.warmup, args.repeats, group=2))

    print("time steps, unconverted", file=sys.stderr)
    one = Variant(NATIVE, NATIVE, options={**options, "steps": 1}, size=args.size)
    others = [Variant(f"T={t}", NATIVE, options={**options, "steps": t}, size=args.size)
              for t in (2, 4, 8)]
    others.append(Variant("small_cnn", NATIVE, model="small_cnn",
                          options={"width": args.width}, size=args.size))
    result["time_steps"] = summarise(*step_time.time_interleaved(
        one, others, x, y, args.warmup, args.repeats, group=1))

    print(table(f"rule (T={args.steps})", result["rules"], "native spiking_cnn"))
    print()
    print(table("variant", result["time_steps"], "spiking_cnn T=1"))
    info = result["machine"]
    print("\nmachine: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    print(f"command: `{result['command']}`")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main(get_args_parser().parse_args())
