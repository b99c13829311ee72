"""The training loop every task shares: set-up, resume, epochs, checkpoints, the NaN stop.

A task (classification, detection) supplies its model, data and three functions: the loss
of a batch, the evaluation, and the log line. Everything else (config, DDP, AMP, exact
resume, atomic checkpoints, metrics.jsonl and TensorBoard, clear errors) lives here once.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

import biograd
from biograd import __version__
from biograd._seed import mix
from biograd.config import RunConfig
from biograd.engine import checkpoint, distributed
from biograd.engine.runlog import RunLog, progress
from biograd.errors import Diverged, UsageError

log = logging.getLogger("biograd")

#: Fields that may differ between a run and its resumption.
RESUMABLE = {"epochs", "resume", "out", "workers", "progress", "device", "tensorboard",
             "data_root", "download"}

Batch = Any


@dataclass
class Task:
    """What a task hands the loop.

    loss(runner, batch) -> (loss, images in the batch, {name: per-batch sum}): the training
        forward; the sums are averaged over images for the epoch's train metrics.
    evaluate(ctx, loader) -> {name: value}: validation metrics (all ranks call it).
    angle_loss(model, batch) -> loss, for gradient angles on `angle_batch` (None: skip).
    """

    model: nn.Module
    train_set: Dataset
    val_set: Dataset
    loss: Callable[[nn.Module, Batch], tuple[torch.Tensor, int, dict[str, float]]]
    evaluate: Callable[[Context, DataLoader], dict[str, float]]
    to_device: Callable[[Batch, torch.device], Batch]
    best_key: str
    summary: Callable[[dict[str, Any]], str]
    angle_batch: Batch | None = None
    angle_loss: Callable[[nn.Module, Batch], torch.Tensor] | None = None
    collate: Callable | None = None
    batch_sampler: Callable[[DistributedSampler, int], Any] | None = None
    param_groups: list[dict[str, Any]] | None = None  # default: one group of everything


@dataclass
class Context:
    """What one training process holds."""

    cfg: RunConfig
    dist: distributed.Dist
    device: torch.device
    task: Task
    runner: nn.Module  # what the loop calls: the model, or its DDP / compiled wrapper
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    runlog: RunLog

    @property
    def model(self) -> nn.Module:
        return self.task.model


def lr_factor(cfg: RunConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """The learning-rate multiplier at optimiser step t: warm-up, then the schedule."""
    warmup = cfg.warmup_epochs * steps_per_epoch
    total = cfg.epochs * steps_per_epoch

    def factor(step: int) -> float:
        scale = (step + 1) / warmup if warmup and step < warmup else 1.0
        epoch = step // steps_per_epoch
        if cfg.schedule == "step":
            decays = (sum(epoch >= m for m in cfg.milestones) if cfg.milestones
                      else epoch // cfg.step_size)
            return scale * cfg.gamma ** decays
        if cfg.schedule == "cosine":
            return scale * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
        return scale

    return factor


def build_optimizer(cfg: RunConfig, model: nn.Module,
                    groups: list[dict[str, Any]] | None) -> torch.optim.Optimizer:
    """SGD/Adam/AdamW over every parameter, feedback included (kp's B learns through it);
    kp layers with their own `decay` get it as their weight decay."""
    groups = biograd.optim.weight_decay_groups(model, groups)
    kinds = {
        "sgd": lambda: torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                                       weight_decay=cfg.weight_decay),
        "adam": lambda: torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay),
        "adamw": lambda: torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay),
    }
    optimizer = kinds[cfg.optimizer]()
    if getattr(cfg, "manhattan", False):
        biograd.optim.batch_manhattan(optimizer)
    if getattr(cfg, "no_sign_change", False):
        biograd.optim.no_sign_change(optimizer)
    return optimizer


def make_loader(task: Task, dataset: Dataset, ctx_dist: distributed.Dist, cfg: RunConfig,
                device: torch.device, shuffle: bool, epoch: int) -> DataLoader:
    """A loader whose order depends only on (seed, epoch): resumable, the same on retry."""
    sampler = DistributedSampler(dataset, num_replicas=ctx_dist.world_size, rank=ctx_dist.rank,
                                 shuffle=shuffle, seed=cfg.seed)
    sampler.set_epoch(epoch)
    common = dict(num_workers=cfg.workers, pin_memory=device.type == "cuda",
                  collate_fn=task.collate,
                  generator=torch.Generator().manual_seed(mix(cfg.seed, "loader", epoch)))
    if shuffle and task.batch_sampler is not None:
        return DataLoader(dataset, batch_sampler=task.batch_sampler(sampler, cfg.batch_size),
                          **common)
    return DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, **common)


def autocast(cfg: RunConfig, device: torch.device):
    dtype = torch.bfloat16 if cfg.amp == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype, enabled=cfg.amp != "none")


def train_one_epoch(ctx: Context, loader: DataLoader, epoch: int) -> dict[str, float]:
    cfg, device, task = ctx.cfg, ctx.device, ctx.task
    ctx.runner.train()
    total = len(loader) if cfg.steps_per_epoch is None else min(len(loader), cfg.steps_per_epoch)
    sums: dict[str, float] = {"train_loss": 0.0}
    seen = 0
    start = time.perf_counter()
    for step, batch in enumerate(progress(loader, total, f"epoch {epoch}", cfg.progress,
                                          ctx.dist.main), 1):
        batch = task.to_device(batch, device)
        with autocast(cfg, device):
            loss, n, extra = task.loss(ctx.runner, batch)
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
        done = (epoch - 1) * total + step  # steps of the run so far
        if cfg.angle_every and ctx.dist.main and done % cfg.angle_every == 0:
            ctx.runlog.angles(step_angles(ctx, epoch - 1 + step / total, done))
        sums["train_loss"] += value * n
        for key, v in extra.items():
            sums[key] = sums.get(key, 0.0) + v
        seen += n
        if step == total:
            break
    seconds = time.perf_counter() - start
    keys = sorted(sums)
    reduced = distributed.all_reduce_sum([sums[k] for k in keys] + [seen], device, ctx.dist)
    seen_all = reduced[-1]
    return {**{k: v / seen_all for k, v in zip(keys, reduced[:-1], strict=True)},
            "epoch_seconds": seconds, "images_per_second": seen_all / seconds}


def _rule_mean(ctx: Context, values: dict[str, float]) -> float:
    """The mean of `values` over the layers on the run's rule (NaN if none)."""
    on_rule = {name for name, layer in biograd.feedback_layers(ctx.model)
               if layer.rule == ctx.cfg.rule}
    picked = [v for k, v in values.items() if k in on_rule and not math.isnan(v)]
    return sum(picked) / len(picked) if picked else math.nan


def step_angles(ctx: Context, epoch: float, step: int) -> dict[str, Any]:
    """The weight angles now, for angles.jsonl."""
    weight = biograd.weight_angles(ctx.model)
    return {"step": step, "epoch": epoch, "weight_angles": weight,
            "mean_weight_angle": _rule_mean(ctx, weight)}


def angles(ctx: Context) -> dict[str, Any]:
    """Weight angles, and gradient angles on the fixed batch; means over the run's rule."""
    model, task = ctx.model, ctx.task
    weight = biograd.weight_angles(model)
    gradient = {}
    if task.angle_batch is not None and task.angle_loss is not None:
        was_training = model.training
        model.train()  # the gradients training takes (gradient_angles restores the buffers)
        try:
            gradient = biograd.gradient_angles(model, task.angle_batch, task.angle_loss)
        finally:
            model.train(was_training)
    return {"weight_angles": weight, "gradient_angles": gradient,
            "mean_weight_angle": _rule_mean(ctx, weight),
            "mean_gradient_angle": _rule_mean(ctx, gradient)}


def check_out(cfg: RunConfig, out: Path) -> None:
    """Refuse to overwrite a run; refuse to resume what is not there."""
    ckpt = out / checkpoint.NAME
    if not cfg.resume and (ckpt.exists() or (out / "metrics.jsonl").exists()):
        raise UsageError(f"{out} already holds a run: pass --resume to continue it, or "
                         f"choose another --out")
    if cfg.resume and not ckpt.exists():
        raise UsageError(f"--resume: no checkpoint in {out}; start without --resume")


def check_compatible(cfg: RunConfig, saved: dict[str, Any], out: Path) -> None:
    changed = sorted(k for k, v in cfg.to_dict().items()
                     if k not in RESUMABLE and saved.get(k) != v)
    if changed:
        diffs = ", ".join(f"{k}={saved.get(k)!r} (now {getattr(cfg, k)!r})" for k in changed)
        raise UsageError(f"--resume: {out} was trained with {diffs}; drop the changed options "
                         f"or choose another --out")


def run(cfg: RunConfig, build: Callable[[RunConfig, distributed.Dist, torch.device], Task]
        ) -> dict[str, Any]:
    """Train one run into cfg.out with the task `build` makes; returns the last epoch's
    metrics. Raises Diverged (the run is marked so and keeps its last good checkpoint)."""
    if cfg.out is None:
        raise UsageError("no run folder: set out (--out)")
    out = Path(cfg.out)
    device = distributed.pick_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
    dist = distributed.setup(device)
    if dist.main:
        check_out(cfg, out)
        out.mkdir(parents=True, exist_ok=True)
    runlog = RunLog(out, dist.main, cfg.tensorboard)
    try:
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        task = build(cfg, dist, device)
        if dist.main:
            log.info("%s", biograd.report(task.model))
        return _fit(cfg, dist, device, task, out, runlog)
    finally:
        runlog.close()
        if dist.enabled:
            # DDP holds reference cycles, so only the garbage collector frees it; left to the
            # interpreter's exit, after the process group is gone, gloo aborted the process
            # in about one run in three here ("terminate called without an active exception")
            gc.collect()


def compile_notes(model: nn.Module) -> list[str]:
    """The compile_note of every rule in `model` that has one (see biograd.rules.Rule)."""
    notes = {layer.learning_rule.compile_note for _, layer in biograd.feedback_layers(model)}
    return sorted(notes - {""})


def _fit(cfg, dist, device, task: Task, out: Path, runlog: RunLog) -> dict[str, Any]:
    model = task.model
    optimizer = build_optimizer(cfg, model, task.param_groups)
    loader = make_loader(task, task.train_set, dist, cfg, device, True, 0)
    steps = len(loader) if cfg.steps_per_epoch is None else min(len(loader),
                                                                cfg.steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, steps))
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    runner: nn.Module = model
    if dist.enabled:
        runner = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        for note in compile_notes(model):
            log.warning(note)
        runner = torch.compile(runner)
    ctx = Context(cfg, dist, device, task, runner, optimizer, scheduler, scaler, runlog)

    start_epoch, best, elapsed = 1, -math.inf, 0.0
    if cfg.resume:
        state = checkpoint.load(out / checkpoint.NAME, device)
        check_compatible(cfg, state["config"], out)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        checkpoint.set_rng_state(state["rng"])
        start_epoch, best, elapsed = state["epoch"] + 1, state["best"], state["elapsed"]
        runlog.truncate(state["epoch"])
        log.info("resumed %s after epoch %d", out, state["epoch"])
    if dist.main:
        (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        runlog.status("running")

    if cfg.angle_every and dist.main and start_epoch == 1:
        runlog.angles(step_angles(ctx, 0.0, 0))  # the angles training starts from
    metrics: dict[str, Any] = {}
    for epoch in range(start_epoch, cfg.epochs + 1):
        train_loader = make_loader(task, task.train_set, dist, cfg, device, True, epoch)
        val_loader = make_loader(task, task.val_set, dist, cfg, device, False, 0)
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
                   **task.evaluate(ctx, val_loader), "lr": optimizer.param_groups[0]["lr"],
                   "elapsed_seconds": elapsed}
        if dist.main:
            metrics.update(angles(ctx))
        value = metrics.get(task.best_key, math.nan)
        best = value if math.isnan(best) or value > best else best
        runlog.epoch(metrics)
        if dist.main:
            checkpoint.save_atomic({
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                "rng": checkpoint.rng_state(), "epoch": epoch, "best": best,
                "elapsed": elapsed, "config": cfg.to_dict(), "version": __version__,
            }, out / checkpoint.NAME)
            log.info("epoch %d/%d: %s", epoch, cfg.epochs, task.summary(metrics))
    runlog.status("finished")
    return metrics
