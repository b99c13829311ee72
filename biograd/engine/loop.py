"""The training loop every task shares: set-up, resume, epochs, checkpoints, the NaN stop.

A task (classification, detection) supplies its model, data and three functions: the loss
of a batch, the evaluation, and the log line. Everything else (config, DDP, AMP, exact
resume, atomic checkpoints, metrics.jsonl and TensorBoard, clear errors) lives here once;
beside it, the angles it measures (engine/angles.py), the run folder's checks
(engine/folders.py) and the checkpoints' files (engine/checkpoint.py).
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

import biograd
from biograd import __version__
from biograd._seed import mix
from biograd.config import RunConfig
from biograd.engine import checkpoint, distributed
from biograd.engine.angles import angle_text as angle_text  # the tasks' epoch lines read it
from biograd.engine.angles import angles, step_angles
from biograd.engine.checkpoint import load_weights
from biograd.engine.folders import check_compatible, check_out, make_folder
from biograd.engine.runlog import LOG_DATES, LOG_FORMAT, Progress, RunLog
from biograd.errors import Diverged, UsageError

log = logging.getLogger("biograd")

Batch = Any


@dataclass
class Task:
    """What a task hands the loop.

    loss(runner, batch) -> (loss, images in the batch, {name: per-batch sum}): the training
        forward; the sums (tensors, kept on the device) are averaged over images for the
        epoch's train metrics.
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
    test_set: Dataset | None = None  # scored once at the end, by the best epoch's model
    eval_batch_size: int | None = None  # default: the training batch size


@dataclass
class Context:
    """What one training process holds."""

    cfg: RunConfig
    dist: distributed.Dist
    device: torch.device
    task: Task
    runner: nn.Module  # what training calls: the model, or its DDP / compiled wrapper
    # evaluation calls the model itself: no DDP collectives, so ranks may hold unequal shards
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
        scale = min(1.0, (step + 1) / warmup) if warmup else 1.0  # a ramp that ends at 1
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
    """SGD/Adam/AdamW over every parameter, feedback included (kp's and the alignment
    family's B learn through it); parameters whose rule sets their weight decay (kp's
    `decay`, an aligning B's 0) get it (`biograd.optim.weight_decay_groups`)."""
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


class ShardSampler(torch.utils.data.Sampler):
    """Every `world_size`-th index from `rank`, in order, each index on exactly one rank
    (DistributedSampler pads with repeats so that every rank has as many: wrong for
    evaluation, which would count the repeats)."""

    def __init__(self, dataset: Dataset, world_size: int, rank: int) -> None:
        self.indices = range(rank, len(dataset), world_size)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def make_loader(task: Task, dataset: Dataset, ctx_dist: distributed.Dist, cfg: RunConfig,
                device: torch.device, shuffle: bool, epoch: int) -> DataLoader:
    """A loader whose order depends only on (seed, epoch) and whose augmentation draws on
    (seed, epoch, rank): resumable, the same on retry, different on every rank.

    Training (shuffle): DistributedSampler, every rank a shard of one permutation.
    Evaluation: each image once, on one rank (`ShardSampler`)."""
    if shuffle:
        sampler = DistributedSampler(dataset, num_replicas=ctx_dist.world_size,
                                     rank=ctx_dist.rank, shuffle=True, seed=cfg.seed)
        sampler.set_epoch(epoch)
    else:
        sampler = ShardSampler(dataset, ctx_dist.world_size, ctx_dist.rank)
    seed = mix(cfg.seed, "loader", epoch, ctx_dist.rank)  # the workers' augmentation streams
    common = dict(num_workers=cfg.workers, pin_memory=device.type == "cuda",
                  collate_fn=task.collate, generator=torch.Generator().manual_seed(seed))
    if shuffle and task.batch_sampler is not None:
        return DataLoader(dataset, batch_sampler=task.batch_sampler(sampler, cfg.batch_size),
                          **common)
    size = cfg.batch_size if shuffle or task.eval_batch_size is None else task.eval_batch_size
    return DataLoader(dataset, batch_size=size, sampler=sampler, **common)


def autocast(cfg: RunConfig, device: torch.device):
    dtype = torch.bfloat16 if cfg.amp == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype, enabled=cfg.amp != "none")


