"""What every data source returns, the error they raise, and the registry of source names.

A source is one function, `build(options) -> DataBundle`, registered under its name by the
file that defines it; `build_data` (in `biograd.data.build`) looks names up here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch.utils.data import Dataset

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
    image_size), already normalised, and an int in [0, num_classes).
    """

    train: Dataset
    val: Dataset
    num_classes: int
    in_channels: int
    image_size: int  # H = W of the tensors the model sees
    name: str  # "digits", "fashion-mnist", "imagefolder:/abs/path", ...


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
