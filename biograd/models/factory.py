"""`build_model`: one name for biograd's own models, torchvision's and timm's.

    build_model("resnet_small", num_classes=10, in_channels=1, image_size=28)  # biograd's
    build_model("resnet18", num_classes=10, in_channels=1, image_size=28)      # torchvision's
    build_model("timm:convnext_atto", num_classes=10, in_channels=1, image_size=32)

Every model is built with random weights: nothing is downloaded.
"""

from __future__ import annotations

import difflib
import importlib
from functools import cache

import torchvision
from torch import nn

from biograd._names import name_key
from biograd.models.registry import ModelError, build_own, list_models, own_name

TIMM_PREFIX = "timm:"

# torchvision models whose layers depend on the image size, and the argument that sets it.
_TORCHVISION_SIZE_ARGS = {
    "vit_": lambda side: {"image_size": side},
    "maxvit_": lambda side: {"input_size": (side, side)},
}
# torchvision models whose defaults would not give a plain (N, num_classes) tensor in training:
# no auxiliary heads, and the initialisation they use today (without their FutureWarning).
_TORCHVISION_OPTIONS = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}


class RepeatChannels:
    """Forward pre-hook: repeat a 1-channel image to the 3 channels a torchvision model takes.

    (N, 1, H, W) -> (N, 3, H, W), a view (`expand`), so the copy costs nothing. As a hook it
    leaves the model's class, its modules and its state-dict keys exactly torchvision's.
    """

    def __init__(self, channels: int = 3) -> None:
        self.channels = channels

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        x, *rest = args
        if x.shape[-3] != 1:
            raise ValueError(
                f"{type(module).__name__} was built for 1-channel images (they are repeated to "
                f"{self.channels}), got input of shape {tuple(x.shape)}"
            )
        return (x.expand(*x.shape[:-3], self.channels, *x.shape[-2:]), *rest)

    def __repr__(self) -> str:
        return f"RepeatChannels({self.channels})"


@cache
def torchvision_models() -> tuple[str, ...]:
    """torchvision's classification model names."""
    return tuple(torchvision.models.list_models(module=torchvision.models))


def build_model(
    name: str, *, num_classes: int, in_channels: int, image_size: int,
    pretrained: bool = False, **options: object
) -> nn.Module:
    """Build the classifier `name` with random weights: (N, in_channels, S, S) -> (N, num_classes).

    name: one of biograd's models (`list_models()`), a torchvision classification model
        (`torchvision.models.list_models(module=torchvision.models)`), or "timm:NAME".
    image_size: S, the side of the (square) images the model will see.
    options: passed on to the builder (biograd's: e.g. width=32 for resnet_small;
        torchvision's `get_model`; timm's `create_model`).

    torchvision models take 3 channels: with in_channels=1 a `RepeatChannels` forward pre-hook
    repeats the input to 3, so the model, its modules and state-dict keys stay torchvision's;
    other channel counts raise ModelError. vit_* get image_size=S and maxvit_* input_size=(S, S);
    googlenet and inception_v3 are built without auxiliary heads. timm models get in_chans and,
    where their size is fixed, img_size. Raises ModelError when the model cannot be built.
    """
    for arg, value in (("num_classes", num_classes), ("in_channels", in_channels),
                       ("image_size", image_size)):
        if not isinstance(value, int) or value < 1:
            raise ModelError(f"{arg} must be a positive integer, got {value!r}")
    if name.startswith(TIMM_PREFIX):  # timm's own names, exactly
        builder = _build_timm
        name = name[len(TIMM_PREFIX):]
    elif (own := own_name(name)) is not None:
        builder, name = build_own, own
    elif (theirs := _torchvision_name(name)) is not None:
        builder, name = _build_torchvision, theirs
    else:
        raise ModelError(_unknown_model_message(name))
    if pretrained and builder is build_own:
        raise ModelError(f"biograd's {name} has no pretrained weights: leave out --pretrained, "
                         f"or start from a file with --init-checkpoint")
    if pretrained and builder is _build_timm:
        options["pretrained"] = True
    model = builder(name, num_classes=num_classes, in_channels=in_channels,
                    image_size=image_size, **options)
    if builder is not build_own:  # biograd's own models check their min_size before building
        _check_image_size(model, name, in_channels, image_size)
    if pretrained and builder is _build_torchvision:
        load_cached_weights(model, name)
    return model


# Sides tried, when a model refuses the asked one, to say which it takes.
_SIDES = (32, 48, 64, 96, 128, 160, 224, 299)


