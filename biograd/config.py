"""The training configuration: one typed dataclass, the single source of defaults.

A YAML file (`--config`) may set any field; command-line flags override it. The resolved
config is written into the run folder (config.yaml) and stored in every checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from biograd.errors import UsageError
from biograd.rules import get_rule

CHOICES = {
    "norm": ("batchnorm", "frozen"),
    "feedback_scale": ("weight", "seed"),
    "optimizer": ("sgd", "adam", "adamw"),
    "schedule": ("step", "cosine", "constant"),
    "amp": ("none", "bf16", "fp16"),
    "device": ("auto", "cpu", "cuda"),
    "progress": ("auto", "bar", "lines", "none"),
}


@dataclass
class RunConfig:
    """What every task shares: the rule, the recipe, the run. One subclass per task adds
    the task's own fields; each is the single source of its defaults."""

    rule: str = field(default="ss", metadata={"help": "the learning rule of every layer"})
    rule_options: dict = field(default_factory=dict, metadata={
        "help": "options per rule, e.g. '{wm: {samples: 128}, fa: {scale: weight}}' (YAML)"})
    epochs: int = field(default=12, metadata={"help": "epochs to train"})
    batch_size: int = field(default=64, metadata={"help": "images per step, per process"})
    lr: float = field(default=0.05, metadata={"help": "learning rate"})
    optimizer: str = field(default="sgd", metadata={"help": "sgd, adam or adamw"})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum"})
    weight_decay: float = field(default=1e-4, metadata={"help": "weight decay, all parameters"})
    schedule: str = field(default="cosine", metadata={"help": "step, cosine or constant"})
    step_size: int = field(default=30, metadata={"help": "step schedule: epochs per decay"})
    gamma: float = field(default=0.1, metadata={"help": "step schedule: decay factor"})
    warmup_epochs: float = field(default=0.0, metadata={"help": "linear warm-up, in epochs"})
    seed: int = field(default=0, metadata={"help": "seed of initialisation, data order, feedback"})
    out: str | None = field(default=None, metadata={
        "help": "the run folder (default: a new runs/COMMAND-DATE-TIME)"})
    resume: bool = field(default=False, metadata={"help": "continue the run in --out"})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda"})
    amp: str = field(default="none", metadata={"help": "autocast: none, bf16 or fp16"})
    channels_last: bool = field(default=False, metadata={"help": "channels_last memory format"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the model"})
    workers: int = field(default=0, metadata={"help": "DataLoader worker processes"})
    steps_per_epoch: int | None = field(default=None, metadata={
        "help": "cap the steps of an epoch (smoke tests)"})
    angle_batch: int = field(default=64, metadata={
        "help": "images in the fixed batch for gradient angles (0: skip)"})
    angle_every: int | None = field(default=None, metadata={
        "help": "also log the weight angles every N steps to angles.jsonl (default: per epoch)"})
    progress: str = field(default="auto", metadata={"help": "auto, bar, lines or none"})
    tensorboard: bool = field(default=True, metadata={"help": "write TensorBoard events"})
    milestones: list | None = field(default=None, metadata={
        "help": "step schedule: decay at these epochs instead of every step_size (YAML list)"})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def rule_for(self, name: str):
        """The Rule object for rule `name`, with its options from rule_options."""
        rule = get_rule(name)
        return get_rule(rule.name, **self.options_of(rule.name))

    def options_of(self, canonical: str) -> dict[str, Any]:
        """The options rule_options gives the rule of canonical name `canonical` (a copy)."""
        for key, options in self.rule_options.items():
            if get_rule(key).name == canonical:
                return dict(options or {})
        return {}


@dataclass
class TrainConfig(RunConfig):
    """Image classification under a learning rule. Defaults: every rule on the bundled digits
    in a few minutes on a CPU (`biograd compare` with no options)."""

    data: str = field(default="digits", metadata={
        "help": "digits, mnist, fashion-mnist, fake, or a folder with train/ and val/"})
    model: str = field(default="small_cnn", metadata={
        "help": "a biograd model, a torchvision model name, or timm:NAME"})
    model_options: dict = field(default_factory=dict, metadata={
        "help": "options of the model's builder, e.g. '{width: 32, blocks: 1}' (YAML)"})
    last_rule: str = field(default="bp", metadata={
        "help": "the rule of the last layer (the seed kept it on bp)"})
    image_size: int | None = field(default=None, metadata={
        "help": "input size (default: the data set's own, 224 for folders)"})
    last_lr: float | None = field(default=None, metadata={
        "help": "the last layer's own learning rate (default: lr)"})
    manhattan: bool = field(default=False, metadata={
        "help": "batch Manhattan: step on sign(grad) (the seed's SGD variant)"})
    no_sign_change: bool = field(default=False, metadata={
        "help": "clamp weights that would flip sign at ±1e-10 (the seed's SGD variant)"})
    download: bool = field(default=False, metadata={
        "help": "let torchvision download MNIST / Fashion-MNIST if not found"})
    data_root: str | None = field(default=None, metadata={"help": "where to look for data"})


def _field_type(cls: type[RunConfig], f: dataclasses.Field) -> type:
    """The plain type of a field: int for `int | None`."""
    hint = typing.get_type_hints(cls)[f.name]
    if isinstance(hint, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return typing.get_origin(hint) or hint


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_arguments(parser: argparse.ArgumentParser, cls: type[RunConfig] = TrainConfig) -> None:
    """One flag per field (--batch-size for batch_size), defaults left to the config."""
    parser.add_argument("--config", type=Path, help="a YAML file of config fields")
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        kind = _field_type(cls, f)
        kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS,
                              "help": f"{f.metadata['help']} (default: {_default(f)})"}
        if kind is bool:
            kw.update(nargs="?", const=True, type=_parse_bool, metavar="BOOL")
        elif kind is dict:
            kw.update(type=_parse_yaml_mapping, metavar="YAML")
        elif kind is list:
            kw.update(type=_parse_int_list, metavar="N,N")
        else:
            kw.update(type=kind, choices=CHOICES.get(f.name))
        parser.add_argument(flag, **kw)


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def _parse_yaml_mapping(text: str) -> dict:
    value = yaml.safe_load(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a YAML mapping like '{{samples: 128}}', "
                                         f"got {text!r}")
    return value


def _parse_int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 16,22, got {text!r}") from None


def load_yaml(path: Path, cls: type[RunConfig] = TrainConfig) -> dict[str, Any]:
    """The fields a YAML config file sets, checked against the task's config class."""
    if not path.is_file():
        raise UsageError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise UsageError(f"config file {path} is not valid YAML: "
                         f"{str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UsageError(f"config file {path} must be a mapping of config fields")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UsageError(f"config file {path}: unknown field(s) {', '.join(unknown)}; "
                         f"valid fields: {', '.join(sorted(known))}")
    return data


def resolve(args: argparse.Namespace | None = None, cls: type[RunConfig] = TrainConfig,
            **overrides: Any) -> Any:
    """Defaults, then the YAML file in args.config, then flags, then `overrides`; validated."""
    values: dict[str, Any] = {}
    known = {f.name for f in dataclasses.fields(cls)}
    if args is not None:
        given = dict(vars(args))
        path = given.pop("config", None)
        if path is not None:
            values.update(load_yaml(path, cls))
        values.update({k: v for k, v in given.items() if k in known})
    values.update(overrides)
    cfg = cls(**values)
    validate(cfg)
    # canonical names, so that run folders and reports group "usf" with "ss"
    cfg.rule = get_rule(cfg.rule).name
    if isinstance(cfg, TrainConfig):
        cfg.last_rule = get_rule(cfg.last_rule).name
    return cfg


def validate(cfg: RunConfig) -> None:
    """Reject unknown names and contradictory options with one line that says what to do."""
    for name, allowed in CHOICES.items():
        if hasattr(cfg, name) and getattr(cfg, name) not in allowed:
            raise UsageError(f"{name} must be one of {', '.join(allowed)}, "
                             f"not {getattr(cfg, name)!r}")
    for name in ("rule", "last_rule") if isinstance(cfg, TrainConfig) else ("rule",):
        try:
            get_rule(getattr(cfg, name))
        except ValueError as err:
            raise UsageError(f"--{name.replace('_', '-')}: {err}") from None
    for name, options in cfg.rule_options.items():
        try:
            get_rule(name, **(options or {}))
        except (ValueError, TypeError) as err:
            raise UsageError(f"--rule-options: {err}") from None
    positive = {"epochs": cfg.epochs, "batch_size": cfg.batch_size, "lr": cfg.lr}
    for name, value in positive.items():
        if not value > 0:
            raise UsageError(f"--{name.replace('_', '-')} must be positive, got {value}")
    if isinstance(cfg, TrainConfig) and (cfg.manhattan or cfg.no_sign_change) and \
            cfg.optimizer != "sgd":
        raise UsageError("--manhattan and --no-sign-change are variants of SGD: "
                         "use them with --optimizer sgd")
    if cfg.amp == "fp16" and cfg.device == "cpu":
        raise UsageError("--amp fp16 needs a GPU; use --amp bf16 on the CPU")
    if cfg.steps_per_epoch is not None and cfg.steps_per_epoch < 1:
        raise UsageError("--steps-per-epoch must be at least 1")
    if cfg.angle_every is not None and cfg.angle_every < 1:
        raise UsageError("--angle-every must be at least 1 (leave it out to log per epoch)")


@dataclass
class DetectConfig(RunConfig):
    """RetinaNet detection under a learning rule. Defaults: the CPU demo on synthetic shapes
    (`biograd make-shapes`: 64-pixel images, a narrow FPN, AdamW, a few minutes a rule);
    configs/coco/ holds torchvision's MS-COCO recipe (SGD, 256 FPN channels, 800 pixels)."""

    epochs: int = field(default=6, metadata={"help": "epochs to train"})
    batch_size: int = field(default=8, metadata={"help": "images per step, per process"})
    optimizer: str = field(default="adamw", metadata={
        "help": "sgd, adam or adamw (torchvision's recipe: sgd)"})
    lr: float = field(default=0.001, metadata={
        "help": "learning rate (torchvision's recipe: sgd at 0.01 per 16 images)"})
    warmup_epochs: float = field(default=1.0, metadata={"help": "linear warm-up, in epochs"})
    schedule: str = field(default="step", metadata={"help": "step, cosine or constant"})
    milestones: list | None = field(default_factory=lambda: [5], metadata={
        "help": "step schedule: decay ×gamma at these epochs"})
    angle_batch: int = field(default=4, metadata={
        "help": "images in the fixed batch for gradient angles (0: skip)"})
    data: str = field(default="runs/shapes", metadata={
        "help": "a COCO-format folder (images and annotations/instances_*.json); "
                "made with `biograd make-shapes` if it is missing and named like *shapes*"})
    backbone: str = field(default="resnet18", metadata={"help": "resnet18 (the seed's), resnet50"})
    fpn_channels: int = field(default=64, metadata={
        "help": "channels of the FPN levels and the heads (torchvision's: 256)"})
    parts: dict = field(default_factory=dict, metadata={
        "help": "per-part rules, e.g. '{head: bp}' (parts: backbone, fpn, head, "
                "classification_head, regression_head)"})
    norm: str = field(default="batchnorm", metadata={
        "help": "batchnorm (trainable, for training from scratch) or frozen"})
    feedback_scale: str = field(default="weight", metadata={
        "help": "feedback scale of rules that take one: weight (W's size) or seed"})
    min_size: int = field(default=64, metadata={"help": "the model's resize: shorter side"})
    max_size: int = field(default=64, metadata={"help": "the model's resize: longer side"})
    anchor_scale: float = field(default=0.5, metadata={
        "help": "anchor sizes × this (torchvision's 32-512 px suit 800 px images; the default "
                "0.5 gives 16-256 px for the small shapes images; 1 for MS-COCO)"})
    aspect_ratio_grouping: bool = field(default=False, metadata={
        "help": "batch images of similar aspect ratio together"})
    keep_empty_train: bool = field(default=False, metadata={
        "help": "train on images without annotations too"})
    head_norm: str = field(default="groupnorm", metadata={
        "help": "the heads' normalisation: none (torchvision's v1 heads) or groupnorm "
                "(GroupNorm after each head convolution, as torchvision's v2 heads)"})
