"""The training configuration: one typed dataclass, the single source of defaults.

A YAML file (`--config`) may set any field; command-line flags override it. The resolved
config is written into the run folder (config.yaml) and stored in every checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from biograd._check import problem
from biograd.errors import UsageError
from biograd.rules import get_rule, list_rules


def setting(default: Any = dataclasses.MISSING, help: str = "", *,
            default_factory: Any = dataclasses.MISSING, **accepts: Any) -> Any:
    """A config field: its default, its --help text, and what it accepts beyond its type
    (`choices`, or bounds `low` >=, `above` >, `high` <=, `below` <; see biograd._check)."""
    return field(default=default, default_factory=default_factory,
                 metadata={"help": help, **accepts})


@dataclass
class RunConfig:
    """What every task shares: the rule, the recipe, the run. One subclass per task adds
    the task's own fields; each is the single source of its defaults."""

    rule: str = setting("ss", "the learning rule of every layer")
    rule_options: dict = setting(default_factory=dict, help="options per rule, e.g. "
                                 "'{wm: {samples: 128}, fa: {scale: weight}}' (YAML)")
    epochs: int = setting(12, "epochs to train", low=1)
    batch_size: int = setting(64, "images per step, per process", low=1)
    lr: float = setting(0.05, "learning rate", above=0)
    optimizer: str = setting("sgd", "sgd, adam or adamw", choices=("sgd", "adam", "adamw"))
    momentum: float = setting(0.9, "SGD momentum", low=0, below=1)
    weight_decay: float = setting(1e-4, "weight decay, all parameters", low=0)
    schedule: str = setting("cosine", "step, cosine or constant",
                            choices=("step", "cosine", "constant"))
    step_size: int = setting(30, "step schedule: epochs per decay", low=1)
    gamma: float = setting(0.1, "step schedule: decay factor", above=0)
    warmup_epochs: float = setting(0.0, "linear warm-up, in epochs", low=0)
    seed: int = setting(0, "seed of initialisation, data order, feedback", low=0)
    out: str | None = setting(None, "the run folder (default: a new runs/COMMAND-DATE-TIME)")
    resume: bool = setting(False, "continue the run in --out")
    device: str = setting("auto", "auto, cpu or cuda", choices=("auto", "cpu", "cuda"))
    amp: str = setting("none", "autocast: none, bf16 or fp16", choices=("none", "bf16", "fp16"))
    channels_last: bool = setting(False, "channels_last memory format")
    compile: bool = setting(False, "torch.compile the model")
    compile_mode: str = setting("default", "torch.compile's mode with --compile: "
                                "reduce-overhead (CUDA graphs) for small GPU steps",
                                choices=("default", "reduce-overhead", "max-autotune"))
    workers: int = setting(0, "DataLoader worker processes", low=0)
    steps_per_epoch: int | None = setting(None, "cap the steps of an epoch (smoke tests)",
                                          low=1)
    angle_batch: int = setting(64, "images in the fixed batch for gradient angles (0: skip)",
                               low=0)
    angle_every: int | None = setting(None, "also log the weight angles every N steps to "
                                      "angles.jsonl (default: per epoch)", low=1)
    progress: str = setting("auto", "auto, bar, lines or none",
                            choices=("auto", "bar", "lines", "none"))
    tensorboard: bool = setting(True, "write TensorBoard events")
    milestones: list[int] | None = setting(None, "step schedule: decay at these epochs instead "
                                           "of every step_size", low=0)
    log_interval: int = setting(50, "steps between progress lines (loss, lr, images/s, ETA) "
                                "and the non-finite-loss check, the only times the host waits "
                                "on the device in an epoch (and its last step)", low=1)
    accept_changes: bool = setting(False, "on --resume, accept another number of processes, "
                                   "--batch-size or --epochs: the schedule is recomputed for "
                                   "the new shape")
    init_checkpoint: str | None = setting(None, "start from the weights in this file: a torch "
                                          "or biograd state dict, a biograd checkpoint, or "
                                          ".safetensors (feedback is derived where absent)")
    sync_bn: bool = setting(False, "under torchrun, BatchNorm statistics over the global batch "
                            "(torch's SyncBatchNorm, GPUs only): for small per-GPU batches")

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

    data: str = setting("digits", "digits, mnist, fashion-mnist, fake, cifar10, cifar100, "
                        "or a folder with train/ and val/ (ImageNet's, say)")
    model: str = setting("small_cnn", "a biograd model, a torchvision model name, or timm:NAME")
    model_options: dict = setting(default_factory=dict, help="options of the model's builder, "
                                  "e.g. '{width: 32, blocks: 1}' (YAML)")
    last_rule: str = setting("bp", "the rule of the last layer (the paper kept it on bp)")
    image_size: int | None = setting(None, "input size (default: the data set's own, 224 for "
                                     "folders)", low=1)
    last_lr: float | None = setting(None, "the last layer's own learning rate (default: lr)",
                                    above=0)
    manhattan: bool = setting(False, "batch Manhattan: step on sign(grad) (the paper's SGD "
                              "variant)")
    no_sign_change: bool = setting(False, "clamp weights that would flip sign at ±1e-10 (the "
                                   "paper's SGD variant)")
    download: bool = setting(False, "let torchvision download MNIST / Fashion-MNIST if not "
                             "found")
    data_root: str | None = setting(None, "where to look for data")
    val_split: int | None = setting(None, "hold this many training images out as the "
                                    "validation split (the test split is then scored once, "
                                    "with the best validation epoch's model: test.json)", low=1)
    pretrained: bool = setting(False, "start from pretrained weights: torchvision's from "
                               "torch's hub cache (never downloaded), timm's through timm's "
                               "loader (which downloads unless HF_HUB_OFFLINE=1)")
    unshare: bool = setting(False, "no weight sharing: every Conv2d becomes a locally connected "
                            "layer, its kernel copied to every position (biograd.unshare)")
    dale: float | None = setting(None, "Dale's law: this fraction of units excitatory (e.g. "
                                 "0.8), each unit's outgoing weights held to one sign "
                                 "(biograd.dale)", above=0, high=1)
    dale_balance: bool = setting(False, "with --dale: re-centre each unit's incoming weights to "
                                 "sum 0, keeping their norm (keeps deep BatchNorm nets "
                                 "learning; see docs/beyond.md)")