def _check_finite(ctx: Context, first_bad: float, epoch: int) -> None:
    """Raise Diverged if any rank saw a non-finite loss (first_bad: its step, 0 for none)."""
    step = distributed.all_reduce_max([first_bad], ctx.device, ctx.dist)[0]
    if step > 0:
        raise Diverged(f"the loss became non-finite at epoch {epoch}, step {int(step)}")


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def train_one_epoch(ctx: Context, loader: DataLoader, epoch: int) -> dict[str, float]:
    """One epoch of training. Nothing waits on the device between log intervals: the loss
    sums and the first non-finite step stay on the device, read every `log_interval` steps
    and at the epoch's last step, where a non-finite loss stops the run (naming the step it
    first appeared) and rank 0 reports the interval's loss, the lr, images/s and the ETA."""
    cfg, device, task = ctx.cfg, ctx.device, ctx.task
    ctx.runner.train()
    total = len(loader) if cfg.steps_per_epoch is None else min(len(loader), cfg.steps_per_epoch)
    sums: dict[str, torch.Tensor] = {}
    first_bad = torch.zeros((), dtype=torch.int64, device=device)  # 0: every loss finite
    interval_loss = torch.zeros((), dtype=torch.float64, device=device)
    seen = interval_seen = 0
    lr = ctx.optimizer.param_groups[0]["lr"]
    start = tick = time.perf_counter()
    bar = Progress(loader, total, f"epoch {epoch}", cfg.progress, ctx.dist.main)
    for step, batch in enumerate(bar, 1):
        batch = task.to_device(batch, device)
        with autocast(cfg, device):
            loss, n, extra = task.loss(ctx.runner, batch)
        finite = torch.isfinite(loss.detach())
        first_bad = torch.where((first_bad == 0) & ~finite, step, first_bad)
        ctx.scaler.scale(loss).backward()
        ctx.scaler.step(ctx.optimizer)
        ctx.scaler.update()
        ctx.optimizer.zero_grad(set_to_none=True)
        lr = ctx.optimizer.param_groups[0]["lr"]  # the rate this step trained with
        ctx.scheduler.step()  # the rules' after_step ran in the optimiser's step (attach)
        done = (epoch - 1) * total + step  # steps of the run so far
        if cfg.angle_every and ctx.dist.main and done % cfg.angle_every == 0:
            ctx.runlog.angles(step_angles(ctx, epoch - 1 + step / total, done))
        for key, v in {"train_loss": loss.detach().float() * n, **extra}.items():
            sums[key] = sums[key] + v if key in sums else v.detach().float()
        interval_loss += loss.detach().double() * n
        seen += n
        interval_seen += n
        if step % cfg.log_interval == 0 or step == total:
            bad, loss_sum = torch.stack([first_bad.double(), interval_loss]).tolist()  # 1 sync
            _check_finite(ctx, bad, epoch)
            now = time.perf_counter()
            if ctx.dist.main:
                eta = (now - start) / step * ((cfg.epochs - epoch) * total + total - step)
                line = (f"loss {loss_sum / interval_seen:.4f}, lr {lr:.4g}, "
                        f"{ctx.dist.world_size * interval_seen / (now - tick):.0f} img/s, "
                        f"eta {_duration(eta)}")
                bar.report(f"epoch {epoch}/{cfg.epochs}, step {step}/{total}: {line}", line)
            interval_loss.zero_()
            interval_seen, tick = 0, now
        if step == total:
            break
    seconds = time.perf_counter() - start
    keys = sorted(sums)
    local = [float(v) for v in torch.stack([sums[k] for k in keys]).tolist()]  # one sync
    reduced = distributed.all_reduce_sum([*local, seen], device, ctx.dist)
    seen_all = reduced[-1]
    return {**{k: v / seen_all for k, v in zip(keys, reduced[:-1], strict=True)},
            "epoch_seconds": seconds, "images_per_second": seen_all / seconds,
            "lr": lr}  # the epoch's last step's


