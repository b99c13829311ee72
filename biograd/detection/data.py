"""Detection data in COCO format: a root folder in, train and val datasets of boxes out.

Two layouts are read, and told apart by the annotation files present:

    shapes (`biograd make-shapes`)        MS-COCO 2017
    root/train/*.png                      root/train2017/*.jpg
    root/val/*.png                        root/val2017/*.jpg
    root/annotations/instances_train.json root/annotations/instances_train2017.json
    root/annotations/instances_val.json   root/annotations/instances_val2017.json

A split named s reads root/annotations/instances_s.json and its images from root/s/; for s
"train" or "val", instances_s2017.json and root/s2017/ are used when instances_s.json is absent.

Items are (image, target): image a float tensor (3, H, W) in [0, 1] at the file's own size
(the detector resizes), target {"boxes": (N, 4) float32 x1 y1 x2 y2 in pixels, "labels": (N,)
int64, "image_id": int}. Labels are contiguous, as torchvision's RetinaNet wants them (in
[0, num_classes), no background class): the label of a category is the index of its id among
the sorted category ids, and `label_to_category_id[label]` maps back for evaluation.

Annotations are checked once, when the data is built; each problem raises DataError naming
the file and the annotation id: a file that is missing, not JSON or lacks images,
annotations or categories; an annotation whose image or category is not in the file; a bbox
that is not 4 finite numbers, has a negative width or height, or lies entirely outside its
image; an image whose file is missing from the folder (or, when read, whose size differs
from the one annotated). A box partly outside its image is clipped to it (counted in
`stats`). Targets leave out crowd regions (iscrowd=1) and boxes no more than min_box_size
pixels wide or high after clipping; training also leaves out images with no box left
(keep_empty_train=True keeps them), validation keeps every image. `coco_val`, what
`evaluate_coco` scores against, holds the validation annotations as written, crowds included,
as COCO's own evaluation expects.

The datasets keep their annotations in numpy arrays, not in Python objects or a pycocotools
index: they pickle small (DataLoader workers, spawn too) and forked workers do not copy them
page by page as they touch reference counts.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from biograd.data import DataError
from biograd.data.imagefolder import load_image

LAYOUT = ("root/annotations/instances_<split>.json with the images in root/<split>/ (the "
          "layout of `biograd make-shapes` and of MS-COCO 2017)")

Target = dict[str, Any]


class BoxDataset(Dataset):
    """Images of one split and their boxes; item i is (image (3, H, W) in [0, 1], target).

    hflip: the probability that an item is mirrored left to right, boxes with it (0 for
    validation). The draw is `torch.rand`, so it follows torch's seed (per DataLoader worker).
    `aspect_ratios` (width / height per item) feeds `aspect_ratio_groups`.
    """

    def __init__(self, folder: Path, file_names: Sequence[str], image_ids: Sequence[int],
                 sizes: np.ndarray, boxes: np.ndarray, labels: np.ndarray,
                 counts: Sequence[int], hflip: float = 0.0) -> None:
        self.folder = str(folder)
        self.file_names = np.array(file_names, dtype=str)  # one array: no per-item objects
        self.image_ids = np.asarray(image_ids, dtype=np.int64)
        self.sizes = np.asarray(sizes, dtype=np.int64).reshape(-1, 2)  # (n, 2) width, height
        self.boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)  # (m, 4) all items
        self.labels = np.asarray(labels, dtype=np.int64)  # (m,)
        self.offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])  # (n + 1,)
        self.hflip = hflip

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def aspect_ratios(self) -> np.ndarray:
        return self.sizes[:, 0] / self.sizes[:, 1]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Target]:
        path = os.path.join(self.folder, str(self.file_names[i]))
        picture = load_image(path)
        width, height = (int(v) for v in self.sizes[i])
        if picture.size != (width, height):
            raise DataError(f"image {path} is {picture.size[0]}×{picture.size[1]} but its "
                            f"annotations say {width}×{height}: fix the file or the annotations")
        pixels = torch.from_numpy(np.array(picture)).permute(2, 0, 1).contiguous()  # (3, H, W)
        image = pixels.to(torch.float32).div_(255)
        a, b = self.offsets[i], self.offsets[i + 1]
        boxes = torch.from_numpy(self.boxes[a:b].copy())  # (N, 4) x1 y1 x2 y2
        if self.hflip > 0 and torch.rand(()).item() < self.hflip:
            image = image.flip(-1)
            boxes[:, [0, 2]] = width - boxes[:, [2, 0]]
        target = {"boxes": boxes, "labels": torch.from_numpy(self.labels[a:b].copy()),
                  "image_id": int(self.image_ids[i])}
        return image, target


@dataclass
class DetectionData:
    """The splits of a COCO-format data set and what a detector and its evaluation need.

    num_classes: K, the number of categories; labels are in [0, K).
    label_to_category_id[label] and category_names[label]: the category a label stands for.
    coco_val: a pycocotools COCO of the validation annotations (for `evaluate_coco`).
    stats[split]: counts of images, annotations, boxes kept, crowd, degenerate, clipped and
    empty images left out.
    """

    train: BoxDataset | None
    val: BoxDataset
    num_classes: int
    label_to_category_id: tuple[int, ...]
    category_names: tuple[str, ...]
    coco_val: Any
    root: Path
    stats: dict[str, dict[str, int]] = field(default_factory=dict)


def collate(batch: Sequence[tuple[torch.Tensor, Target]]
            ) -> tuple[list[torch.Tensor], list[Target]]:
    """A DataLoader's collate_fn for detection: ([image, ...], [target, ...]), sizes may differ."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