def _field_type(cls: type[RunConfig], f: dataclasses.Field) -> type:
    """The plain type of a field: int for `int | None`, list for `list[int]`."""
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
        text = f.metadata["help"]
        if f.name in ("rule", "last_rule"):
            text += f": {', '.join(list_rules())}"
        if kind is list:
            text += " (on the command line comma-separated, e.g. 16,22; a list in YAML)"
        if "default" not in text:  # a help text that names its default says it once
            text += f" (default: {field_default(f)})"
        kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": text}
        if kind is bool:
            kw.update(nargs="?", const=True, type=_parse_bool, metavar="BOOL")
        elif kind is dict:
            kw.update(type=_parse_yaml_mapping, metavar="YAML")
        elif kind is list:
            kw.update(type=_parse_int_list, metavar="N,N")
        else:
            kw.update(type=kind, choices=f.metadata.get("choices"))
        parser.add_argument(flag, **kw)


def field_default(f: dataclasses.Field) -> Any:
    """A config field's default value."""
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


@cache
def _loader() -> type:
    """PyYAML's safe loader, reading 1e-3 as a float as YAML 1.2 does (PyYAML, following YAML
    1.1, reads a number with an exponent but no dot as a string). PyYAML is imported here, not
    at the top: `biograd --help`, `--version` and `rules` need none of the train extra."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"))
    return Loader


def load_yaml_text(text: str) -> Any:
    """YAML text as Python values (see `_loader`)."""
    import yaml

    return yaml.load(text, Loader=_loader())


def _parse_yaml_mapping(text: str) -> dict:
    import yaml

    try:
        value = load_yaml_text(text)
    except yaml.YAMLError as err:
        raise argparse.ArgumentTypeError(f"not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a YAML mapping like '{{samples: 128}}', "
                                         f"got {text!r}")
    return value


def _parse_int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 16,22, got {text!r}") from None


#: The recipes installed with biograd: `--config imagenet/resnet18-ss` names
#: biograd/configs/imagenet/resnet18-ss.yaml.
CONFIGS = Path(__file__).resolve().parent / "configs"


def bundled_configs() -> list[str]:
    """The names of the installed recipes, e.g. "coco/retinanet-r18-ss"."""
    return sorted(str(p.relative_to(CONFIGS).with_suffix("")) for p in CONFIGS.rglob("*.yaml"))


def find_config(path: Path | str) -> Path:
    """A config file's path: `path` itself, or the installed recipe it names."""
    path = Path(path)
    if path.is_file():
        return path
    for candidate in (CONFIGS / path, CONFIGS / f"{path}.yaml"):
        if candidate.is_file():
            return candidate
    folders = sorted({n.split("/")[0] for n in bundled_configs()})
    raise UsageError(f"config file {path} does not exist, and no installed recipe has that "
                     f"name: give a path, or a name like {bundled_configs()[0]} (all are in "
                     f"{CONFIGS}: {', '.join(f + '/' for f in folders)})")