def run(cfg: RunConfig, build: Callable[[RunConfig, distributed.Dist, torch.device], Task],
        command: list[str] | None = None) -> dict[str, Any]:
    """Train one run into cfg.out with the task `build` makes; returns the last epoch's
    metrics. Raises Diverged (the run is marked so and keeps its last good checkpoint)."""
    if cfg.out is None:
        raise UsageError("no run folder: set out (--out)")
    out = Path(cfg.out)
    device = distributed.pick_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
    if cfg.amp == "fp16" and device.type == "cpu":  # --device auto found no GPU
        raise UsageError("--amp fp16 needs a GPU, and this run's device is the CPU; use --amp "
                         "bf16 on the CPU")
    dist = distributed.setup(device)
    refused = None
    if dist.main:
        try:
            check_out(cfg, out)
            make_folder(out)
        except UsageError as err:
            refused = str(err)
    refused = distributed.share(refused, dist)  # rank 0's verdict: every rank stops alike
    if refused:
        raise UsageError(refused)
    runlog = RunLog(out, dist.main, cfg.tensorboard)
    handler, level = None, log.level
    if dist.main:  # the run's log lines, also in its folder, whatever the root logger keeps
        handler = logging.FileHandler(out / "train.log")
        handler.setFormatter(logging.Formatter(LOG_FORMAT, LOG_DATES))
        log.addHandler(handler)
        if log.getEffectiveLevel() > logging.INFO:
            log.setLevel(logging.INFO)
    if not cfg.resume:
        runlog.start()
    try:
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        task = build(cfg, dist, device)  # (convert logs the conversion report)
        if cfg.init_checkpoint and not cfg.resume:
            load_weights(task.model, cfg.init_checkpoint, device, cfg)
        return _fit(cfg, dist, device, task, out, runlog, command)
    except BaseException as err:  # a run this process started does not stay "running"
        if handler is not None:  # train.log says why its last lines led nowhere (the file
            # alone: the command line prints its own line)
            why = "interrupted" if isinstance(err, KeyboardInterrupt) else (
                f"stopped: {err}" if isinstance(err, UsageError | Diverged)
                else f"failed: {type(err).__name__}: {err}")
            handler.handle(log.makeRecord(log.name, logging.ERROR, __file__, 0, why, (), None))
        if runlog.current == "running":
            kept = (out / checkpoint.NAME).exists()
            where = ("--resume continues from its last finished epoch" if kept else
                     "no epoch had finished: start it again")
            if isinstance(err, KeyboardInterrupt):
                runlog.status("interrupted", f"stopped by the user; {where}")
            else:
                runlog.status("failed", f"{type(err).__name__}: {err}; {where}")
        raise
    finally:
        runlog.close()
        if handler is not None:
            log.removeHandler(handler)
            handler.close()
            log.setLevel(level)
        if dist.enabled:
            # DDP holds reference cycles, so only the garbage collector frees it; left to the
            # interpreter's exit, after the process group is gone, gloo aborted the process
            # in about one run in three here ("terminate called without an active exception")
            gc.collect()


def seed_rank_streams(cfg: RunConfig, dist: distributed.Dist, epoch: int) -> None:
    """Seed torch's, numpy's and Python's global streams from (seed, rank, epoch): dropout,
    drop-path and the main process's augmentation then differ between ranks, as they would
    between the batches of one process. Feedback draws none of them."""
    seed = mix(cfg.seed, "rank", dist.rank, epoch)
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def seek(scheduler: torch.optim.lr_scheduler.LRScheduler, step: int) -> None:
    """Put `scheduler` (and its optimiser's learning rates) at optimiser step `step`."""
    with warnings.catch_warnings():  # "step() before optimizer.step()": deliberate here
        warnings.simplefilter("ignore", UserWarning)
        scheduler.last_epoch = step - 1
        scheduler.step()


def compile_notes(model: nn.Module) -> list[str]:
    """The compile_note of every rule in `model` that has one (see biograd.rules.Rule)."""
    notes = {layer.learning_rule.compile_note for _, layer in biograd.feedback_layers(model)}
    return sorted(notes - {""})


def compile_model(runner: nn.Module, model: nn.Module, mode: str,
                  backend: str = "inductor") -> nn.Module:
    """torch.compile(runner), after logging the rules' compile notes. A rule that breaks the
    graph at each layer (dfa) makes every distinct layer shape a cache entry of the layers' own
    code, past torch's default limit of 8 (ResNet-18 needs 11), after which torch would run the
    rest eagerly: the limit is raised to two per converted layer (for every rule that reads
    the model's output: dfa, drtp, dfa_blocks)."""
    import torch._dynamo

    for note in compile_notes(model):
        log.warning(note)
    if any(layer.learning_rule.reads_output for _, layer in biograd.feedback_layers(model)):
        layers = sum(1 for _ in biograd.feedback_layers(model))
        config = torch._dynamo.config
        config.recompile_limit = max(config.recompile_limit, 2 * layers)
    if backend != "inductor":  # a mode is inductor's
        return torch.compile(runner, backend=backend)
    return torch.compile(runner, mode=mode)


def sync_batchnorm(model: nn.Module, cfg: RunConfig, dist: distributed.Dist,
                   device: torch.device) -> nn.Module:
    """With cfg.sync_bn under torchrun, every BatchNorm as torch's SyncBatchNorm (the same
    Parameter and buffer objects); otherwise the model as it is."""
    if not cfg.sync_bn:
        return model
    if not dist.enabled:
        log.info("--sync-bn: one process has no batch statistics to share: BatchNorm as it is")
        return model
    if device.type == "cpu":
        raise UsageError("--sync-bn: torch's SyncBatchNorm syncs GPU tensors only; leave it "
                         "out on the CPU")
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


