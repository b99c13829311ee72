"""CIFAR-10 and CIFAR-100 through torchvision's loaders: 32×32 colour images, 50k/10k.

The python version of each (cifar-10-batches-py/, cifar-100-python/, as their archives unpack)
is looked for in `root` (--data-root), else $BIOGRAD_DATA, else ~/.cache/biograd, where
`--download` has torchvision fetch and check the archive. torchvision's CIFAR10 and CIFAR100
read the batches; of files already on disk only their presence is checked, not torchvision's
md5 sums, so that files written in CIFAR's own format (the tests' fixtures, a re-packed copy)
load too. The training split augments as biotorch's benchmark and He et al. 2016 do (a random
32×32 crop of the image padded by 4, a random horizontal flip); both splits are normalised by
the training split's per-channel mean and std. The test split is the validation split unless
`--val-split N` holds N training images out for it.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

from torchvision import datasets, transforms

from biograd.data.base import DataBundle, DataError, DataOptions, register

# per-channel mean and std of the training images, in [0, 1] (as biotorch's benchmark uses)
STATS = {
    "cifar10": ((0.4914, 0.4821, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
}


class _OnDisk:
    """torchvision's CIFAR reader, with files on disk checked for presence rather than md5."""

    def _check_integrity(self) -> bool:
        folder = Path(self.root) / self.base_folder
        return all((folder / name).is_file() for name, _ in self.train_list + self.test_list)

    def _load_meta(self) -> None:
        path = Path(self.root) / self.base_folder / self.meta["filename"]
        if not path.is_file():
            raise DataError(f"{path} is missing: the folder holds only part of the data set")
        with open(path, "rb") as fh:
            names = pickle.load(fh, encoding="latin1")[self.meta["key"]]
        self.classes = list(names)
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}


class CIFAR10Files(_OnDisk, datasets.CIFAR10):
    """torchvision's CIFAR10 (see `_OnDisk`)."""


class CIFAR100Files(_OnDisk, datasets.CIFAR100):
    """torchvision's CIFAR100 (see `_OnDisk`)."""


def _root(options: DataOptions) -> Path:
    return Path(options.root or os.environ.get("BIOGRAD_DATA")
                or Path.home() / ".cache" / "biograd").expanduser()


def _build(name: str, cls: type, title: str, folder: str, num_classes: int,
           options: DataOptions) -> DataBundle:
    root = _root(options)
    mean, std = STATS[name]
    size = options.image_size or 32
    resize = [transforms.Resize(size)] if size != 32 else []
    normalise = [transforms.ToTensor(), transforms.Normalize(mean, std)]
    augment = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()]
    splits = {}
    try:
        for split, steps in (("train", augment), ("plain", []), ("test", [])):
            splits[split] = cls(str(root), train=split != "test", download=options.download,
                                transform=transforms.Compose([*steps, *resize, *normalise]))
    except RuntimeError as err:
        if "not found or corrupted" not in str(err):
            raise
        names = [n for n, _ in cls.train_list + cls.test_list]
        missing = [n for n in names if not (root / folder / n).is_file()]
        which = f" (missing: {', '.join(missing)})" if missing and len(missing) < len(names) \
            else ""
        raise DataError(f"{title} not found: no {folder}/ with its batches in {root}{which}; "
                        f"pass --download to fetch it, or point --data-root at a folder "
                        f"holding {folder}/") from None
    except (pickle.UnpicklingError, EOFError, ValueError, KeyError) as err:
        raise DataError(f"{title} in {root / folder} has a file that is not a CIFAR batch "
                        f"({type(err).__name__}: {str(err)[:80]}): replace it, e.g. by "
                        f"unpacking the archive again") from None
    except OSError as err:  # a download that could not reach the server, a disk error
        raise DataError(f"{title}: {err} (with --download, the archive is fetched from the "
                        f"internet; without it, the batches are read from {root / folder})"
                        ) from None
    return DataBundle(splits["train"], splits["test"], num_classes=num_classes,
                      in_channels=3, image_size=size, name=name,
                      train_plain=splits["plain"])


@register("cifar10", order=40)
def cifar10(options: DataOptions) -> DataBundle:
    """CIFAR-10: 10 classes, 50,000 training and 10,000 test images."""
    return _build("cifar10", CIFAR10Files, "CIFAR-10", "cifar-10-batches-py", 10, options)


@register("cifar100", order=41)
def cifar100(options: DataOptions) -> DataBundle:
    """CIFAR-100: 100 classes, 50,000 training and 10,000 test images."""
    return _build("cifar100", CIFAR100Files, "CIFAR-100", "cifar-100-python", 100, options)
