"""RetinaNet detection under any learning rule: `biograd detect`.

The task's own parts: COCO-format data, the detector, the sum of RetinaNet's losses, and
COCOeval (AP, AP50, AP75, AP small/medium/large) on the validation split. The loop,
checkpoints, DDP, AMP and the rest are engine/loop.py's.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist
from torch.utils.data import DataLoader

from biograd.config import DetectConfig
from biograd.engine import distributed, loop
from biograd.errors import UsageError

log = logging.getLogger("biograd")


def to_device(batch, device: torch.device):
    images, targets = batch
    return ([im.to(device, non_blocking=True) for im in images],
            [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()}
             for t in targets])


def loss(runner, batch) -> tuple[torch.Tensor, int, dict[str, float]]:
    images, targets = batch
    losses = runner(images, targets)  # {"classification": ..., "bbox_regression": ...}
    n = len(images)
    return sum(losses.values()), n, {f"train_{k}": v.detach() * n for k, v in losses.items()}


def angle_loss(model, batch) -> torch.Tensor:
    images, targets = batch
    return sum(model(images, targets).values())


def make_evaluate(data):
    from biograd.detection import evaluate_coco

    @torch.no_grad()
    def evaluate(ctx: loop.Context, loader: DataLoader) -> dict[str, float]:
        ctx.model.eval()
        detections: list[dict[str, Any]] = []
        for batch in loader:
            images, targets = ctx.task.to_device(batch, ctx.device)
            with loop.autocast(ctx.cfg, ctx.device):
                outputs = ctx.model(images)
            for out, target in zip(outputs, targets, strict=True):
                detections.append({"image_id": int(target["image_id"]),
                                   **{k: v.float().cpu() for k, v in out.items()}})
        if ctx.dist.enabled:
            gathered: list[list[dict]] = [[] for _ in range(ctx.dist.world_size)]
            torch_dist.all_gather_object(gathered, detections)
            detections = [d for part in gathered for d in part]
        if not ctx.dist.main:
            return {}
        metrics = evaluate_coco(data.coco_val, detections, data.label_to_category_id)
        return {k: 100 * v for k, v in metrics.items()}  # percent, as top-1

    return evaluate


def summary(m: dict[str, Any]) -> str:
    return (f"train loss {m['train_loss']:.4f}, AP {m.get('AP', math.nan):.1f}, AP50 "
            f"{m.get('AP50', math.nan):.1f}{loop.angle_text(m)}, "
            f"{m['images_per_second']:.1f} img/s")


def _data_root(cfg: DetectConfig, dist: distributed.Dist) -> Path:
    """cfg.data; a missing folder named like "shapes" is made first: by rank 0, into a
    temporary folder renamed when complete, while the other ranks wait."""
    root = Path(cfg.data)
    if not root.exists() and "shapes" in root.name:
        if dist.main:
            import os
            import shutil

            from biograd.detection import make_shapes

            log.info("making the synthetic shapes data set in %s", root)
            partial = root.with_name(f".{root.name}.partial-{os.getpid()}")
            try:
                make_shapes(partial, seed=0)
                partial.rename(root)
            finally:
                shutil.rmtree(partial, ignore_errors=True)
        distributed.barrier(dist)
    return root


def anchors(scale: float):
    """torchvision's RetinaNet anchors (3 sizes × 3 ratios per level, 32 to 512 px on P3-P7),
    their sizes multiplied by `scale`."""
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    sizes = tuple(tuple(max(1, round(scale * x * 2 ** (k / 3))) for k in range(3))
                  for x in (32, 64, 128, 256, 512))
    return AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))


def rule_for(cfg: DetectConfig, name: str):
    """The Rule object for rule `name`: its options from rule_options, and the run's
    feedback_scale as its `scale` unless rule_options sets one."""
    from biograd.detection.model import detector_rule
    from biograd.rules import get_rule

    canonical = get_rule(name).name
    return detector_rule(canonical, cfg.feedback_scale, **cfg.options_of(canonical))


def build(cfg: DetectConfig, dist: distributed.Dist, device: torch.device) -> loop.Task:
    from biograd.detection import (
        GroupedBatchSampler,
        aspect_ratio_groups,
        build_detection_data,
        build_retinanet,
        collate,
    )

    if device.type == "cpu" and cfg.amp == "bf16":
        log.warning(
            "--amp bf16 on the CPU: torch's CPU bf16 convolution weight gradient is not "
            "reproducible, and at times not finite, on maps one pixel wide at stride 2, which "
            "the detector's P6 and P7 levels are on small images: such a run may not resume "
            "exactly, or may stop on a non-finite loss; --amp none avoids it")
    data = build_detection_data(_data_root(cfg, dist), keep_empty_train=cfg.keep_empty_train)
    try:
        model = build_retinanet(
            num_classes=data.num_classes, backbone=cfg.backbone, rule=rule_for(cfg, cfg.rule),
            parts={k: rule_for(cfg, v) for k, v in cfg.parts.items()}, norm=cfg.norm,
            min_size=cfg.min_size, max_size=cfg.max_size, seed=cfg.seed,
            feedback_scale=cfg.feedback_scale, fpn_channels=cfg.fpn_channels,
            head_norm=cfg.head_norm,
            anchor_generator=anchors(cfg.anchor_scale))
    except (ValueError, KeyError) as err:
        raise UsageError(str(err).splitlines()[0]) from None
    model.to(device)
    fixed = None
    if cfg.angle_batch > 0 and dist.main:  # the first images with boxes, read from the index
        with_boxes = np.flatnonzero(np.diff(data.val.offsets) > 0)[: cfg.angle_batch]
        if len(with_boxes):
            fixed = to_device(collate([data.val[int(i)] for i in with_boxes]), device)
        else:
            log.info("no validation image has a box: no gradient angles are measured")
    grouping = None
    if cfg.aspect_ratio_grouping:
        groups = aspect_ratio_groups(data.train.aspect_ratios)

        def grouping(sampler, batch_size):
            return GroupedBatchSampler(sampler, groups, batch_size)

    return loop.Task(
        model=model, train_set=data.train, val_set=data.val, loss=loss,
        evaluate=make_evaluate(data), to_device=to_device, best_key="AP", summary=summary,
        angle_batch=fixed, angle_loss=angle_loss, collate=collate, batch_sampler=grouping,
        eval_batch_size=1,  # one image at a time: a batch pads its images to the largest,
    )                       # which the heads see, so AP would depend on who shares a batch


def train(cfg: DetectConfig, command: list[str] | None = None) -> dict[str, Any]:
    """Train one detection run into cfg.out; returns its last epoch's metrics.
    command: the command line to record (default: sys.argv)."""
    return loop.run(cfg, build, command)


def coco_table(run_dir: str | Path) -> str:
    """The run's COCO APs as a markdown table: the final epoch's, and the best of each with its
    epoch (in %; "–" where the validation split has no object of that size)."""
    from biograd.detection.coco_eval import METRICS
    from biograd.results import load_run

    run = load_run(run_dir)
    lines = [f"| COCO metric (%) | final (epoch {run.epochs_done}) | best (epoch) |",
             "| --- | ---: | ---: |"]
    for key in METRICS:
        epochs, values = run.series(key)
        seen = [(v, e) for e, v in zip(epochs, values, strict=True) if math.isfinite(v)]
        final = run.final(key)
        best = max(seen, default=None)
        lines.append(f"| {key} | {'–' if math.isnan(final) else f'{final:.1f}'} | "
                     f"{'–' if best is None else f'{best[0]:.1f} ({best[1]})'} |")
    return "\n".join(lines) + "\n"



