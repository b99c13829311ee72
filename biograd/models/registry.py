"""biograd's own models, registered by name, and the error every model look-up raises.

A builder is registered with the inputs it is meant for; `build_model` calls it as
`builder(num_classes=..., in_channels=..., image_size=..., **options)`, and the tests sweep
the registry over those inputs.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from biograd._check import problem
from biograd._names import name_key
from biograd.errors import UsageError


class ModelError(UsageError):
    """A model that cannot be built as asked; the message says what was wrong and what to do."""


Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelInfo:
    """A registered model.

    inputs: the (channels, side) pairs it is meant for, smallest first, e.g. ((1, 28), (3, 32)).
    min_size: the smallest image side its layers accept.
    requires: the modules it needs beyond biograd's own ("spikingjelly"), brought by the
        optional `extra` ("spiking"); the builder imports them, the registry never does.
    """

    name: str
    builder: Builder
    inputs: tuple[tuple[int, int], ...]
    min_size: int = 1
    requires: tuple[str, ...] = ()
    extra: str | None = None

    @property
    def summary(self) -> str:
        """The first line of the builder's docstring."""
        return (inspect.getdoc(self.builder) or "").splitlines()[0]

    def missing(self) -> str | None:
        """One line naming the extra to install, where a module in `requires` is not
        installed (found without importing it); None where all are."""
        absent = [m for m in self.requires if not _installed(m)]
        if not absent:
            return None
        needs = f"{self.name} needs {', '.join(absent)}"
        if self.extra is None:
            return f"{needs}: pip install {' '.join(absent)}"
        return (f"{needs}, which comes with biograd's {self.extra} extra: "
                f"pip install 'biograd[{self.extra}]'")


def _installed(module: str) -> bool:
    """Whether `module` can be imported, without importing it (None in sys.modules: blocked)."""
    import importlib.util
    import sys

    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


_MODELS: dict[str, ModelInfo] = {}


def register_model(
    *, inputs: tuple[tuple[int, int], ...], min_size: int = 1, name: str | None = None,
    requires: tuple[str, ...] = (), extra: str | None = None,
) -> Callable[[Builder], Builder]:
    """Decorator: make a builder available to `build_model` under its function's name.

    The builder takes num_classes, in_channels and image_size as keywords, plus its own options.
    requires, extra: the modules it imports when called, and the optional extra that brings
    them (see ModelInfo).
    """

    def decorate(builder: Builder) -> Builder:
        key = name or builder.__name__
        if key in _MODELS:
            raise ValueError(f"model name {key!r} is already registered")
        _MODELS[key] = ModelInfo(key, builder, inputs, min_size, tuple(requires), extra)
        return builder

    return decorate


def list_models() -> list[str]:
    """biograd's own model names, sorted (torchvision's and timm's are not listed)."""
    return sorted(_MODELS)


def own_name(name: str) -> str | None:
    """biograd's model registered under `name` (case and "-" vs "_" do not matter), or None."""
    return next((m for m in _MODELS if name_key(m) == name_key(name)), None)


def missing_extra(name: str) -> str | None:
    """For biograd's model `name`, the one line naming the extra to install where a module it
    needs is missing (ModelInfo.missing); None for any other name (torchvision's, timm's, an
    unknown one: those are said when the model is built)."""
    registered = own_name(name)
    return None if registered is None else _MODELS[registered].missing()


def model_info(name: str) -> ModelInfo:
    """The registration of biograd's model `name`; ModelError if there is none."""
    registered = own_name(name)
    if registered is None:
        raise ModelError(f"{name!r} is not one of biograd's models ({', '.join(list_models())})")
    return _MODELS[registered]


def build_own(
    name: str, *, num_classes: int, in_channels: int, image_size: int, **options: object
) -> nn.Module:
    """Build biograd's model `name`, checking the image size and the options first."""
    info = model_info(name)
    missing = info.missing()
    if missing:
        raise ModelError(missing)
    if image_size < info.min_size:
        raise ModelError(
            f"{name} needs images of at least {info.min_size}x{info.min_size}, got "
            f"{image_size}x{image_size}: resize the images (--image-size {info.min_size}) or "
            f"pick a model for small inputs (small_cnn, mlp, resnet_small)"
        )
    kwargs = dict(num_classes=num_classes, in_channels=in_channels, image_size=image_size)
    try:
        inspect.signature(info.builder).bind(**kwargs, **options)
    except TypeError as err:
        raise ModelError(f"{name}: {err}; see help(biograd.models.{info.builder.__name__}) "
                         f"for its options") from None
    hints = typing.get_type_hints(info.builder)
    for key, value in options.items():  # every integer option is a size or a count
        if hints.get(key) is int and problem(int, {"low": 1}, value):
            raise ModelError(f"{name}: {key}={value!r}: {problem(int, {'low': 1}, value)}")
        if hints.get(key) is float and problem(float, {}, value):
            raise ModelError(f"{name}: {key}={value!r}: {problem(float, {}, value)}")
    try:
        return info.builder(**kwargs, **options)
    except (ValueError, AssertionError) as err:  # options that do not fit: say so in one line
        detail = str(err).removeprefix(f"{name}: ") or "the options do not fit together"
        raise ModelError(f"{name}: {detail}" + (f" (options: {options})" if options else "")
                         ) from None
