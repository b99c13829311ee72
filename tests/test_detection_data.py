"""Detection data: the shapes generator, COCO-format loading and its errors, COCO evaluation.

Every file is written here (shapes at 64 px, and a hand-made COCO 2017 layout with a crowd
box, an empty image, a box partly outside its image and non-contiguous category ids);
nothing is downloaded.
"""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, RandomSampler

from biograd.data import DataError
from biograd.detection import (
    GroupedBatchSampler,
    aspect_ratio_groups,
    build_detection_data,
    collate,
    evaluate_coco,
    make_shapes,
    run_coco_eval,
)
from biograd.errors import UsageError

TRAIN_N, VAL_N, SIZE = 12, 6, 64


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory) -> Path:
    return make_shapes(tmp_path_factory.mktemp("shapes"), train=TRAIN_N, val=VAL_N,
                       image_size=SIZE, seed=3)


@pytest.fixture(scope="module")
def shapes(shapes_root):
    return build_detection_data(shapes_root)


def xyxy(bbox):
    x, y, w, h = bbox
    return [x, y, x + w, y + h]


# --- a hand-written COCO 2017 layout ----------------------------------------------------------

CATEGORIES = [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}]  # unsorted, not 0..K-1
IMAGES = [
    {"id": 10, "file_name": "a.png", "width": 40, "height": 30},
    {"id": 20, "file_name": "b.png", "width": 20, "height": 50},  # no annotations
    {"id": 30, "file_name": "c.png", "width": 40, "height": 30},
]
ANNOTATIONS = [
    {"id": 1, "image_id": 10, "category_id": 7, "bbox": [2, 3, 10, 8], "area": 80, "iscrowd": 0},
    {"id": 2, "image_id": 10, "category_id": 3, "bbox": [20, 5, 8, 8], "area": 64, "iscrowd": 1},
    {"id": 3, "image_id": 10, "category_id": 3, "bbox": [30, 20, 20, 20], "area": 400,
     "iscrowd": 0},  # partly outside: clipped to [30, 20, 40, 30]
    {"id": 4, "image_id": 10, "category_id": 7, "bbox": [5, 20, 1, 6], "area": 6,
     "iscrowd": 0},  # 1 px wide: degenerate
    {"id": 5, "image_id": 30, "category_id": 3, "bbox": [4, 4, 12, 12]},  # no area / iscrowd
]


