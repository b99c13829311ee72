"""What the alignment family's regulariser costs, layer by layer: ResNet-18's layers at their
own input sizes, forward + backward, fa against sa, aa and ia.

fa's layer runs the same autograd.Function with a fixed B, so the difference is the
regulariser's gradient alone: sa's is elementwise (2·decay·B − self·W), aa's a forward of the
layer's op with W and with B and one weight gradient, ia's a forward with W, an input gradient
through B and two weight gradients (docs/rules.md). Each distinct layer of a torchvision
resnet18 at --batch × --size² (the shapes its forward sees) is timed alone: interleaved rounds
(every rule once per round, order rotated), one warm-up round dropped, the median CPU time of
a forward + backward per rule; the extra over fa in ms and as a multiple of fa's time.

    python benchmarks/align_cost.py --threads 1
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
import torchvision
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import biograd
from biograd._machine import cpu_name

BASE = "fa"


def resnet_layers(batch: int, size: int) -> list[tuple[str, nn.Module, tuple[int, ...], int]]:
    """(name, layer, input shape, how many layers of resnet18 share the two) per distinct
    (layer, input shape), in network order."""
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=1000)
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = [m.register_forward_pre_hook(lambda m, a, n=n: shapes.__setitem__(n, a[0].shape))
             for n, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        net(torch.zeros(batch, 3, size, size))
    for h in hooks:
        h.remove()
    seen: dict[tuple, list] = {}
    for name, module in net.named_modules():
        if name in shapes:
            key = (repr(module), tuple(shapes[name]))
            if key in seen:
                seen[key][3] += 1
            else:
                seen[key] = [name, module, tuple(shapes[name]), 1]
    return [tuple(v) for v in seen.values()]


def timed(layer: nn.Module, x: torch.Tensor, calls: int) -> float:
    """CPU seconds of one forward + backward, the mean over `calls`."""
    start = time.process_time()
    for _ in range(calls):
        layer.zero_grad(set_to_none=True)
        layer(x).sum().backward()
    return (time.process_time() - start) / calls


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rules", nargs="+", default=["sa", "aa", "ia"])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--calls", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rules = [BASE, *args.rules]
    print(f"# {shlex.join(['python', 'benchmarks/align_cost.py', *(argv or sys.argv[1:])])}")
    print(f"# {cpu_name()}, torch {torch.__version__}, threads {args.threads}, "
          f"{args.rounds} rounds of {args.calls} calls, batch {args.batch} at {args.size}²\n")
    head = " | ".join(f"{r} ms" for r in args.rules)
    print(f"| layer (× in resnet18) | input | {BASE} ms | {head} | "
          + " | ".join(f"{r} extra / {BASE}" for r in args.rules) + " |")
    print("|" + " --- |" * (3 + 2 * len(args.rules)))
    totals = dict.fromkeys(rules, 0.0)
    for name, module, shape, count in resnet_layers(args.batch, args.size):
        # each rule a layer of its own, sharing W with the others (nothing steps it)
        layers = {r: biograd.convert(nn.Sequential(module), r, seed=0)[0] for r in rules}
        x = torch.randn(shape)
        times: dict[str, list[float]] = {r: [] for r in rules}
        for k in range(args.rounds + 1):
            order = rules[k % len(rules):] + rules[:k % len(rules)]
            for r in order:
                t = timed(layers[r], x, args.calls)
                if k:
                    times[r].append(t)
        med = {r: statistics.median(v) * 1e3 for r, v in times.items()}
        for r in rules:
            totals[r] += count * med[r]
        cells = [f"{med[r]:.2f}" for r in args.rules]
        extra = [f"{(med[r] - med[BASE]) / med[BASE]:+.2f}" for r in args.rules]
        print(f"| {name} (×{count}) | {'×'.join(map(str, shape))} | {med[BASE]:.2f} | "
              + " | ".join(cells + extra) + " |")
    cells = [f"{totals[r]:.1f}" for r in args.rules]
    extra = [f"{(totals[r] - totals[BASE]) / totals[BASE]:+.2f}" for r in args.rules]
    print(f"| all layers, weighted by count | | {totals[BASE]:.1f} | "
          + " | ".join(cells + extra) + " |")


if __name__ == "__main__":
    main()
