"""Training-step time of the zoo's lstm per rule, against the same model on torch's nn.LSTM.

step_time.py's protocol (its `time_interleaved`: native, two variants, native, ...; the order
rotated every round; each ratio over the mean of the native steps around it, median over the
rounds, wall and CPU time). Native is the lstm model unconverted: torch's nn.LSTM, whose CPU
forward and backward are oneDNN's fused kernel. Beside the rules, "native, oneDNN off": the same
model with oneDNN off (`torch.backends.mkldnn.flags(enabled=False)`), torch's own loop over the
steps in C++ (aten's RNN.cpp), whose ops biograd's layer repeats in Python. Every layer on the
rule, the readout included, as step_time.py converts; dfa_blocks with its default blocks (the
model's encoder: backprop through time inside, so its LSTM runs torch's fused forward, as bp's
does).

One step: zero_grad, forward, cross-entropy, backward, SGD (momentum 0.9, weight decay 1e-4)
step, `biograd.after_step`. Inputs: batch × 1 × size² images read row by row (Fashion-MNIST's
shape at 28: 28 steps of 28 pixels).

    python benchmarks/sequence_cost.py --batch 128 --size 28 --hidden 128 --repeats 15 --threads 1

About 2 minutes on 2 shared cores.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled
import step_time  # the interleaved protocol
from spiking_cost import summarise, table  # its tables and summaries, the same protocol's

import biograd
from biograd.models import build_model

NATIVE = step_time.NATIVE
UNFUSED = "native, oneDNN off"
CLASSES = 10


@contextmanager
def onednn_off():
    """torch's RNN loop in C++ in place of oneDNN's kernel (without the flag's TF32 warning,
    which is about Intel GPUs)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="TF32 acceleration on top of oneDNN")
        with torch.backends.mkldnn.flags(enabled=False):
            yield


class Variant:
    """The lstm model on a rule (or native, with oneDNN on or off), its optimiser and one
    training step: what step_time.time_interleaved runs (`rule` names it in the tables)."""

    def __init__(self, label: str, rule: str, hidden: int, size: int, onednn: bool = True):
        self.rule, self.device = label, torch.device("cpu")
        torch.manual_seed(0)
        self.model = build_model("lstm", num_classes=CLASSES, in_channels=1, image_size=size,
                                 hidden=hidden)
        if rule != NATIVE:
            biograd.convert(self.model, rule, seed=0)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9,
                                   weight_decay=1e-4)
        self.context = nullcontext if onednn else onednn_off

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        with self.context():
            self.opt.zero_grad(set_to_none=True)
            biograd.targets(self.model, y)  # drtp's; a no-op for every other rule
            F.cross_entropy(self.model(x), y).backward()
            self.opt.step()
            biograd.after_step(self.model)


def get_args_parser() -> argparse.ArgumentParser:
    at_least = step_time.at_least
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=at_least(1), default=128)
    p.add_argument("--size", type=at_least(1), default=28,
                   help="image side: the number of steps and the inputs per step (default 28)")
    p.add_argument("--hidden", type=at_least(1), default=128)
    return step_time.timing_args(p, repeats=15)


def main(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(args.size)
    x = torch.randn(args.batch, 1, args.size, args.size, generator=g)
    y = torch.randint(0, CLASSES, (args.batch,), generator=g)
    result: dict = {"machine": step_time.machine(), "command": "python " + shlex.join(sys.argv),
                    "batch": args.batch, "size": args.size, "hidden": args.hidden}
    shape = dict(hidden=args.hidden, size=args.size)
    native = Variant(NATIVE, NATIVE, **shape)
    others = [Variant(UNFUSED, NATIVE, onednn=False, **shape)]
    others += [Variant(r, r, **shape) for r in args.rules or biograd.list_rules()]
    result["rules"] = summarise(*step_time.time_interleaved(
        native, others, x, y, args.warmup, args.repeats, group=2))
    print(table(f"rule (lstm {args.hidden}, {args.size} steps of {args.size}, batch "
                f"{args.batch})", result["rules"], "native (nn.LSTM, oneDNN's fused kernel)"))
    info = result["machine"]
    print("\nmachine: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    print(f"command: `{result['command']}`")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main(get_args_parser().parse_args())
