"""Image classification under any learning rule: `biograd train` and each run of `compare`.

The skeleton of torchvision's reference scripts: load_data, build, train_one_epoch,
evaluate, train. Rule-specific work is one call, `biograd.after_step(model)`, after each
optimiser step.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

import biograd
from biograd import __version__
from biograd._seed import mix
from biograd.config import TrainConfig
from biograd.engine import checkpoint, distributed
from biograd.engine.runlog import RunLog, progress
from biograd.errors import Diverged, UsageError

log = logging.getLogger("biograd")

#: Fields that may differ between a run and its resumption.
RESUMABLE = {"epochs", "resume", "out", "workers", "progress", "device", "tensorboard",
             "data_root", "download"}


@dataclass
class Context:
    """What one training process holds."""

    cfg: TrainConfig
    dist: distributed.Dist
    device: torch.device
    model: nn.Module  # the converted model (unwrapped)
    runner: nn.Module  # what the loop calls: the model, or its DDP / compiled wrapper
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    log: RunLog


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD/Adam/AdamW over every parameter (feedback included); the last layer may have its
    own learning rate; the seed's SGD variants as wrappers."""
    names = [name for name, _ in biograd.feedback_layers(model)]
    last = model.get_submodule(names[-1]) if names and cfg.last_lr is not None else None
    last_params = {id(p) for p in last.parameters()} if last is not None else set()
    groups = [{"params": [p for p in model.parameters() if id(p) not in last_params]}]
    if last_params:
        groups.append({"params": list(last.parameters()), "lr": cfg.last_lr})
    kinds = {
        "sgd": lambda: torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                                       weight_decay=cfg.weight_decay),
        "adam": lambda: torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay),
        "adamw": lambda: torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay),
    }
    optimizer = kinds[cfg.optimizer]()
    if cfg.manhattan:
        biograd.optim.batch_manhattan(optimizer)
    if cfg.no_sign_change:
        biograd.optim.no_sign_change(optimizer)
    return optimizer


