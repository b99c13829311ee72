"""COCO box AP of a detector's outputs, computed by pycocotools' COCOeval.

`evaluate_coco(coco_gt, detections, label_to_category_id)` takes one dict per evaluated
image, {"image_id": int, "boxes": (N, 4) x1 y1 x2 y2 in the image's pixels, "scores": (N,),
"labels": (N,) contiguous labels} (what torchvision's detectors return, plus the image id),
turns them into COCO results ([x, y, w, h], category ids) and returns COCOeval's first six
statistics as fractions in [0, 1]:

    AP         mean over IoU 0.50:0.05:0.95, all areas, 100 detections per image
    AP50 AP75  at IoU 0.50 and 0.75
    AP_small AP_medium AP_large   areas < 32², 32² to 96², > 96² pixels

An entry is NaN where pycocotools gives -1: no ground-truth object of that size among the
images evaluated. The images evaluated are those the detections name (an image with no
boxes still counts: give its dict with empty tensors), or every image of coco_gt if the list
is empty. No boxes at all is a valid result, not a crash (pycocotools' loadRes refuses an
empty list): AP is then 0.0 wherever there are objects to find. pycocotools' printed summary
is kept, not printed: `run_coco_eval(...).summary`.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

METRICS = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large")


@dataclass
class CocoEvalResult:
    """metrics: the six APs above; stats: all 12 COCOeval.stats (the APs, then the ARs),
    -1 as NaN; summary: the table pycocotools prints."""

    metrics: dict[str, float]
    stats: list[float]
    summary: str


def to_coco_results(detections: Iterable[dict], label_to_category_id: Sequence[int]) -> list[dict]:
    """COCO result entries {image_id, category_id, bbox [x, y, w, h], score}, one per box."""
    results = []
    for det in detections:
        image_id = int(det["image_id"])
        boxes = torch.as_tensor(det["boxes"]).detach().to("cpu", torch.float64).reshape(-1, 4)
        scores = torch.as_tensor(det["scores"]).detach().to("cpu", torch.float64).reshape(-1)
        labels = torch.as_tensor(det["labels"]).detach().to("cpu", torch.int64).reshape(-1)
        if not len(boxes) == len(scores) == len(labels):
            raise ValueError(f"image {image_id}: {len(boxes)} boxes, {len(scores)} scores and "
                             f"{len(labels)} labels; give one of each per detection")
        if len(labels) and (labels.min() < 0 or labels.max() >= len(label_to_category_id)):
            raise ValueError(f"image {image_id}: labels must be in [0, "
                             f"{len(label_to_category_id)}), got {labels.unique().tolist()}")
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1)  # (N, 4)
        for box, score, label in zip(xywh.tolist(), scores.tolist(), labels.tolist(),
                                     strict=True):
            results.append({"image_id": image_id,
                            "category_id": int(label_to_category_id[label]),
                            "bbox": box, "score": score})
    return results


def _no_results(coco_gt: Any) -> Any:
    """An empty result set over coco_gt's images (what loadRes would make of [] if it could)."""
    from pycocotools.coco import COCO

    res = COCO()
    res.dataset = {"images": list(coco_gt.dataset["images"]),
                   "categories": copy.deepcopy(coco_gt.dataset["categories"]),
                   "annotations": []}
    res.createIndex()
    return res


def run_coco_eval(coco_gt: Any, detections: Sequence[dict],
                  label_to_category_id: Sequence[int]) -> CocoEvalResult:
    """COCOeval (bbox) of `detections` against coco_gt (a pycocotools COCO); see the module."""
    from pycocotools.cocoeval import COCOeval

    results = to_coco_results(detections, label_to_category_id)
    image_ids = sorted({int(det["image_id"]) for det in detections}) or coco_gt.getImgIds()
    unknown = sorted(set(image_ids) - set(coco_gt.getImgIds()))
    if unknown:
        raise ValueError(f"detections name image ids not in the ground truth, e.g. "
                         f"{unknown[:5]}: evaluate against the annotations of the same split")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        coco_dt = coco_gt.loadRes(results) if results else _no_results(coco_gt)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.params.imgIds = image_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = [math.nan if value == -1 else float(value) for value in evaluator.stats]
    return CocoEvalResult(dict(zip(METRICS, stats, strict=False)), stats, printed.getvalue())


def evaluate_coco(coco_gt: Any, detections: Sequence[dict],
                  label_to_category_id: Sequence[int]) -> dict[str, float]:
    """{"AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large"}, fractions in [0, 1] (NaN
    where no object of that size exists); see the module for the detections' format."""
    return run_coco_eval(coco_gt, detections, label_to_category_id).metrics
