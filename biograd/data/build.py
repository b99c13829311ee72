"""`build_data`: a data set name, or a folder, to a DataBundle."""

from __future__ import annotations

from pathlib import Path

from biograd.data.base import DataBundle, DataError, DataOptions, get_source, list_datasets
from biograd.data.imagefolder import LAYOUT, build_imagefolder

FOLDER_PREFIX = "imagefolder:"


def build_data(spec: str, *, image_size: int | None = None, root: str | None = None,
               download: bool = False, fake_size: int = 512) -> DataBundle:
    """The data set `spec` names: a registered name (`list_datasets()`) or an image folder.

    spec: "digits", "mnist", "fashion-mnist", "fake", or a path (optionally prefixed
        "imagefolder:") to a folder with train/ and val/ subfolders of class folders. A
        registered name wins over a folder of the same name; write "./mnist" for the folder.
    image_size: resize images to image_size × image_size (None: the data set's own size;
        224 for folders, 32 for fake).
    root: where mnist and fashion-mnist look for their files, and download into.
    download: let mnist and fashion-mnist fetch missing files (torchvision's download).
    fake_size: the number of training images of `fake`.

    Raises DataError (a ValueError) with a one-line message on any problem with the data.
    """
    if image_size is not None and image_size < 1:
        raise DataError(f"image_size is {image_size}: give a positive number of pixels")
    options = DataOptions(image_size=image_size, root=root, download=download,
                          fake_size=fake_size)
    if source := get_source(spec):
        return source(options)
    path = spec.removeprefix(FOLDER_PREFIX)
    if path != spec or Path(path).expanduser().exists() or _looks_like_path(path):
        return build_imagefolder(path, options)
    if spec.lower() == "imagenet":  # what the shipped ImageNet recipes name: a folder
        raise DataError(f"imagenet is read from its folder: give --data /path/to/imagenet, "
                        f"{LAYOUT}")
    raise DataError(f"unknown data set {spec!r}: choose one of {', '.join(list_datasets())}, "
                    f"or give {LAYOUT}")


def _looks_like_path(spec: str) -> bool:
    return "/" in spec or "\\" in spec or spec.startswith(("~", "."))
