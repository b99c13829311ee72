"""Object detection: RetinaNet under any rule, COCO-format data (MS-COCO 2017 or the
synthetic shapes), COCO evaluation."""

from biograd.detection.coco_eval import CocoEvalResult, evaluate_coco, run_coco_eval
from biograd.detection.data import (
    BoxDataset,
    DetectionData,
    GroupedBatchSampler,
    aspect_ratio_groups,
    build_detection_data,
    collate,
)
from biograd.detection.model import build_retinanet, detector_parts
from biograd.detection.shapes import make_shapes

__all__ = [
    "BoxDataset",
    "CocoEvalResult",
    "DetectionData",
    "GroupedBatchSampler",
    "aspect_ratio_groups",
    "build_detection_data",
    "build_retinanet",
    "collate",
    "detector_parts",
    "evaluate_coco",
    "make_shapes",
    "run_coco_eval",
]