def write_split(root: Path, split: str, data: dict | str, images=IMAGES) -> None:
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    text = data if isinstance(data, str) else json.dumps(data)
    (root / "annotations" / f"instances_{split}.json").write_text(text)
    (root / split).mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for image in images:
        pixels = rng.integers(0, 256, (image["height"], image["width"], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / split / image["file_name"])


def coco_json(**changes) -> dict:
    data = {"images": IMAGES, "annotations": ANNOTATIONS, "categories": CATEGORIES}
    data.update(changes)
    return json.loads(json.dumps(data))  # a deep copy


@pytest.fixture
def coco_root(tmp_path) -> Path:
    for split in ("train2017", "val2017"):
        write_split(tmp_path, split, coco_json())
    return tmp_path


# --- make_shapes ------------------------------------------------------------------------------

def test_make_shapes_writes_coco_files(shapes_root):
    for split, n in (("train", TRAIN_N), ("val", VAL_N)):
        data = json.loads((shapes_root / "annotations" / f"instances_{split}.json").read_text())
        assert [c["id"] for c in data["categories"]] == [1, 3, 5]
        assert [c["name"] for c in data["categories"]] == ["circle", "square", "triangle"]
        assert len(data["images"]) == n == len(list((shapes_root / split).glob("*.png")))
        for image in data["images"]:
            assert (image["width"], image["height"]) == (SIZE, SIZE)
            with Image.open(shapes_root / split / image["file_name"]) as picture:
                assert picture.size == (SIZE, SIZE) and picture.mode == "RGB"
        per_image = np.bincount([a["image_id"] for a in data["annotations"]], minlength=n + 1)
        assert per_image.max() <= 4
        for ann in data["annotations"]:
            x, y, w, h = ann["bbox"]
            assert ann["iscrowd"] == 0 and ann["category_id"] in (1, 3, 5)
            assert x >= 0 and y >= 0 and x + w <= SIZE and y + h <= SIZE and w > 0 and h > 0
            assert 0 < ann["area"] <= w * h


def test_make_shapes_is_deterministic(tmp_path, shapes_root):
    again = make_shapes(tmp_path / "again", train=TRAIN_N, val=VAL_N, image_size=SIZE, seed=3)
    other = make_shapes(tmp_path / "other", train=TRAIN_N, val=VAL_N, image_size=SIZE, seed=4)
    name = "annotations/instances_train.json"
    assert (again / name).read_bytes() == (shapes_root / name).read_bytes()
    assert (other / name).read_bytes() != (shapes_root / name).read_bytes()
    assert (again / "val/000001.png").read_bytes() == (shapes_root / "val/000001.png").read_bytes()


def test_make_shapes_has_varied_content(tmp_path):
    root = make_shapes(tmp_path, train=60, val=1, image_size=128, seed=0)
    data = json.loads((root / "annotations/instances_train.json").read_text())
    areas = [a["area"] for a in data["annotations"]]
    assert min(areas) < 32**2 and any(32**2 <= a < 96**2 for a in areas)  # small and medium
    assert {a["category_id"] for a in data["annotations"]} == {1, 3, 5}
    assert len({a["image_id"] for a in data["annotations"]}) < 60  # some empty images


def test_make_shapes_min_side(tmp_path):
    for side in (6, 20):
        root = make_shapes(tmp_path / str(side), train=30, val=1, image_size=64, min_side=side)
        data = json.loads((root / "annotations/instances_train.json").read_text())
        longest = [max(a["bbox"][2:]) for a in data["annotations"]]
        assert min(longest) >= side - 1 and max(longest) <= int(0.9 * 64)
        if side == 6:
            assert min(longest) < 12  # the smallest allowed sizes do occur


@pytest.mark.parametrize("kwargs", [{"classes": ("circle", "hexagon")}, {"image_size": 8},
                                    {"train": 0}, {"classes": ()}, {"min_side": 1},
                                    {"min_side": 60}])
def test_make_shapes_rejects_bad_options(tmp_path, kwargs):
    with pytest.raises(UsageError):
        make_shapes(tmp_path, **kwargs)


# --- loading ----------------------------------------------------------------------------------

def test_shapes_load_with_contiguous_labels(shapes, shapes_root):
    assert shapes.num_classes == 3
    assert shapes.label_to_category_id == (1, 3, 5)
    assert shapes.category_names == ("circle", "square", "triangle")
    assert len(shapes.val) == VAL_N  # empty images kept
    train_json = json.loads((shapes_root / "annotations/instances_train.json").read_text())
    annotated = {a["image_id"] for a in train_json["annotations"]}
    assert len(shapes.train) == len(annotated) == TRAIN_N - shapes.stats["train"]["empty_dropped"]
    train = build_detection_data(shapes_root, hflip=0.0).train
    for i in range(len(train)):
        image, target = train[i]
        assert image.shape == (3, SIZE, SIZE) and image.dtype == torch.float32
        assert image.min() >= 0 and image.max() <= 1 and image.is_contiguous()
        assert target["boxes"].dtype == torch.float32 and target["boxes"].shape[1] == 4
        assert target["labels"].dtype == torch.int64
        assert isinstance(target["image_id"], int)
        anns = [a for a in train_json["annotations"] if a["image_id"] == target["image_id"]]
        assert target["boxes"].tolist() == [xyxy(a["bbox"]) for a in anns]
        assert [shapes.label_to_category_id[k] for k in target["labels"].tolist()] == \
               [a["category_id"] for a in anns]


def test_coco2017_layout_crowd_empty_clipped_degenerate(coco_root):
    data = build_detection_data(coco_root)
    assert data.label_to_category_id == (3, 7) and data.category_names == ("cat", "dog")
    assert data.num_classes == 2
    assert len(data.train) == 2 and len(data.val) == 3  # image 20 (empty) only in val
    assert data.train.image_ids.tolist() == [10, 30]
    _, target = data.val[0]
    assert target["image_id"] == 10
    assert target["boxes"].tolist() == [[2, 3, 12, 11], [30, 20, 40, 30]]  # crowd, 1 px gone
    assert target["labels"].tolist() == [1, 0]  # dog (7) is label 1, cat (3) label 0
    _, empty = data.val[1]
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)
    assert data.stats["val"] == {"images": 3, "annotations": 5, "boxes": 3, "crowd": 1,
                                 "degenerate": 1, "clipped": 1, "empty_dropped": 0}
    assert data.stats["train"]["empty_dropped"] == 1
    assert len(data.coco_val.getAnnIds()) == 5  # evaluation sees the crowd region
    assert data.coco_val.anns[5]["iscrowd"] == 0 and data.coco_val.anns[5]["area"] == 144
    kept = build_detection_data(coco_root, keep_empty_train=True)
    assert len(kept.train) == 3
    assert build_detection_data(coco_root, train_split=None).train is None