def aspect_ratio_groups(ratios: Sequence[float] | np.ndarray,
                        edges: Sequence[float] = (1.0,)) -> list[int]:
    """The bin of each width / height ratio between `edges`: by default 0 for portrait images
    (ratio < 1) and 1 for square or landscape ones."""
    return np.digitize(np.asarray(ratios, dtype=np.float64), np.asarray(edges)).tolist()


class GroupedBatchSampler(Sampler[list[int]]):
    """Batches of the indices `sampler` yields, each batch from one group (of aspect ratio, say).

    Each index goes to its group's buffer; a buffer that reaches batch_size becomes a batch.
    When the sampler runs out, the indices left over are cut into batches in group order, so
    only those few batches mix groups. There are always ceil(n / batch_size) batches
    (floor with drop_last) for the sampler's n indices: every DDP rank whose sampler
    (DistributedSampler) gives the same n runs the same number of steps.
    """

    def __init__(self, sampler: Sampler[int] | Sequence[int], group_ids: Sequence[int],
                 batch_size: int, drop_last: bool = False) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size is {batch_size}: give at least 1")
        self.sampler = sampler
        self.group_ids = list(group_ids)
        self.batch_size = batch_size
        self.drop_last = drop_last

    def __iter__(self) -> Iterator[list[int]]:
        buffers: dict[int, list[int]] = defaultdict(list)
        for index in self.sampler:
            group = self.group_ids[index]
            buffers[group].append(index)
            if len(buffers[group]) == self.batch_size:
                yield buffers.pop(group)
        rest = [index for group in sorted(buffers) for index in buffers[group]]
        for start in range(0, len(rest), self.batch_size):
            batch = rest[start:start + self.batch_size]
            if len(batch) == self.batch_size or not self.drop_last:
                yield batch

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Passed on to the sampler (DistributedSampler reshuffles by epoch)."""
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)


# --- reading and checking annotation files --------------------------------------------------

def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _locate(root: Path, split: str) -> tuple[Path, Path]:
    """The annotation file and image folder of `split` under `root` (either layout)."""
    names = [split] + ([f"{split}2017"] if split in ("train", "val") else [])
    for name in names:
        annotations = root / "annotations" / f"instances_{name}.json"
        if annotations.is_file():
            folder = root / name
            if not folder.is_dir():
                raise DataError(f"{annotations} has no image folder {folder}: give {LAYOUT}")
            return annotations, folder
    looked = " or ".join(str(root / "annotations" / f"instances_{n}.json") for n in names)
    raise DataError(f"no annotations for split {split!r}: {looked} does not exist; give {LAYOUT}")


def _read(path: Path) -> dict:
    """The JSON of a COCO instances file, checked to have its three lists."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is not valid JSON ({err}): give a COCO instances file") from err
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read {path} ({err}): give a COCO instances file") from err
    if not isinstance(data, dict):
        raise DataError(f"{path} holds a JSON {type(data).__name__}, not an object: give a "
                        "COCO instances file (images, annotations, categories)")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{path} has no {key!r} list: a COCO instances file needs images, "
                            "annotations and categories")
    return data


