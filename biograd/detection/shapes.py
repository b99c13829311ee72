"""A synthetic detection data set in COCO format: coloured shapes on textured backgrounds.

`make_shapes(out)` writes, in a few seconds and with nothing downloaded,

    out/train/000000.png ...            out/annotations/instances_train.json
    out/val/000000.png ...              out/annotations/instances_val.json

laid out as MS-COCO 2017 is (`build_detection_data` reads both). Each image holds 0 to 4
shapes (about one image in ten is empty), of the classes asked for, in random colours and
sizes from min_side to 0.9·image_size per side (COCO's small, medium and large, as far as the
image allows), never overlapping, on a background of noise, a gradient, stripes or a
checkerboard. A shape's box is the tight box of its drawn pixels ([x, y, w, h] in pixel
edges, as COCO's) and its area the count of those pixels (COCO's area is the mask's too).

Category ids are 1, 3, 5, ... in the order of `classes`, deliberately not 0..K-1, so that code
which confuses a category id with a contiguous label fails on this data. Image i of a split
is drawn from a generator seeded with (seed, split, i): the same seed gives the same files.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from biograd.errors import UsageError

Cell = tuple[int, int, int]  # x, y of the top-left corner and side s of the square drawn in
Drawer = Callable[[ImageDraw.ImageDraw, Cell, np.random.Generator], None]

EMPTY_FRACTION = 0.1  # of the images hold no shape
MAX_SHAPES = 4
MIN_SIDE = 32  # smallest image_size accepted


def _circle(draw: ImageDraw.ImageDraw, cell: Cell, rng: np.random.Generator) -> None:
    x, y, s = cell
    draw.ellipse([x, y, x + s - 1, y + s - 1], fill=255)


def _square(draw: ImageDraw.ImageDraw, cell: Cell, rng: np.random.Generator) -> None:
    x, y, s = cell
    draw.rectangle([x, y, x + s - 1, y + s - 1], fill=255)


def _triangle(draw: ImageDraw.ImageDraw, cell: Cell, rng: np.random.Generator) -> None:
    x, y, s = cell
    apex = x + round(s * rng.uniform(0.2, 0.8))
    top, bottom = (y, y + s - 1) if rng.random() < 0.5 else (y + s - 1, y)  # apex up or down
    draw.polygon([(x, bottom), (x + s - 1, bottom), (apex, top)], fill=255)


def _diamond(draw: ImageDraw.ImageDraw, cell: Cell, rng: np.random.Generator) -> None:
    x, y, s = cell
    m = (s - 1) / 2
    draw.polygon([(x + m, y), (x + s - 1, y + m), (x + m, y + s - 1), (x, y + m)], fill=255)


def _cross(draw: ImageDraw.ImageDraw, cell: Cell, rng: np.random.Generator) -> None:
    x, y, s = cell
    a, b = round(s / 3), round(2 * s / 3) - 1
    draw.rectangle([x + a, y, x + b, y + s - 1], fill=255)
    draw.rectangle([x, y + a, x + s - 1, y + b], fill=255)


SHAPES: dict[str, Drawer] = {
    "circle": _circle, "square": _square, "triangle": _triangle, "diamond": _diamond,
    "cross": _cross,
}


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A (size, size, 3) float image in [0, 255]: noise, a gradient, stripes or a checkerboard."""
    c0 = rng.uniform(0, 255, 3)
    c1 = np.clip(c0 + rng.uniform(-90, 90, 3), 0, 255)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    angle = rng.uniform(0, np.pi)
    along = xx * np.cos(angle) + yy * np.sin(angle)  # (size, size) coordinate along a direction
    kind = rng.integers(4)
    if kind == 0:  # blobs: coarse noise upsampled, plus fine noise
        grid = rng.uniform(0, 1, (int(rng.integers(3, 9)),) * 2)
        coarse = Image.fromarray((grid * 255).astype(np.uint8)).resize((size, size),
                                                                       Image.BILINEAR)
        t = np.asarray(coarse, np.float64)[..., None] / 255
        image = c0 + t * (c1 - c0) + rng.normal(0, rng.uniform(5, 25), (size, size, 3))
    elif kind == 1:  # linear gradient
        t = (along - along.min()) / max(np.ptp(along), 1.0)
        image = c0 + t[..., None] * (c1 - c0)
    elif kind == 2:  # stripes, hard or soft
        wave = np.sin(2 * np.pi * along / rng.uniform(4, size / 4) + rng.uniform(0, 2 * np.pi))
        t = (wave > 0).astype(np.float64) if rng.random() < 0.5 else (wave + 1) / 2
        image = c0 + t[..., None] * (c1 - c0)
    else:  # checkerboard
        period = rng.uniform(4, size / 4)
        t = ((xx // period + yy // period) % 2)[..., None]
        image = c0 + t * (c1 - c0)
    return np.clip(image, 0, 255)


def _colour(rng: np.random.Generator, behind: np.ndarray) -> np.ndarray:
    """A random RGB colour that stands out from `behind` (the mean colour under the shape)."""
    best, best_gap = None, -1.0
    for _ in range(20):
        colour = rng.uniform(0, 255, 3)
        gap = float(np.linalg.norm(colour - behind))
        if gap > 100:
            return colour
        if gap > best_gap:
            best, best_gap = colour, gap
    return best


def _place(rng: np.random.Generator, size: int, low: int, taken: list[Cell]) -> Cell | None:
    """A square cell, side `low` or more, inside the image and clear of every taken cell (2 px
    gap); None if none was found."""
    high = int(0.9 * size)
    # COCO's size bands (side about < 32, 32 to 96, > 96 px) that fit, drawn alike often
    bands = [(a, min(b, high)) for a, b in ((low, 32), (32, 96), (96, high)) if a < high]
    for _ in range(30):
        a, b = bands[rng.integers(len(bands))]
        s = round(np.exp(rng.uniform(np.log(a), np.log(b))))  # log-uniform in the band
        x, y = (int(v) for v in rng.integers(0, size - s + 1, 2))
        if all(x + s + 2 <= tx or tx + ts + 2 <= x or y + s + 2 <= ty or ty + ts + 2 <= y
               for tx, ty, ts in taken):
            return x, y, s
    return None


def _image(rng: np.random.Generator, size: int, low: int, classes: Sequence[str]):
    """One image (PIL RGB) and its shapes as (class index, [x, y, w, h], pixel area)."""
    canvas = _background(rng, size)
    count = 0 if rng.random() < EMPTY_FRACTION else int(rng.integers(1, MAX_SHAPES + 1))
    taken: list[Cell] = []
    shapes = []
    for _ in range(count):
        cell = _place(rng, size, low, taken)
        if cell is None:
            continue
        taken.append(cell)
        k = int(rng.integers(len(classes)))
        mask = Image.new("L", (size, size), 0)
        SHAPES[classes[k]](ImageDraw.Draw(mask), cell, rng)
        inside = np.asarray(mask) > 0  # (size, size)
        canvas[inside] = _colour(rng, canvas[inside].mean(axis=0))
        x0, y0, x1, y1 = mask.getbbox()  # pixel edges: x1, y1 one past the last pixel
        shapes.append((k, [x0, y0, x1 - x0, y1 - y0], int(inside.sum())))
    canvas += rng.normal(0, 3, canvas.shape)  # sensor noise over everything
    return Image.fromarray(np.clip(canvas, 0, 255).round().astype(np.uint8)), shapes


def make_shapes(out: str | Path, *, train: int = 1600, val: int = 100, image_size: int = 64,
                seed: int = 0, classes: Sequence[str] = ("circle", "square", "triangle"),
                min_side: int = 12) -> Path:
    """Write the shapes data set (train and val splits) under `out`; returns `out`, absolute.

    Files already there with the same names are overwritten. classes: any of circle, square,
    triangle, diamond, cross; category id 2i+1 for the i-th. min_side: the smallest shape's
    side in pixels (COCO's small objects are under 32; under about 10 px a detector trained
    for minutes on a CPU finds almost none). The defaults are the CPU demo's (`biograd detect`).
    """
    unknown = [c for c in classes if c not in SHAPES]
    if unknown or not classes or len(set(classes)) != len(classes):
        raise UsageError(f"shape classes {list(classes)}: give distinct names among "
                         f"{', '.join(SHAPES)}")
    if image_size < MIN_SIDE:
        raise UsageError(f"image size {image_size}: give at least {MIN_SIDE} pixels")
    if not 2 <= min_side <= 0.9 * image_size:
        raise UsageError(f"smallest shape side {min_side}: give 2 to {int(0.9 * image_size)} "
                         f"pixels for {image_size}-pixel images")
    if train < 1 or val < 1:
        raise UsageError(f"{train} train and {val} val images: give at least 1 of each")
    root = Path(out).expanduser().absolute()
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    categories = [{"id": 2 * i + 1, "name": name, "supercategory": "shape"}
                  for i, name in enumerate(classes)]
    next_ann = 1
    for split_no, (split, count) in enumerate((("train", train), ("val", val))):
        folder = root / split
        folder.mkdir(exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            rng = np.random.default_rng((seed, split_no, i))
            picture, shapes = _image(rng, image_size, min_side, classes)
            name = f"{i:06d}.png"
            picture.save(folder / name, compress_level=1)
            images.append({"id": i + 1, "file_name": name, "width": image_size,
                           "height": image_size})
            for k, box, area in shapes:
                annotations.append({"id": next_ann, "image_id": i + 1,
                                    "category_id": categories[k]["id"], "bbox": box,
                                    "area": area, "iscrowd": 0})
                next_ann += 1
        coco = {"info": {"description": f"biograd shapes, seed {seed}"},
                "images": images, "annotations": annotations, "categories": categories}
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
    return root
