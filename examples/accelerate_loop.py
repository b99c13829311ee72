"""biograd under Hugging Face accelerate: attach the optimiser before `prepare`.

    python examples/accelerate_loop.py --rule fa

accelerate wraps the optimiser in its own class, whose step calls the one you built: attach
that one (before `accelerator.prepare`), so biograd's between-step work runs once per step on
every process, and the model you converted is the one accelerate trains.
"""

import argparse

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import biograd


def main(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    teacher = torch.randn(16, 4)
    x = torch.randn(512, 16)
    data = TensorDataset(x, (x @ teacher).argmax(1))  # a task the network can learn
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                          nn.Linear(64, 4))
    biograd.convert(model, args.rule, last="bp", seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    biograd.attach(opt, model)

    accelerator = Accelerator(cpu=True)
    prepared, opt, loader = accelerator.prepare(model, opt, DataLoader(data, batch_size=32))
    for epoch in range(args.epochs):
        for xb, yb in loader:
            loss = F.cross_entropy(prepared(xb), yb)
            opt.zero_grad()
            accelerator.backward(loss)
            opt.step()
        accelerator.print(f"epoch {epoch + 1}: loss {loss.item():.3f}")
    angles = biograd.weight_angles(model)
    accelerator.print(" ".join(f"{k}: {v:.1f}°" for k, v in angles.items()))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rule", default="fa", choices=biograd.list_rules())
    parser.add_argument("--epochs", type=int, default=3)
    main(parser.parse_args())
