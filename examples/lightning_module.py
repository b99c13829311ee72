"""biograd in a Lightning module: convert in `__init__`, attach in `configure_optimizers`.

    python examples/lightning_module.py --rule kp

Lightning calls `optimizer.step()` itself; the step post-hook `biograd.attach` registers runs
the rules' between-step work there (wm's mirror pass, sign_fixed's clamp, brsf's new draw).
"""

import argparse

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import biograd


class Classifier(L.LightningModule):
    def __init__(self, rule: str) -> None:
        super().__init__()
        # The rule forms a layer's input gradient, which trains the layers before it; the last
        # layer is on backprop, so two layers before it are the fewest in which the rule counts.
        self.net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                                 nn.Linear(64, 4))
        biograd.convert(self.net, rule, last="bp", seed=0)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
        biograd.attach(opt, self.net)
        return opt


def main(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    teacher = torch.randn(16, 4)
    x = torch.randn(512, 16)
    loader = DataLoader(TensorDataset(x, (x @ teacher).argmax(1)), batch_size=32)
    module = Classifier(args.rule)
    trainer = L.Trainer(max_epochs=args.epochs, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(module, loader)
    angles = biograd.weight_angles(module.net)
    print(" ".join(f"{k}: {v:.1f}°" for k, v in angles.items()))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rule", default="kp", choices=biograd.list_rules())
    parser.add_argument("--epochs", type=int, default=3)
    main(parser.parse_args())
