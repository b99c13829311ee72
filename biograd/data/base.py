"""What every data source returns, the error they raise, and the registry of source names.

A source is one function, `build(options) -> DataBundle`, registered under its name by the
file that defines it; `build_data` (in `biograd.data.build`) looks names up here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch.utils.data import Dataset, Subset

from biograd._names import name_key
from biograd.errors import UsageError

_WORKER_PREFIX = "Caught DataError"


class DataError(UsageError):
    """A problem with the data that the user can fix; the message is one line: what, and how.

    A DataError raised while a DataLoader worker loads an item (a corrupt image, say) comes back
    to the main process re-made from the worker's whole traceback; its message is then cut back
    to the original line, and the traceback kept in `worker_traceback`.
    """

    def __init__(self, message: str) -> None:
        self.worker_traceback: str | None = None
        if message.startswith(_WORKER_PREFIX):
            self.worker_traceback = message
            last = message.rstrip().splitlines()[-1]
            message = last.split("DataError: ", 1)[-1]
        super().__init__(message)


@dataclass
class DataBundle:
    """The two splits of a data set and what a model needs to know about them.

    Items of `train` and `val` are (image, label): a float tensor (in_channels, image_size,
    image_size), already normalised, and an int in [0, num_classes). `val` is the test split
    unless `hold_out` made it a part of the training split (then `test` is the test split).
    """

    train: Dataset
    val: Dataset
    num_classes: int
    in_channels: int
    image_size: int  # H = W of the tensors the model sees
    name: str  # "digits", "fashion-mnist", "imagefolder:/abs/path", ...
    train_plain: Dataset | None = None  # the training split without augmentation, if it has
    test: Dataset | None = None  # the test split, when val is held out of the training split
    val_split: str = "test"  # what val is: "test" (the test split) or "held out of train"


@dataclass(frozen=True)
class DataOptions:
    """The options `build_data` hands every source; a source ignores those it has no use for.

    image_size: resize to this H = W (None: the source's own size).
    root: where to look for (and download into) files, instead of the default places.
    download: whether a source may fetch missing files from the internet.
    fake_size: the number of training images of `fake` (validation: a quarter of it).
    """

    image_size: int | None = None
    root: str | None = None
    download: bool = False
    fake_size: int = 512


Source = Callable[[DataOptions], DataBundle]

_SOURCES: dict[str, Source] = {}
_ORDER: dict[str, int] = {}
_KEYS: dict[str, str] = {}  # name_key -> the registered name


def register(name: str, *, order: int = 100) -> Callable[[Source], Source]:
    """Decorator: make `build(options) -> DataBundle` available as the data set `name`."""

    def add(build: Source) -> Source:
        if name_key(name) in _KEYS:
            raise ValueError(f"data set name {name!r} is already taken")
        _SOURCES[name] = build
        _ORDER[name] = order
        _KEYS[name_key(name)] = name
        return build

    return add


def list_datasets() -> list[str]:
    """The registered data set names (a folder with train/ and val/ works too)."""
    return sorted(_SOURCES, key=lambda n: (_ORDER[n], n))


def get_source(name: str) -> Source | None:
    """The source registered as `name` (case and "_" vs "-" do not matter), or None."""
    registered = _KEYS.get(name_key(name))
    return None if registered is None else _SOURCES[registered]


def hold_out(bundle: DataBundle, count: int) -> DataBundle:
    """`bundle` with `count` training images held out as its validation split (without the
    training augmentation), the test split kept as `test`. The images held out are the same
    for every run, rule and seed: a permutation drawn from the data set's name and `count`."""
    import torch

    from biograd._seed import mix

    total = len(bundle.train)
    if not 0 < count < total:
        raise DataError(f"--val-split {count}: {bundle.name} has {total} training images; hold "
                        f"out between 1 and {total - 1}")
    order = torch.randperm(total, generator=torch.Generator().manual_seed(
        mix("val-split", bundle.name, count))).tolist()
    keep, held = sorted(order[count:]), sorted(order[:count])
    plain = bundle.train_plain if bundle.train_plain is not None else bundle.train
    return DataBundle(Subset(bundle.train, keep), Subset(plain, held), bundle.num_classes,
                      bundle.in_channels, bundle.image_size, bundle.name,
                      test=bundle.val, val_split="held out of train")