def test_min_box_size(coco_root):
    data = build_detection_data(coco_root, min_box_size=9)  # drops the 8 px high box too
    assert data.val[0][1]["boxes"].tolist() == [[30, 20, 40, 30]]


def test_hflip_mirrors_image_and_boxes(coco_root):
    data = build_detection_data(coco_root, hflip=1.0)
    assert data.val.hflip == 0
    flipped, target = data.train[0]
    plain, plain_target = data.val[0]
    assert torch.equal(flipped, plain.flip(-1))
    assert target["boxes"].tolist() == [[28, 3, 38, 11], [0, 20, 10, 30]]  # width 40
    assert torch.equal(target["labels"], plain_target["labels"])


def test_datasets_pickle_and_load_in_workers(shapes):
    val = pickle.loads(pickle.dumps(shapes.val))
    for (a, ta), (b, tb) in zip([val[0], val[1]], [shapes.val[0], shapes.val[1]], strict=True):
        assert torch.equal(a, b) and torch.equal(ta["boxes"], tb["boxes"])
    groups = aspect_ratio_groups(shapes.train.aspect_ratios)
    sampler = GroupedBatchSampler(RandomSampler(shapes.train), groups, batch_size=4)
    loader = DataLoader(shapes.train, batch_sampler=sampler, collate_fn=collate, num_workers=2)
    seen = []
    for images, targets in loader:
        assert isinstance(images, list) and len(images) == len(targets) <= 4
        seen += [t["image_id"] for t in targets]
    assert sorted(seen) == sorted(shapes.train.image_ids.tolist())


@pytest.mark.parametrize("drop_last", [False, True])
def test_grouped_batch_sampler(drop_last):
    groups = [0, 1, 1, 0, 1, 0, 0, 1, 1, 1, 0]  # 5 of group 0, 6 of group 1
    sampler = GroupedBatchSampler(range(len(groups)), groups, batch_size=3, drop_last=drop_last)
    batches = list(sampler)
    assert len(batches) == len(sampler) == (3 if drop_last else 4)
    assert [len({groups[i] for i in b}) for b in batches[:3]] == [1, 1, 1]  # full batches: pure
    flat = [i for b in batches for i in b]
    assert len(flat) == len(set(flat)) == (9 if drop_last else 11)
    assert aspect_ratio_groups([0.5, 1.0, 1.5]) == [0, 1, 1]


# --- errors -----------------------------------------------------------------------------------

def bad_annotation(**fields) -> dict:
    ann = {"id": 99, "image_id": 10, "category_id": 7, "bbox": [1, 1, 5, 5], "iscrowd": 0}
    return coco_json(annotations=[*ANNOTATIONS, {**ann, **fields}])


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "JSON list, not an object"),
    (coco_json(categories=None), "no 'categories' list"),
    (coco_json(categories=[]), "no categories"),
    (coco_json(images=[{"id": 10, "file_name": "a.png", "width": 40}]), "no valid 'height'"),
    (coco_json(images=[*IMAGES, IMAGES[0]]), "repeats id 10"),
    (bad_annotation(image_id=11), "annotation id 99 .* image_id 11"),
    (bad_annotation(category_id=4), "annotation id 99 .* category_id 4"),
    (bad_annotation(bbox=[1, 2, 3]), "annotation #5 \\(id 99\\) .* 'bbox'"),
    (bad_annotation(bbox=[1, 2, -3, 4]), "annotation id 99 .* negative box size"),
    (bad_annotation(bbox=[45, 2, 3, 4]), "annotation id 99 .* entirely outside"),
    (bad_annotation(bbox=[-9, 2, 8, 4]), "annotation id 99 .* entirely outside"),
])
def test_bad_annotations_raise_data_error(tmp_path, content, message):
    write_split(tmp_path, "train", coco_json())
    write_split(tmp_path, "val", content)
    with pytest.raises(DataError, match=message):
        build_detection_data(tmp_path)


