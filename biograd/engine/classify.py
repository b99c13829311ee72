"""Image classification under any learning rule: `biograd train` and each run of `compare`.

The task's own parts: data and model, the cross-entropy loss, top-1/top-5 evaluation, the
classifier's learning rate. The loop, checkpoints and the rest are in engine/loop.py.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import biograd
from biograd.config import TrainConfig
from biograd.engine import distributed, loop
from biograd.errors import UsageError
from biograd.spikes import SpikeCounter


def to_device(batch, device: torch.device, channels_last: bool = False):
    x, y = batch
    x = x.to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True)


def loss(runner, batch) -> tuple[torch.Tensor, int, dict[str, float]]:
    x, y = batch
    biograd.targets(runner, y)  # for layers on drtp; a no-op for every other rule
    logits = runner(x)
    correct = (logits.detach().argmax(1) == y).sum()  # stays on the device
    return F.cross_entropy(logits, y), len(y), {"train_top1": 100.0 * correct}


@torch.no_grad()
def evaluate(ctx: loop.Context, loader: DataLoader) -> dict[str, Any]:
    """Loss, top-1 and top-5 over the loader (summed over DDP ranks); for a spiking model,
    also each neuron layer's spike rate ("val_spike_rates": {name: fraction of neuron-steps
    that fired}, biograd.spikes)."""
    ctx.model.eval()
    loss_sum = top1 = top5 = seen = 0.0
    with SpikeCounter(ctx.model) as counter:
        for batch in loader:
            x, y = ctx.task.to_device(batch, ctx.device)
            with loop.autocast(ctx.cfg, ctx.device):
                logits = ctx.model(x)
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").item()
            best = logits.topk(min(5, logits.shape[1]), dim=1).indices
            top1 += (best[:, 0] == y).sum().item()
            top5 += (best == y[:, None]).any(1).sum().item()
            seen += len(y)
    spikes = counter.totals().flatten().tolist()  # (spikes, neuron-steps) per layer
    loss_sum, top1, top5, seen, *spikes = distributed.all_reduce_sum(
        [loss_sum, top1, top5, seen, *spikes], ctx.device, ctx.dist)
    metrics: dict[str, Any] = {"val_loss": loss_sum / seen, "val_top1": 100 * top1 / seen,
                               "val_top5": 100 * top5 / seen}
    if spikes:
        metrics["val_spike_rates"] = counter.rates(torch.tensor(spikes).view(-1, 2))
    return metrics


def summary(m: dict[str, Any]) -> str:
    return (f"train loss {m['train_loss']:.4f}, val top-1 {m['val_top1']:.2f}%, top-5 "
            f"{m['val_top5']:.2f}%{loop.angle_text(m)}, {m['images_per_second']:.0f} img/s")


def _data_and_model(cfg: TrainConfig):
    """The data bundle and the model as built, before any surgery."""
    from biograd.data import build_data
    from biograd.data.base import hold_out
    from biograd.models import build_model

    bundle = build_data(cfg.data, image_size=cfg.image_size, root=cfg.data_root,
                        download=cfg.download)
    if cfg.val_split:
        bundle = hold_out(bundle, cfg.val_split)
    model = build_model(cfg.model, num_classes=bundle.num_classes,
                        in_channels=bundle.in_channels, image_size=bundle.image_size,
                        pretrained=cfg.pretrained and not cfg.resume,  # the checkpoint's
                        **cfg.model_options)
    return bundle, model


def _refused(cfg: TrainConfig, err: ValueError) -> UsageError:
    return UsageError(f"--rule {cfg.rule} on --model {cfg.model}: {err}")


def check(cfg: TrainConfig) -> None:
    """Refuse, as `build` would, a rule of cfg's that cannot run on its model, from the model
    alone: `compare` calls this before any run trains. Only rules that not every model can
    take (`Rule.every_model`: dfa_blocks needs blocks) build the model for it."""
    rules = [cfg.rule_for(cfg.rule), cfg.rule_for(cfg.last_rule)]
    if all(rule.every_model for rule in rules):
        return
    _, model = _data_and_model(dataclasses.replace(cfg, pretrained=False))
    for rule in rules:
        try:
            rule.check(model)
        except ValueError as err:
            raise _refused(cfg, err) from None


def build(cfg: TrainConfig, dist: distributed.Dist, device: torch.device) -> loop.Task:
    bundle, model = _data_and_model(cfg)
    if cfg.unshare:
        example = torch.zeros(1, bundle.in_channels, bundle.image_size, bundle.image_size)
        try:
            biograd.unshare(model, example)
        except ValueError as err:  # a convolution it cannot unshare: say which, in one line
            raise UsageError(f"--unshare: {err}") from None
    if cfg.dale is not None:
        biograd.dale(model, cfg.dale, seed=cfg.seed, balance=cfg.dale_balance)
    try:
        biograd.convert(model, cfg.rule_for(cfg.rule), last=cfg.rule_for(cfg.last_rule),
                        seed=cfg.seed)
    except ValueError as err:  # a model the rule cannot run on (dfa_blocks: no blocks)
        raise _refused(cfg, err) from None
    model.to(device, memory_format=torch.channels_last if cfg.channels_last else
             torch.preserve_format)

    def move(batch, dev):
        return to_device(batch, dev, cfg.channels_last)

    fixed = None
    if cfg.angle_batch > 0 and dist.main:
        items = [bundle.val[i] for i in range(min(cfg.angle_batch, len(bundle.val)))]
        fixed = move((torch.stack([x for x, _ in items]),
                      torch.tensor([int(y) for _, y in items])), device)
    return loop.Task(
        model=model, train_set=bundle.train, val_set=bundle.val, loss=loss, evaluate=evaluate,
        to_device=move, best_key="val_top1", summary=summary, angle_batch=fixed,
        angle_loss=biograd.cross_entropy_loss, param_groups=param_groups(cfg, model),
        test_set=bundle.test,
    )


def param_groups(cfg: TrainConfig, model: torch.nn.Module) -> list[dict[str, Any]] | None:
    """Everything at lr, and the last layer (the classifier) at last_lr when it is set."""
    names = [name for name, _ in biograd.feedback_layers(model)]
    if cfg.last_lr is None or not names:
        return None
    last = model.get_submodule(names[-1])
    ids = {id(p) for p in last.parameters()}
    return [{"params": [p for p in model.parameters() if id(p) not in ids]},
            {"params": list(last.parameters()), "lr": cfg.last_lr}]


def train(cfg: TrainConfig, command: list[str] | None = None) -> dict[str, Any]:
    """Train one classification run into cfg.out; returns its last epoch's metrics.
    command: the command line to record (default: sys.argv)."""
    return loop.run(cfg, build, command)