def _check_image_size(model: nn.Module, name: str, in_channels: int, side: int) -> None:
    """ModelError, naming a side that works, when `model` cannot take (1, C, side, side) images:
    torchvision's alexnet, vgg and inception_v3 pool 28x28 maps to nothing, which would
    otherwise stop the first training step with torch's traceback."""
    import torch

    def fails(s: int) -> str | None:
        try:
            with torch.no_grad():
                model(torch.zeros(1, in_channels, s, s))
        except (RuntimeError, ValueError, AssertionError) as err:  # timm's fixed sizes assert
            return str(err).splitlines()[0] if str(err) else type(err).__name__
        return None

    was_training = model.training
    model.eval()
    try:
        error = fails(side)
        if error is None:
            return
        fits = next((s for s in _SIDES if s > side and fails(s) is None), None)
    finally:
        model.train(was_training)
    hint = (f"it takes {fits}x{fits} (--image-size {fits})" if fits is not None
            else "pick a model for small inputs (small_cnn, mlp, resnet_small)")
    raise ModelError(f"{name} cannot take {side}x{side} images ({error}): {hint}")


def load_cached_weights(model: nn.Module, name: str) -> None:
    """torchvision's default weights for `name`, from torch's hub cache (never downloaded),
    into `model`: every tensor of the same shape; a classifier of another size is left as
    built (and said so). ModelError when the file is not in the cache."""
    import logging
    import os

    import torch

    weights = torchvision.models.get_model_weights(name).DEFAULT
    path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
    if not os.path.isfile(path):
        raise ModelError(f"--pretrained: torchvision's {name} weights are not in the local "
                         f"cache ({path}) and nothing is downloaded: fetch {weights.url} "
                         f"there, or leave out --pretrained")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    own = model.state_dict()
    fits = {k: v for k, v in saved.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(fits, strict=False)
    left = sorted(set(own) - set(fits))
    if left:
        logging.getLogger("biograd").info(
            "--pretrained: %s from %s; left as built (other shape or absent): %s",
            name, path, ", ".join(left))


def _torchvision_name(name: str) -> str | None:
    """torchvision's model `name` (case and "-" vs "_" do not matter), or None."""
    return next((m for m in torchvision_models() if name_key(m) == name_key(name)), None)


def _unknown_model_message(name: str) -> str:
    close = difflib.get_close_matches(name, [*list_models(), *torchvision_models()], n=4)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return (
        f"unknown model {name!r}: {hint}biograd's models are {', '.join(list_models())}; "
        f"any torchvision classification model works by name (resnet18, vit_b_16, ...), "
        f"and timm models as 'timm:NAME'"
    )


def _build_torchvision(
    name: str, *, num_classes: int, in_channels: int, image_size: int, **options: object
) -> nn.Module:
    if in_channels not in (1, 3):
        raise ModelError(
            f"torchvision's {name} takes 3-channel images (1-channel ones are repeated), not "
            f"{in_channels}: use biograd's models or 'timm:NAME', which take any in_channels"
        )
    kwargs = dict(_TORCHVISION_OPTIONS.get(name, {}))
    for prefix, size_args in _TORCHVISION_SIZE_ARGS.items():
        if name.startswith(prefix):
            kwargs.update(size_args(image_size))
    kwargs.update(options)
    try:
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    except (TypeError, ValueError, AssertionError) as err:  # e.g. vit_b_16 at 28x28
        args = ", ".join(f"{k}={v!r}" for k, v in {"num_classes": num_classes, **kwargs}.items())
        message = f"cannot build torchvision's {name} with {args}: {err}"
        raise ModelError(" ".join(message.split())) from err
    if in_channels == 1:
        model.register_forward_pre_hook(RepeatChannels(3))
    return model


def _build_timm(
    name: str, *, num_classes: int, in_channels: int, image_size: int, **options: object
) -> nn.Module:
    try:
        timm = importlib.import_module("timm")
    except ImportError as err:
        raise ModelError(f"timm:{name} needs timm: pip install timm") from err
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=4)
        hint = f"; did you mean {', '.join(TIMM_PREFIX + c for c in close)}?" if close else ""
        raise ModelError(f"timm {timm.__version__} has no model {name!r}{hint} "
                         f"(timm.list_models() lists them)")
    kwargs: dict[str, object] = {"num_classes": num_classes, "in_chans": in_channels}
    cfg = timm.get_pretrained_cfg(name)
    if cfg is not None and cfg.fixed_input_size and cfg.input_size[-1] != image_size:
        kwargs["img_size"] = image_size
    kwargs.update(options)
    try:
        return timm.create_model(name, **{"pretrained": False, **kwargs})
    except (OSError, RuntimeError) as err:  # pretrained weights neither cached nor reachable
        if not kwargs.get("pretrained"):
            raise
        raise ModelError(f"--pretrained: timm:{name} weights are not in the local cache and "
                         f"could not be fetched ({type(err).__name__}); leave out --pretrained"
                         ) from err
    except TypeError as err:  # an option the model's class does not take
        if "img_size" in str(err) and "img_size" not in options:
            side = cfg.input_size[-1]
            raise ModelError(f"timm:{name} takes only {side}x{side} images (it has no img_size "
                             f"option): resize the images to {side}") from err
        raise ModelError(f"cannot build timm:{name} with {kwargs}: {err}") from err