def test_layout_errors(tmp_path):
    with pytest.raises(DataError, match="is not a folder"):
        build_detection_data(tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"instances_val\.json or .*instances_val2017\.json"):
        build_detection_data(tmp_path)
    write_split(tmp_path, "val", coco_json())
    with pytest.raises(DataError, match="split 'train'"):
        build_detection_data(tmp_path)
    assert len(build_detection_data(tmp_path, train_split=None).val) == 3
    (tmp_path / "val" / "c.png").unlink()
    with pytest.raises(DataError, match=r"1 image.* not in .*first: c\.png"):
        build_detection_data(tmp_path, train_split=None)
    for image in (tmp_path / "val").iterdir():
        image.unlink()
    (tmp_path / "val").rmdir()
    with pytest.raises(DataError, match="no image folder"):
        build_detection_data(tmp_path, train_split=None)


def test_category_mismatch_and_wrong_image_size(tmp_path):
    write_split(tmp_path, "train", coco_json(categories=CATEGORIES[:1],
                                             annotations=ANNOTATIONS[:1]))
    write_split(tmp_path, "val", coco_json())
    with pytest.raises(DataError, match="different categories"):
        build_detection_data(tmp_path)
    Image.new("RGB", (41, 30)).save(tmp_path / "val" / "a.png")
    data = build_detection_data(tmp_path, train_split=None)
    with pytest.raises(DataError, match=r"a\.png is 41×30 but its annotations say 40×30"):
        data.val[0]


# --- evaluation -------------------------------------------------------------------------------

def ground_truth_detections(coco, label_to_category_id, shift=0.0):
    """One dict per image with its non-crowd boxes, score 1, optionally moved by `shift`."""
    label_of = {c: k for k, c in enumerate(label_to_category_id)}
    detections = []
    for image_id in coco.getImgIds():
        anns = [a for a in coco.imgToAnns[image_id] if not a["iscrowd"]]
        boxes = torch.tensor([xyxy(a["bbox"]) for a in anns], dtype=torch.float32).reshape(-1, 4)
        detections.append({"image_id": image_id, "boxes": boxes + shift,
                           "scores": torch.ones(len(anns)),
                           "labels": torch.tensor([label_of[a["category_id"]] for a in anns],
                                                  dtype=torch.int64)})
    return detections


def test_perfect_detections_score_one(shapes):
    dets = ground_truth_detections(shapes.coco_val, shapes.label_to_category_id)
    result = run_coco_eval(shapes.coco_val, dets, shapes.label_to_category_id)
    assert result.metrics["AP"] == pytest.approx(1.0) and result.metrics["AP50"] == 1.0
    assert "Average Precision" in result.summary and len(result.stats) == 12
    assert set(result.metrics) == {"AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large"}


def test_category_ids_round_trip(coco_root):
    data = build_detection_data(coco_root, train_split=None)
    dets = ground_truth_detections(data.coco_val, data.label_to_category_id)
    metrics = evaluate_coco(data.coco_val, dets, data.label_to_category_id)
    assert metrics["AP"] == pytest.approx(1.0)  # the crowd region is ignored, not missed
    assert math.isnan(metrics["AP_large"])  # no large object: NaN, not -1
    swapped = evaluate_coco(data.coco_val, dets, data.label_to_category_id[::-1])
    assert swapped["AP"] < 0.5  # labels must go through the mapping, not be the ids


def test_far_and_missing_detections_score_zero(shapes):
    labels = shapes.label_to_category_id
    far = ground_truth_detections(shapes.coco_val, labels, shift=1000.0)
    assert evaluate_coco(shapes.coco_val, far, labels)["AP"] == 0.0
    assert evaluate_coco(shapes.coco_val, [], labels)["AP"] == 0.0
    empty = [{**d, "boxes": d["boxes"][:0], "scores": d["scores"][:0], "labels": d["labels"][:0]}
             for d in far]
    assert evaluate_coco(shapes.coco_val, empty, labels)["AP50"] == 0.0


def test_evaluation_rejects_bad_detections(shapes):
    labels = shapes.label_to_category_id
    dets = ground_truth_detections(shapes.coco_val, labels)
    with pytest.raises(ValueError, match="not in the ground truth"):
        evaluate_coco(shapes.coco_val, [{**dets[0], "image_id": 12345}], labels)
    bad = next(d for d in dets if len(d["labels"]))
    with pytest.raises(ValueError, match="labels must be in"):
        evaluate_coco(shapes.coco_val, [{**bad, "labels": bad["labels"] + 3}], labels)
