"""A hand-written training loop with biograd: convert, attach, train, measure.

    python examples/plain_loop.py --rule ss --epochs 3

Trains a small CNN on scikit-learn's bundled digits (8x8, no download) under a learning rule,
the classifier on backprop, then prints the test accuracy and the angle between each layer's
forward weights and the feedback its backward used.
"""

import argparse

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

import biograd


def digits(train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16  # (N, 1, 8, 8)
    y = torch.tensor(bunch.target)
    cut = 1400
    return (x[:cut], y[:cut]) if train else (x[cut:], y[cut:])


def main(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )
    biograd.convert(model, args.rule, last="bp", seed=0)  # the classifier on backprop
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)  # after converting
    biograd.attach(opt, model)  # the rules' between-step work runs in opt.step()

    x, y = digits(train=True)
    for epoch in range(args.epochs):
        order = torch.randperm(len(y))
        for i in range(0, len(y), 32)[: args.steps]:
            batch = order[i : i + 32]
            loss = F.cross_entropy(model(x[batch]), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
        print(f"epoch {epoch + 1}: loss {loss.item():.3f}")

    model.eval()
    xt, yt = digits(train=False)
    with torch.no_grad():
        accuracy = (model(xt).argmax(1) == yt).float().mean().item()
    print(f"test accuracy {100 * accuracy:.1f}%")
    for name, degrees in biograd.weight_angles(model).items():
        print(f"angle(W, B) of {name}: {degrees:.1f}°")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rule", default="ss", choices=biograd.list_rules())
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None, help="cap the steps of an epoch")
    main(parser.parse_args())