def _fit(cfg, dist, device, task: Task, out: Path, runlog: RunLog,
         command: list[str] | None = None) -> dict[str, Any]:
    task.model = sync_batchnorm(task.model, cfg, dist, device)
    model = task.model
    optimizer = build_optimizer(cfg, model, task.param_groups)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    biograd.attach(optimizer, model, scaler)  # after_step after every step, as a user's loop
    loader = make_loader(task, task.train_set, dist, cfg, device, True, 0)
    steps = len(loader) if cfg.steps_per_epoch is None else min(len(loader),
                                                                cfg.steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, steps))
    runner: nn.Module = model
    if dist.enabled:  # feedback buffers agree by their seed: DDP must not send them
        biograd.exclude_feedback_from_ddp(model)
        runner = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        runner = compile_model(runner, model, cfg.compile_mode)
    ctx = Context(cfg, dist, device, task, runner, optimizer, scheduler, scaler, runlog)

    start_epoch, best, elapsed = 1, -math.inf, 0.0
    seed_rank_streams(cfg, dist, 0)  # initialised alike; from here on, every rank its own
    if cfg.resume:
        state = checkpoint.load(out / checkpoint.NAME, device)
        reshaped = check_compatible(cfg, state, out, dist)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, best, elapsed = state["epoch"] + 1, state["best"], state["elapsed"]
        streams = state.get("rng_ranks", [state["rng"]])  # one per rank; older: rank 0's
        if dist.rank < len(streams):
            checkpoint.set_rng_state(streams[dist.rank])
        else:  # a rank the run did not have
            seed_rank_streams(cfg, dist, state["epoch"])
        if reshaped:  # the schedule of the new shape, from the epoch reached
            seek(scheduler, state["epoch"] * steps)
        else:
            scheduler.load_state_dict(state["scheduler"])
        runlog.truncate(state["epoch"])
        log.info("resumed %s after epoch %d%s", out, state["epoch"],
                 " (new shape: schedule recomputed)" if reshaped else "")
    if dist.main:  # a start that was not refused: its environment, config and status
        runlog.environment(device, dist, command)
        import yaml

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
        distributed.broadcast_buffers(model, set(biograd.feedback_buffers(model)), dist)
        metrics = {"epoch": epoch, "rule": cfg.rule, "seed": cfg.seed, **stats,
                   **task.evaluate(ctx, val_loader),
                   "elapsed_seconds": elapsed}
        if dist.main:
            metrics.update(angles(ctx))
        value = metrics.get(task.best_key, math.nan)
        improved = math.isfinite(value) and (math.isnan(best) or value > best)
        best = value if improved else best
        runlog.epoch(metrics)
        streams = distributed.gather_objects(checkpoint.rng_state(), dist)
        if dist.main and improved:  # the model at its best validation score, beside the last
            checkpoint.save_atomic({
                "model": model.state_dict(), "epoch": epoch, "metric": task.best_key,
                "value": value, "config": cfg.to_dict(), "version": __version__,
            }, out / checkpoint.BEST)
        if dist.main:
            checkpoint.save_atomic({
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                "rng": streams[0], "rng_ranks": streams, "epoch": epoch, "best": best,
                "elapsed": elapsed, "config": cfg.to_dict(), "version": __version__,
                "world_size": dist.world_size, "global_batch": dist.world_size * cfg.batch_size,
                "steps_per_epoch": steps,
            }, out / checkpoint.NAME)
            log.info("epoch %d/%d: %s", epoch, cfg.epochs, task.summary(metrics))
    if task.test_set is not None:
        metrics.update(score_test(ctx, out))
    runlog.status("finished")
    return metrics


def score_test(ctx: Context, out: Path) -> dict[str, float]:
    """The test split scored once, with the model of the best validation epoch (best.pt, as
    biotorch's benchmark and He et al. 2016 select): {"test_top1", ...}, also written to
    RUN/test.json by rank 0; {} when no epoch scored a finite validation value."""
    distributed.barrier(ctx.dist)  # rank 0 wrote best.pt: every rank looks after it did
    if not (out / checkpoint.BEST).exists():
        return {}
    best = checkpoint.load(out / checkpoint.BEST, ctx.device)
    ctx.model.load_state_dict(best["model"])
    loader = make_loader(ctx.task, ctx.task.test_set, ctx.dist, ctx.cfg, ctx.device, False, 0)
    scores = {k.replace("val_", "test_", 1): v for k, v in
              ctx.task.evaluate(ctx, loader).items()}
    if ctx.dist.main:
        record = {"epoch": best["epoch"], "selected_by": best["metric"], "split": "test",
                  **scores}
        (out / "test.json").write_text(json.dumps(record, indent=1) + "\n")
        log.info("test split, model of epoch %d (best %s): %s", best["epoch"], best["metric"],
                 ", ".join(f"{k} {v:.2f}" for k, v in scores.items()
                           if isinstance(v, float)))
    return scores