_SINGULAR = {"images": "image", "annotations": "annotation", "categories": "category"}


def _entries(data: dict, key: str, fields: dict[str, Any], path: Path) -> dict[int, dict]:
    """The entries of data[key] by id, each checked to have `fields` of the right type."""
    by_id: dict[int, dict] = {}
    for n, entry in enumerate(data[key]):
        where = f"{_SINGULAR[key]} #{n}" + (f" (id {entry['id']})" if isinstance(entry, dict)
                                            and "id" in entry else "")
        if not isinstance(entry, dict):
            raise DataError(f"{where} of {path} is not an object: fix the file")
        for name, check in fields.items():
            if not check(entry.get(name)):
                raise DataError(f"{where} of {path} has no valid {name!r} (got "
                                f"{entry.get(name)!r}): fix the file")
        if entry["id"] in by_id:
            raise DataError(f"{where} of {path} repeats id {entry['id']}: ids must be unique")
        by_id[entry["id"]] = entry
    return by_id


def _categories(data: dict, path: Path) -> dict[int, str]:
    cats = _entries(data, "categories", {"id": _is_int, "name": lambda v: isinstance(v, str)},
                    path)
    if not cats:
        raise DataError(f"{path} has no categories: list the object classes under 'categories'")
    return {i: cats[i]["name"] for i in sorted(cats)}


def _split(data: dict, path: Path, folder: Path, label_of: dict[int, int], *,
           min_box_size: float, keep_empty: bool) -> tuple[dict, dict[str, int]]:
    """Check a split's images and annotations; its BoxDataset's arguments and its counts.

    Fills in "iscrowd" (0) and "area" (w·h) where an annotation lacks them, in `data`.
    """
    images = _entries(data, "images", {
        "id": _is_int, "file_name": lambda v: isinstance(v, str) and v != "",
        "width": lambda v: _is_int(v) and v > 0, "height": lambda v: _is_int(v) and v > 0,
    }, path)
    present = set(os.listdir(folder))
    missing = [img["file_name"] for img in images.values()
               if img["file_name"] not in present and not (folder / img["file_name"]).is_file()]
    if missing:
        raise DataError(f"{len(missing)} image(s) named in {path} are not in {folder} (first: "
                        f"{missing[0]}): put the images there or give the right root")
    anns = _entries(data, "annotations", {
        "id": _is_int, "image_id": _is_int, "category_id": _is_int,
        "bbox": lambda v: isinstance(v, list) and len(v) == 4 and all(map(_is_number, v)),
    }, path)
    stats = dict.fromkeys(("images", "annotations", "boxes", "crowd", "degenerate", "clipped",
                           "empty_dropped"), 0)
    stats["annotations"] = len(anns)
    per_image: dict[int, list[tuple[list[float], int]]] = defaultdict(list)
    for aid, ann in anns.items():
        image = images.get(ann["image_id"])
        if image is None:
            raise DataError(f"annotation id {aid} in {path} refers to image_id "
                            f"{ann['image_id']}, which is not among its images: fix or remove it")
        if ann["category_id"] not in label_of:
            raise DataError(f"annotation id {aid} in {path} refers to category_id "
                            f"{ann['category_id']}, which is not among its categories "
                            f"({sorted(label_of)}): fix or remove it")
        x, y, w, h = ann["bbox"]
        width, height = image["width"], image["height"]
        if w < 0 or h < 0:
            raise DataError(f"annotation id {aid} in {path} has a negative box size (bbox "
                            f"{ann['bbox']} is [x, y, w, h]): fix or remove it")
        if w > 0 and h > 0 and (x >= width or y >= height or x + w <= 0 or y + h <= 0):
            raise DataError(f"annotation id {aid} in {path}: bbox {ann['bbox']} lies entirely "
                            f"outside its {width}×{height} image: fix or remove it")
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", w * h)
        box = [max(x, 0.0), max(y, 0.0), min(x + w, width), min(y + h, height)]
        stats["clipped"] += box != [x, y, x + w, y + h]
        if ann["iscrowd"]:
            stats["crowd"] += 1
        elif box[2] - box[0] <= min_box_size or box[3] - box[1] <= min_box_size:
            stats["degenerate"] += 1
        else:
            per_image[ann["image_id"]].append((box, label_of[ann["category_id"]]))
    names, ids, sizes, boxes, labels, counts = [], [], [], [], [], []
    for image_id, image in images.items():
        found = per_image.get(image_id, [])
        if not found and not keep_empty:
            stats["empty_dropped"] += 1
            continue
        names.append(image["file_name"])
        ids.append(image_id)
        sizes.append((image["width"], image["height"]))
        boxes.extend(box for box, _ in found)
        labels.extend(label for _, label in found)
        counts.append(len(found))
    stats["images"], stats["boxes"] = len(ids), len(boxes)
    if not ids:
        raise DataError(f"{path} lists no images" if not images else
                        f"no image of {path} has a box to train on: give annotated images "
                        "(or keep_empty_train=True)")
    arguments = {"folder": folder, "file_names": names, "image_ids": ids,
                 "sizes": np.array(sizes, dtype=np.int64).reshape(-1, 2),
                 "boxes": np.array(boxes, dtype=np.float32).reshape(-1, 4),
                 "labels": np.array(labels, dtype=np.int64), "counts": counts}
    return arguments, stats


