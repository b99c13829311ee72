"""biograd under Hugging Face's Trainer: hand it an optimiser you attached.

    python examples/hf_trainer.py --rule ss

The Trainer builds its own optimiser unless given one; build it yourself, `biograd.attach` it,
and pass it in (`optimizers=(opt, None)`), so the rules' between-step work runs in every step
the Trainer takes. The model returns {"loss", "logits"}, as the Trainer expects.
"""

import argparse

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Trainer, TrainingArguments

import biograd


class Classifier(nn.Module):
    def __init__(self, rule: str) -> None:
        super().__init__()
        # The rule forms a layer's input gradient, which trains the layers before it; the last
        # layer is on backprop, so two layers before it are the fewest in which the rule counts.
        self.net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                                 nn.Linear(64, 4))
        biograd.convert(self.net, rule, last="bp", seed=0)

    def forward(self, x, labels=None):
        logits = self.net(x)
        loss = None if labels is None else F.cross_entropy(logits, labels)
        return {"loss": loss, "logits": logits}


class Pairs(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        teacher = torch.randn(16, 4)
        self.x = torch.randn(n, 16)
        self.y = (self.x @ teacher).argmax(1)  # a task the network can learn

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "labels": self.y[i]}


def main(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    model = Classifier(args.rule)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    biograd.attach(opt, model.net)
    training = TrainingArguments(output_dir=args.out, num_train_epochs=args.epochs,
                                 per_device_train_batch_size=32, report_to=[],
                                 save_strategy="no", logging_strategy="no", use_cpu=True,
                                 disable_tqdm=True)
    Trainer(model=model, args=training, train_dataset=Pairs(512),
            optimizers=(opt, None)).train()
    angles = biograd.weight_angles(model.net)
    print(" ".join(f"{k}: {v:.1f}°" for k, v in angles.items()))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rule", default="ss", choices=biograd.list_rules())
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", default="runs/hf-trainer")
    main(parser.parse_args())
