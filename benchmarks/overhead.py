"""Where each rule's extra step time goes, measured part by part on ResNet-18.

A whole training step is too noisy on a shared machine to resolve a few percent; the parts a
rule adds are small, fixed and can be timed many times over:

  make: forming every layer's B as the backward does (`rule.bind(layer).of(W)`), per step.
  after_step: `biograd.after_step(model)` (wm's mirror pass, sign_fixed's clamp).
  optimiser: the SGD step (momentum 0.9, wd 1e-4) over the model's parameters, above native's
      (kp's B is a parameter the optimiser updates too).
  grad copy: kp's B receives W's gradient; autograd copies it (one clone per layer).
  python: the autograd Function's own cost per layer (forward + backward of a tiny 4-channel
      3x3 convolution, above torch's own), times the model's number of converted layers.

Each part's time is a median of interleaved repeats, in CPU time of this process
(--threads 1 recommended), and is set against a native training step at --size to give the
ratio the part alone would add.

    python benchmarks/overhead.py --size 64 --batch 32 --threads 1
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from step_time import NATIVE, Variant, batch, machine

import biograd


def cpu_ms(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        c0 = time.process_time()
        fn()
        out.append((time.process_time() - c0) * 1e3)
    return out


def make_all(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for _, layer in biograd.feedback_layers(model):
            layer.learning_rule.bind_current(layer).of(layer.weight)


def grad_copy(model: torch.nn.Module) -> None:
    for _, layer in biograd.feedback_layers(model):
        if getattr(layer.learning_rule, "name", "") == "kp":
            layer.weight.grad.clone()


def tiny_convs(rule: str, n: int) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Conv2d(4, 4, 3, padding=1) for _ in range(n)])
    if rule != NATIVE:
        biograd.convert(model, rule)
    return model, torch.randn(1, 4, 4, 4, requires_grad=True)


def main(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    # dfa and drtp form no B (their backward projects the output error or the targets), and
    # dfa_blocks' layers run torch's op (its cost is at its blocks): step_time.py times them
    rules = args.rules or [r for r in biograd.list_rules()
                           if not biograd.get_rule(r).reads_output]
    direct = [r for r in rules if r != NATIVE and biograd.get_rule(r).reads_output]
    if direct:
        raise SystemExit(f"overhead.py: {', '.join(direct)} forms no B to time; "
                         f"benchmarks/step_time.py times its whole step")
    device = torch.device("cpu")
    variants = {r: Variant(r, device) for r in [NATIVE, *rules]}
    x, y = batch(args.size, args.batch, device)
    for v in variants.values():  # gradients and momentum buffers exist from here on
        v.step(x, y)
    native = variants[NATIVE]

    def native_step() -> None:
        native.step(x, y)

    parts = {
        "make": lambda v: lambda: make_all(v.model),
        "after_step": lambda v: lambda: biograd.after_step(v.model),
        "optimiser": lambda v: v.opt.step,
        "grad copy": lambda v: lambda: grad_copy(v.model),
    }
    n_layers = len(list(biograd.feedback_layers(variants[rules[0]].model)))
    tiny = {r: tiny_convs(r, n_layers) for r in variants}

    def python(v: Variant):
        model, t = tiny[v.rule]
        return lambda: [model(t).sum().backward() for _ in range(10)]

    parts["python"] = python
    times: dict[tuple[str, str], list[float]] = {}
    steps: list[float] = []
    for _ in range(args.repeats):
        steps += cpu_ms(native_step, 1)
        for name, part in parts.items():
            for r, v in variants.items():
                times.setdefault((r, name), []).extend(cpu_ms(part(v), 3))
        print(".", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    step = statistics.median(steps)
    base = {name: statistics.median(times[(NATIVE, name)]) for name in parts}

    head = ["rule", *[f"{p} ms" for p in parts], "sum ms", "predicted ratio"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rules:
        extra = {p: statistics.median(times[(r, p)])
                 - (base[p] if p in ("optimiser", "python") else 0) for p in parts}
        extra["python"] /= 10
        total = sum(extra.values())
        lines.append("| " + " | ".join([r, *[f"{extra[p]:.1f}" for p in parts],
                                        f"{total:.1f}", f"{1 + total / step:.3f}"]) + " |")
    info = machine()
    lines += ["", f"native step ({args.batch}×{args.size}², CPU time): {step:.0f} ms; "
              f"native SGD step: {base['optimiser']:.1f} ms (optimiser column: above that)",
              "machine: " + ", ".join(f"{k} {v}" for k, v in info.items()),
              "command: `python " + shlex.join(sys.argv) + "`"]
    print("\n".join(lines))


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--rules", nargs="+", default=None)
    p.add_argument("--threads", type=int, default=None)
    return p


if __name__ == "__main__":
    main(get_args_parser().parse_args())