def coco_api(data: dict) -> Any:
    """A pycocotools COCO index of an annotation dict already in memory (its prints silenced)."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def build_detection_data(root: str | Path, *, train_split: str | None = "train",
                         val_split: str = "val", min_box_size: float = 1.0,
                         keep_empty_train: bool = False, hflip: float = 0.5) -> DetectionData:
    """The detection data set under `root` (shapes or MS-COCO 2017 layout), checked.

    train_split None skips reading the training annotations (evaluation only; train is None).
    min_box_size: boxes at most this many pixels wide or high (after clipping) are left out
    of the targets. hflip: the training split's flip probability.
    """
    root = Path(root).expanduser().absolute()
    if not root.is_dir():
        raise DataError(f"{root} is not a folder: give {LAYOUT}")
    val_path, val_folder = _locate(root, val_split)
    val_json = _read(val_path)
    names = _categories(val_json, val_path)
    label_of = {category_id: label for label, category_id in enumerate(names)}
    splits: dict[str, BoxDataset] = {}
    stats: dict[str, dict[str, int]] = {}
    if train_split is not None:
        train_path, train_folder = _locate(root, train_split)
        train_json = _read(train_path)
        train_names = _categories(train_json, train_path)
        if train_names != names:
            raise DataError(f"{train_path} and {val_path} list different categories "
                            f"({train_names} vs {names}): give both the same")
        arguments, stats["train"] = _split(train_json, train_path, train_folder, label_of,
                                           min_box_size=min_box_size,
                                           keep_empty=keep_empty_train)
        del train_json  # COCO's is about 450 MB of JSON; only the arrays are kept
        splits["train"] = BoxDataset(**arguments, hflip=hflip)
    arguments, stats["val"] = _split(val_json, val_path, val_folder, label_of,
                                     min_box_size=min_box_size, keep_empty=True)
    return DetectionData(
        train=splits.get("train"), val=BoxDataset(**arguments),
        num_classes=len(names), label_to_category_id=tuple(names),
        category_names=tuple(names.values()), coco_val=coco_api(val_json), root=root,
        stats=stats,
    )