def lr_factor(cfg: TrainConfig, steps_per_epoch: int):
    """The learning-rate multiplier at optimiser step t (a picklable-free closure)."""
    warmup = cfg.warmup_epochs * steps_per_epoch
    total = cfg.epochs * steps_per_epoch

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == "step":
            return cfg.gamma ** (step // steps_per_epoch // cfg.step_size)
        if cfg.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
        return 1.0

    return factor


def load_data(cfg: TrainConfig):
    from biograd.data import build_data

    return build_data(cfg.data, image_size=cfg.image_size, root=cfg.data_root,
                      download=cfg.download)


def make_loader(dataset, cfg: TrainConfig, ctx_dist: distributed.Dist, device: torch.device,
                shuffle: bool, epoch: int) -> DataLoader:
    """A loader whose order depends only on (seed, epoch): resumable and the same on retry."""
    sampler = DistributedSampler(dataset, num_replicas=ctx_dist.world_size, rank=ctx_dist.rank,
                                 shuffle=shuffle, seed=cfg.seed)
    sampler.set_epoch(epoch)
    return DataLoader(
        dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
        pin_memory=device.type == "cuda", drop_last=False,
        generator=torch.Generator().manual_seed(mix(cfg.seed, "loader", epoch)),
    )


def _to(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _autocast(cfg: TrainConfig, device: torch.device):
    dtype = torch.bfloat16 if cfg.amp == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype, enabled=cfg.amp != "none")


def train_one_epoch(ctx: Context, loader: DataLoader, epoch: int) -> dict[str, float]:
    cfg, device = ctx.cfg, ctx.device
    ctx.runner.train()
    total = len(loader) if cfg.steps_per_epoch is None else min(len(loader), cfg.steps_per_epoch)
    loss_sum = correct = seen = 0.0
    start = time.perf_counter()
    for step, (x, y) in enumerate(progress(loader, total, f"epoch {epoch}", cfg.progress,
                                           ctx.dist.main), 1):
        x, y = _to(x, device, cfg.channels_last), y.to(device, non_blocking=True)
        with _autocast(cfg, device):
            logits = ctx.runner(x)
            loss = F.cross_entropy(logits, y)
        value = loss.item()
        bad = distributed.all_reduce_sum([0.0 if math.isfinite(value) else 1.0], device,
                                         ctx.dist)[0]
        if bad:
            raise Diverged(f"loss became {value} at epoch {epoch}, step {step}")
        ctx.scaler.scale(loss).backward()
        ctx.scaler.step(ctx.optimizer)
        ctx.scaler.update()
        ctx.optimizer.zero_grad(set_to_none=True)
        ctx.scheduler.step()
        biograd.after_step(ctx.model)
        loss_sum += value * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
        if step == total:
            break
    seconds = time.perf_counter() - start
    loss_sum, correct, seen = distributed.all_reduce_sum([loss_sum, correct, seen], device,
                                                         ctx.dist)
    return {"train_loss": loss_sum / seen, "train_top1": 100 * correct / seen,
            "epoch_seconds": seconds, "images_per_second": seen / seconds}


@torch.no_grad()
def evaluate(ctx: Context, loader: DataLoader) -> dict[str, float]:
    cfg, device = ctx.cfg, ctx.device
    ctx.runner.eval()
    loss_sum = top1 = top5 = seen = 0.0
    for x, y in loader:
        x, y = _to(x, device, cfg.channels_last), y.to(device, non_blocking=True)
        with _autocast(cfg, device):
            logits = ctx.runner(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").item()
        k = min(5, logits.shape[1])
        best = logits.topk(k, dim=1).indices
        top1 += (best[:, 0] == y).sum().item()
        top5 += (best == y[:, None]).any(1).sum().item()
        seen += len(y)
    loss_sum, top1, top5, seen = distributed.all_reduce_sum([loss_sum, top1, top5, seen],
                                                            device, ctx.dist)
    return {"val_loss": loss_sum / seen, "val_top1": 100 * top1 / seen,
            "val_top5": 100 * top5 / seen}


def angles(ctx: Context, batch) -> dict[str, Any]:
    """Weight angles, and gradient angles on the fixed batch; means over the run's rule."""
    model, rule = ctx.model, biograd.get_rule(ctx.cfg.rule).name
    weight = biograd.weight_angles(model)
    gradient = biograd.gradient_angles(model, batch) if batch is not None else {}
    on_rule = {name for name, layer in biograd.feedback_layers(model) if layer.rule == rule}

    def mean(values: dict[str, float]) -> float:
        picked = [v for k, v in values.items() if k in on_rule and not math.isnan(v)]
        return sum(picked) / len(picked) if picked else math.nan

    return {"weight_angles": weight, "gradient_angles": gradient,
            "mean_weight_angle": mean(weight), "mean_gradient_angle": mean(gradient)}


def _fixed_batch(cfg: TrainConfig, dataset, device: torch.device):
    if cfg.angle_batch <= 0:
        return None
    items = [dataset[i] for i in range(min(cfg.angle_batch, len(dataset)))]
    x = torch.stack([x for x, _ in items])
    y = torch.tensor([int(y) for _, y in items])
    return _to(x, device, cfg.channels_last), y.to(device)


def _check_out(cfg: TrainConfig, out: Path) -> dict[str, Any] | None:
    """The config of the run in `out` when resuming; refuse to overwrite a run otherwise."""
    ckpt = out / checkpoint.NAME
    if not cfg.resume:
        if ckpt.exists() or (out / "metrics.jsonl").exists():
            raise UsageError(f"{out} already holds a run: pass --resume to continue it, or "
                             f"choose another --out")
        return None
    if not ckpt.exists():
        raise UsageError(f"--resume: no checkpoint in {out}; start without --resume")
    return yaml.safe_load((out / "config.yaml").read_text()) if (out / "config.yaml").exists() \
        else None


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train one run into cfg.out; returns the last epoch's metrics. Raises Diverged."""
    if cfg.out is None:
        raise UsageError("no run folder: set out (--out)")
    out = Path(cfg.out)
    device = distributed.pick_device(cfg.device, _local_rank())
    dist = distributed.setup(device)
    if dist.main:
        _check_out(cfg, out)
        out.mkdir(parents=True, exist_ok=True)
    runlog = RunLog(out, dist.main, cfg.tensorboard)
    try:
        return _train(cfg, dist, device, out, runlog)
    finally:
        runlog.close()


def _local_rank() -> int:
    import os

    return int(os.environ.get("LOCAL_RANK", "0"))


def _train(cfg, dist, device, out: Path, runlog: RunLog) -> dict[str, Any]:
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    bundle = load_data(cfg)
    from biograd.models import build_model

    model = build_model(cfg.model, num_classes=bundle.num_classes,
                        in_channels=bundle.in_channels, image_size=bundle.image_size)
    biograd.convert(model, cfg.rule_for(cfg.rule), last=cfg.rule_for(cfg.last_rule),
                    seed=cfg.seed)
    if dist.main:
        log.info("%s", biograd.report(model))
    model.to(device, memory_format=torch.channels_last if cfg.channels_last else
             torch.preserve_format)
    optimizer = build_optimizer(cfg, model)
    train_loader = make_loader(bundle.train, cfg, dist, device, True, 0)
    steps = len(train_loader) if cfg.steps_per_epoch is None else min(len(train_loader),
                                                                      cfg.steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, steps))
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    runner: nn.Module = model
    if dist.enabled:
        runner = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        runner = torch.compile(runner)
    ctx = Context(cfg, dist, device, model, runner, optimizer, scheduler, scaler, runlog)

    start_epoch, best, elapsed = 1, -math.inf, 0.0
    if cfg.resume:
        state = checkpoint.load(out / checkpoint.NAME, device)
        _check_compatible(cfg, state["config"], out)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        checkpoint.set_rng_state(state["rng"])
        start_epoch, best, elapsed = state["epoch"] + 1, state["best_top1"], state["elapsed"]
        runlog.truncate(state["epoch"])
        log.info("resumed %s after epoch %d", out, state["epoch"])
    if dist.main:
        (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        runlog.status("running")

    fixed = _fixed_batch(cfg, bundle.val, device) if dist.main else None
    metrics: dict[str, Any] = {}
    for epoch in range(start_epoch, cfg.epochs + 1):
        train_loader = make_loader(bundle.train, cfg, dist, device, True, epoch)
        val_loader = make_loader(bundle.val, cfg, dist, device, False, 0)
        try:
            stats = train_one_epoch(ctx, train_loader, epoch)
        except Diverged as err:
            message = (f"{err}; the last good checkpoint (epoch {epoch - 1}) is kept in "
                       f"{out / checkpoint.NAME}" if (out / checkpoint.NAME).exists()
                       else f"{err}; no epoch had finished, so there is no checkpoint")
            runlog.status("diverged", message)
            raise Diverged(message) from None
        elapsed += stats["epoch_seconds"]
        metrics = {"epoch": epoch, "rule": cfg.rule, "seed": cfg.seed, **stats,
                   **evaluate(ctx, val_loader), "lr": optimizer.param_groups[0]["lr"],
                   "elapsed_seconds": elapsed}
        if dist.main:
            metrics.update(angles(ctx, fixed))
        best = max(best, metrics["val_top1"])
        runlog.epoch(metrics)
        if dist.main:
            checkpoint.save_atomic({
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                "rng": checkpoint.rng_state(), "epoch": epoch, "best_top1": best,
                "elapsed": elapsed, "config": cfg.to_dict(), "version": __version__,
            }, out / checkpoint.NAME)
            log.info("epoch %d/%d: train loss %.4f, val top-1 %.2f%%, top-5 %.2f%%, "
                     "mean angle %.1f°, %.0f img/s", epoch, cfg.epochs, metrics["train_loss"],
                     metrics["val_top1"], metrics["val_top5"],
                     metrics.get("mean_weight_angle", math.nan), metrics["images_per_second"])
    runlog.status("finished")
    return metrics


def _check_compatible(cfg: TrainConfig, saved: dict[str, Any], out: Path) -> None:
    changed = sorted(k for k, v in cfg.to_dict().items()
                     if k not in RESUMABLE and saved.get(k) != v)
    if changed:
        diffs = ", ".join(f"{k}={saved.get(k)!r} (now {getattr(cfg, k)!r})" for k in changed)
        raise UsageError(f"--resume: {out} was trained with {diffs}; drop the changed options "
                         f"or choose another --out")