#: Fields that say where or how a run runs, not what it learns: they may differ between a run
#: and its resumption (epochs only with accept_changes, which may itself change).
RESUMABLE = {"resume", "out", "workers", "progress", "device", "tensorboard", "data_root",
             "download", "log_interval", "accept_changes"}

def comparable(config: dict[str, Any]) -> dict[str, Any]:
    """A run's config as it shapes the run: rule_options narrowed to the entries of the rules
    it uses (rule, last_rule, a detector's parts), by canonical name. Options of rules a run
    does not use are no part of its recipe: a recipe file that gains another rule's options
    still resumes, keeps and groups the runs made before."""
    used = {config.get("rule"), config.get("last_rule"),
            *((config.get("parts") or {}).values() if isinstance(config.get("parts"), dict)
              else ())}
    own: dict[str, Any] = {}
    for key, options in (config.get("rule_options") or {}).items():
        name = _canonical(key)
        if name in {_canonical(u) for u in used if isinstance(u, str)}:
            own[name] = options
    return {**config, "rule_options": own} if "rule_options" in config else config


def _canonical(name: object) -> object:
    try:
        return get_rule(name).name if isinstance(name, str) else name
    except ValueError:  # a name no rule has (a config written by a later version)
        return name


#: What `biograd compare` records in its folder: the task, rules, seeds and shared config.
COMPARE = "compare.yaml"


def saved_path(out: Path) -> Path | None:
    """The file a resume in `out` reads its options from: a run's config.yaml, else a compare
    folder's compare.yaml; None where there is neither."""
    return next((p for p in (out / "config.yaml", out / COMPARE) if p.is_file()), None)


def read_saved(path: Path) -> Any:
    """A saved config file's YAML, with a one-line error if it is not valid YAML."""
    import yaml

    try:
        return load_yaml_text(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise UsageError(f"--resume: {path} is not valid YAML ({str(err).splitlines()[0]}): "
                         f"restore it, or give every option of the run again") from None


def saved_config(out: Path, cls: type[RunConfig] = TrainConfig) -> dict[str, Any]:
    """The fields of the run (or compare) in `out` (`saved_path`; none if it has none), less
    those that belong to one start only (resume, accept_changes)."""
    path = saved_path(out)
    if path is None:
        return {}
    data = read_saved(path)
    if path.name == COMPARE:
        data = data.get("config", {}) if isinstance(data, dict) else {}
    known = {f.name for f in dataclasses.fields(cls)} - {"resume", "accept_changes"}
    return {k: v for k, v in data.items() if k in known} if isinstance(data, dict) else {}


def load_yaml(path: Path, cls: type[RunConfig] = TrainConfig) -> dict[str, Any]:
    """The fields a YAML config file (or installed recipe) sets, checked against the task's
    config class."""
    import yaml

    path = find_config(path)
    try:
        data = load_yaml_text(path.read_text()) or {}
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
    """Defaults, then the YAML file in args.config, then flags, then `overrides`; validated.
    A resume (resume and out set) starts from the run folder's config.yaml (a compare folder's
    compare.yaml) instead of the defaults, so `--out RUN --resume` alone continues the run as
    it was."""
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}  # the file a value came from, for its error message
    known = {f.name for f in dataclasses.fields(cls)}
    if args is not None:
        given = dict(vars(args))
        path = given.pop("config", None)
        if path is not None:
            values.update(load_yaml(path, cls))
            origins.update(dict.fromkeys(values, f"in {path}"))
        flags = {k: v for k, v in given.items() if k in known}
        values.update(flags)
        for name in flags:
            origins.pop(name, None)
    values.update(overrides)
    if values.get("resume") and values.get("out"):
        saved = saved_config(Path(values["out"]), cls)
        origins.update({k: f"in {saved_path(Path(values['out']))}" for k in saved
                        if k not in values})
        values = {**saved, **values}
    cfg = cls(**values)
    validate(cfg, origins)
    # canonical names, so that run folders and reports group "usf" with "ss"
    cfg.rule = get_rule(cfg.rule).name
    if isinstance(cfg, TrainConfig):
        cfg.last_rule = get_rule(cfg.last_rule).name
    return cfg


