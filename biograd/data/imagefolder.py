"""Any folder laid out as ImageNet is: <folder>/train/<class>/*.jpg and <folder>/val/<class>/*.

Read by torchvision's ImageFolder (RGB, so in_channels is 3), with the usual ImageNet
recipe: training images through RandomResizedCrop(image_size) and a horizontal flip,
validation images through Resize(image_size · 256/224) and CenterCrop(image_size), both then
normalised by ImageNet's mean and std; image_size defaults to 224. train/ and val/ must hold
the same class folders, none of them without images.

A corrupt or unreadable image is an error, not a skipped item: reading it raises DataError
naming the file (from a DataLoader worker too; see `DataError`), so a long run never trains
quietly on less data than it was given. Files are only opened when read, so the error comes
when that image's turn comes, not at start-up; delete or replace the file and resume.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from PIL import Image

from biograd.data.base import DataBundle, DataError, DataOptions, list_datasets

log = logging.getLogger("biograd")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_SIZE = 224
LAYOUT = "a folder with train/ and val/ subfolders, each holding one subfolder of images per class"


def load_image(path: str) -> Image.Image:
    """ImageFolder's loader: the image at `path` as RGB; DataError naming the file if it fails."""
    try:
        with open(path, "rb") as f:
            picture = Image.open(f)
            if picture.mode.startswith("I;16") or picture.mode in ("I", "F"):
                picture = _to_8_bit(picture)  # PIL's convert would clip it to 0..255
            return picture.convert("RGB")
    except Exception as err:  # PIL's decoders raise many types; each means this file is bad
        detail = " ".join(str(err).split()) or type(err).__name__
        raise DataError(f"cannot read image {path} ({detail}): delete or replace it") from err


def _to_8_bit(picture: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit integer or float grayscale image as 8-bit grayscale: 16-bit modes
    (and "I", which PIL gives them) scaled from 0..65535, floats from 0..1."""
    import numpy as np

    values = np.asarray(picture, dtype=np.float64)
    top = 1.0 if picture.mode == "F" else 65535.0
    return Image.fromarray(np.clip(values / top * 255 + 0.5, 0, 255).astype(np.uint8), "L")


def train_transform(size: int):
    from torchvision import transforms

    return transforms.Compose([
        transforms.RandomResizedCrop(size),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def val_transform(size: int):
    from torchvision import transforms

    return transforms.Compose([
        transforms.Resize(round(size * 256 / 224)),
        transforms.CenterCrop(size),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def _split(folder: Path, transform):
    """ImageFolder over `folder`, checked to have class folders, each with images."""
    from torchvision.datasets import ImageFolder

    if not any(entry.is_dir() for entry in folder.iterdir()):
        raise DataError(f"{folder} has no class folders: put each class's images in "
                        f"{folder}/<class>/")
    dataset = ImageFolder(str(folder), transform=transform, loader=load_image, allow_empty=True)
    counts = Counter(dataset.targets)
    empty = [name for i, name in enumerate(dataset.classes) if counts[i] == 0]
    if empty:
        raise DataError(f"no images in class folder(s) {', '.join(empty)} of {folder}: add "
                        "images (.jpg, .png, ...) or remove the folders")
    return dataset


def build_imagefolder(path: str | Path, options: DataOptions) -> DataBundle:
    """The image folder at `path` as a DataBundle; DataError if it is not laid out as needed."""
    folder = Path(path).expanduser().absolute()
    if not folder.exists():
        raise DataError(f"{folder} does not exist: give {LAYOUT}, or a data set name "
                        f"({', '.join(list_datasets())})")
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder: give {LAYOUT}")
    for split in ("train", "val"):
        if not (folder / split).is_dir():
            raise DataError(f"{folder} has no {split}/ subfolder: give {LAYOUT}")
    size = options.image_size or DEFAULT_SIZE
    train = _split(folder / "train", train_transform(size))
    val = _split(folder / "val", val_transform(size))
    if train.classes != val.classes:
        only_train = sorted(set(train.classes) - set(val.classes))
        only_val = sorted(set(val.classes) - set(train.classes))
        raise DataError(f"train/ and val/ of {folder} have different classes (only in train/: "
                        f"{', '.join(only_train) or 'none'}; only in val/: "
                        f"{', '.join(only_val) or 'none'}): give both the same class folders")
    from torchvision.datasets.folder import IMG_EXTENSIONS

    log.info("%s: %s training and %s validation images in %d classes (files ending %s; "
             "others, .gif among them, are not read)", folder, f"{len(train):,}",
             f"{len(val):,}", len(train.classes), " ".join(IMG_EXTENSIONS))
    return DataBundle(train, val, num_classes=len(train.classes), in_channels=3,
                      image_size=size, name=f"imagefolder:{folder}",
                      train_plain=_split(folder / "train", val_transform(size)))
