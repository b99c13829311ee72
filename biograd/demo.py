"""The quick demo: every rule on the bundled digits, side by side, in well under a minute.

Each rule gets the same model initialisation, data order and recipe; the last layer stays on
backprop, as in the seed. Prints test accuracy and the mean angle between W and the feedback B
the backward used, per rule.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import biograd
from biograd.data import digits
from biograd.models import small_cnn


@dataclass
class DemoResult:
    rule: str
    accuracy: float  # test top-1, %
    angle: float  # mean weight angle over the layers not on bp, degrees
    seconds: float


def evaluate(model: torch.nn.Module, loader: DataLoader) -> float:
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            correct += (model(x).argmax(1) == y).sum().item()
            total += len(y)
    return 100.0 * correct / total


def train_rule(rule: str, epochs: int = 8, seed: int = 0, lr: float = 0.05) -> DemoResult:
    """Train small_cnn on digits with `rule` (last layer on bp); returns its result."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    model = biograd.convert(small_cnn(width=16), rule, last="bp", seed=seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(seed)
    train = DataLoader(digits(train=True), batch_size=32, shuffle=True, generator=generator)
    test = DataLoader(digits(train=False), batch_size=256)
    for _ in range(epochs):
        model.train()
        for x, y in train:
            F.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            biograd.after_step(model)
    # the mean over the layers on `rule` (all but the last, which stays on bp)
    angles = [a for name, a in biograd.weight_angles(model).items()
              if model.get_submodule(name).rule == rule]
    mean_angle = sum(angles) / len(angles) if angles else math.nan
    return DemoResult(rule, evaluate(model, test), mean_angle, time.perf_counter() - start)


def format_table(results: list[DemoResult]) -> str:
    lines = ["| rule | test accuracy % | mean weight angle ° | seconds |",
             "| --- | ---: | ---: | ---: |"]
    lines += [f"| {r.rule} | {r.accuracy:.1f} | {r.angle:.1f} | {r.seconds:.1f} |"
              for r in results]
    return "\n".join(lines)