def _where(name: str, origins: dict[str, str] | None) -> str:
    """Where field `name` was set: its flag, or the file it came from."""
    return (origins or {}).get(name) or "--" + name.replace("_", "-")


def check_fields(cfg: RunConfig, origins: dict[str, str] | None = None) -> None:
    """Every field's value against its type and bounds, wherever it came from (defaults, a
    YAML file, flags, code): a UsageError naming the field, its flag (or the file that set it)
    and what it takes."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        wrong = problem(hints[f.name], f.metadata, value)
        if wrong:
            raise UsageError(f"{f.name}={value!r} ({_where(f.name, origins)}): {wrong}")


def _rule_name(field_name: str, value: str, origins: dict[str, str] | None = None) -> None:
    try:
        get_rule(value)
    except ValueError as err:
        raise UsageError(f"{field_name}={value!r} ({_where(field_name, origins)}): "
                         f"{err}") from None


def validate(cfg: RunConfig, origins: dict[str, str] | None = None) -> None:
    """Reject bad values, unknown names and contradictory options with one line that says
    what to do. `origins`: the file each field read from a file came from (`resolve`'s), so
    that the line names the file, not a flag the user never gave."""
    check_fields(cfg, origins)
    for name in ("rule", "last_rule") if isinstance(cfg, TrainConfig) else ("rule",):
        _rule_name(name, getattr(cfg, name), origins)
    where = _where("rule_options", origins)
    for name, options in cfg.rule_options.items():
        if not isinstance(name, str) or not isinstance(options, dict | None):
            raise UsageError(f"rule_options ({where}): {name!r}: {options!r} is not a "
                             f"rule name with a mapping of its options, like "
                             f"'{{wm: {{samples: 128}}}}'")
        if options and None in options:  # YAML reads an unquoted `null` key as null: the
            options["null"] = options.pop(None)  # alignment family's `null` term is meant
        try:
            get_rule(name, **(options or {}))
        except (ValueError, TypeError) as err:
            raise UsageError(f"rule_options ({where}): {err}") from None
    where = _where("model_options", origins)
    if any(not isinstance(k, str) for k in getattr(cfg, "model_options", {})):
        raise UsageError(f"model_options ({where}): option names are words, like "
                         f"'{{width: 32}}', not {cfg.model_options!r}")
    reserved = sorted(set(getattr(cfg, "model_options", {})) & {
        "num_classes", "in_channels", "image_size", "pretrained"})
    if reserved:
        raise UsageError(f"model_options ({where}): {', '.join(reserved)} "
                         f"{'come' if len(reserved) > 1 else 'comes'} from "
                         f"the data set (and --image-size, --pretrained): leave them out")
    if isinstance(cfg, TrainConfig):
        _check_model_extra(cfg)
    if isinstance(cfg, DetectConfig):
        _check_detector(cfg)
    if isinstance(cfg, TrainConfig) and (cfg.manhattan or cfg.no_sign_change) and \
            cfg.optimizer != "sgd":
        raise UsageError("--manhattan and --no-sign-change are variants of SGD: "
                         "use them with --optimizer sgd")
    if isinstance(cfg, TrainConfig) and cfg.dale_balance and cfg.dale is None:
        raise UsageError("--dale-balance re-centres the weights Dale's law signs: give --dale "
                         "too (e.g. --dale 0.8)")
    if cfg.amp == "fp16" and cfg.device == "cpu":
        raise UsageError("--amp fp16 needs a GPU; use --amp bf16 on the CPU")
    if cfg.accept_changes and not cfg.resume:  # a flag of one start: never in a saved config
        raise UsageError("--accept-changes accepts a changed shape on --resume: add --resume, "
                         "or leave it out")
    if cfg.schedule != "step":
        fields = {f.name: f for f in dataclasses.fields(cfg)}
        unused = [f"--{k.replace('_', '-')}" for k in ("step_size", "gamma", "milestones")
                  if getattr(cfg, k) != field_default(fields[k])]
        if unused:
            raise UsageError(f"{', '.join(unused)} shape(s) the step schedule, but the schedule "
                             f"is {cfg.schedule!r}: add --schedule step, or leave them out")


def _check_model_extra(cfg: TrainConfig) -> None:
    """A one-line UsageError, before anything starts, where biograd's model cfg.model needs an
    optional extra that is not installed (spiking_cnn: biograd[spiking])."""
    import biograd.models  # noqa: F401  (registers biograd's models)
    from biograd.models.registry import missing_extra

    missing = missing_extra(cfg.model)
    if missing:
        raise UsageError(missing)


#: Why a detector cannot run on a rule that reads the model's output (dfa, drtp, dfa_blocks).
DIRECT_DETECTOR = (
    "{rule} projects one output error (drtp: one target) to every layer or block, but "
    "RetinaNet's output is every anchor's scores and boxes, from two heads (thousands of "
    "values an image, and B grows with them times each layer's input): detection runs on the "
    "other rules")


def _check_detector(cfg: DetectConfig) -> None:
    from biograd.detection.model import BACKBONES, PARTS

    if cfg.backbone not in BACKBONES:
        raise UsageError(f"backbone={cfg.backbone!r} (--backbone): use one of "
                         f"{', '.join(BACKBONES)}")
    for part, rule in cfg.parts.items():
        if part not in PARTS:
            raise UsageError(f"parts (--parts): unknown part {part!r}: use {', '.join(PARTS)}")
        if not isinstance(rule, str):
            raise UsageError(f"parts (--parts): {part}: {rule!r} is not a rule name")
        _rule_name(f"parts.{part}", rule)
    for name in (cfg.rule, *cfg.parts.values()):
        if get_rule(name).reads_output:
            raise UsageError(DIRECT_DETECTOR.format(rule=get_rule(name).name))
    if cfg.max_size < cfg.min_size:
        raise UsageError(f"max_size={cfg.max_size} (--max-size) is below min_size="
                         f"{cfg.min_size} (--min-size): the longer side cannot be the shorter")


@dataclass
class DetectConfig(RunConfig):
    """RetinaNet detection under a learning rule. Defaults: the CPU demo on synthetic shapes
    (`biograd make-shapes`: 64-pixel images, a narrow FPN, AdamW, a few minutes a rule);
    biograd/configs/coco/ holds torchvision's MS-COCO recipe (SGD, 256 FPN channels, 800 pixels)."""

    epochs: int = setting(6, "epochs to train", low=1)
    batch_size: int = setting(8, "images per step, per process", low=1)
    optimizer: str = setting("adamw", "sgd, adam or adamw (torchvision's recipe: sgd)",
                             choices=("sgd", "adam", "adamw"))
    lr: float = setting(0.001, "learning rate (torchvision's recipe: sgd at 0.01 per 16 "
                        "images)", above=0)
    warmup_epochs: float = setting(1.0, "linear warm-up, in epochs", low=0)
    schedule: str = setting("step", "step, cosine or constant",
                            choices=("step", "cosine", "constant"))
    milestones: list[int] | None = setting(default_factory=lambda: [5], help="step "
                                           "schedule: decay ×gamma at these epochs", low=0)
    angle_batch: int = setting(4, "images in the fixed batch for gradient angles (0: skip)",
                               low=0)
    data: str = setting("runs/shapes", "a COCO-format folder (images and "
                        "annotations/instances_*.json); made with `biograd make-shapes` if it "
                        "is missing and named like *shapes*")
    backbone: str = setting("resnet18", "resnet18 (the paper's), resnet50, or another ResNet")
    fpn_channels: int = setting(64, "channels of the FPN levels and the heads (torchvision's: "
                                "256)", low=1)
    parts: dict = setting(default_factory=dict, help="per-part rules, e.g. '{head: bp}' "
                          "(parts: backbone, fpn, head, classification_head, regression_head)")
    norm: str = setting("batchnorm", "batchnorm (trainable, for training from scratch) or "
                        "frozen", choices=("batchnorm", "frozen"))
    feedback_scale: str = setting("weight", "feedback scale of rules that take one: weight "
                                  "(W's size) or seed", choices=("weight", "seed"))
    min_size: int = setting(64, "the model's resize: shorter side", low=1)
    max_size: int = setting(64, "the model's resize: longer side", low=1)
    anchor_scale: float = setting(0.5, "anchor sizes × this (torchvision's 32-512 px suit "
                                  "800 px images; the default 0.5 gives 16-256 px for the "
                                  "small shapes images; 1 for MS-COCO)", above=0)
    aspect_ratio_grouping: bool = setting(False, "batch images of similar aspect ratio together")
    keep_empty_train: bool = setting(False, "train on images without annotations too")
    head_norm: str = setting("groupnorm", "the heads' normalisation: none (torchvision's v1 "
                             "heads) or groupnorm (GroupNorm after each head convolution, as "
                             "torchvision's v2 heads)", choices=("none", "groupnorm"))
