"""Run folders as the engine writes them, read back for tables and figures.

A run folder holds `config.yaml` (the resolved config: `rule`, `seed`, `model`, `data`,
`epochs`, ...), `metrics.jsonl` (one JSON object per completed epoch) and, optionally,
`status.json` ({"status": "running" | "finished" | "diverged" | "interrupted" | "failed",
"message": str}).
Missing keys and NaN/null values are read as NaN, so a failed epoch or a bp run with no
angles never stops a report.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger("biograd")

CONFIG, METRICS, STATUS = "config.yaml", "metrics.jsonl", "status.json"
TEST = "test.json"  # with --val-split: the test split, scored by the best validation epoch
ANGLES = "angles.jsonl"


@dataclass
class Run:
    """One training run: its folder, resolved config, per-epoch metrics and final status.

    metrics: one dict per epoch, sorted by `epoch`; a resumed run that wrote an epoch twice
    keeps the later line. status: status.json's status, or, without that file, "diverged"
    if a loss went non-finite, "finished" if all configured epochs are there, else
    "incomplete".
    """

    path: Path
    config: dict
    metrics: list[dict]
    status: str
    message: str = ""
    steps: list[dict] = field(default_factory=list)  # angles.jsonl (--angle-every), by step
    test: dict = field(default_factory=dict)  # test.json (--val-split), else empty

    @property
    def rule(self) -> str:
        rule = self.config.get("rule")
        if rule is None and self.metrics:
            rule = self.metrics[0].get("rule")
        return str(rule)

    @property
    def seed(self) -> int | None:
        seed = self.config.get("seed")
        if seed is None and self.metrics:
            seed = self.metrics[0].get("seed")
        return seed

    @property
    def label(self) -> str:
        return self.rule if self.seed is None else f"{self.rule}, seed {self.seed}"

    @property
    def epochs_done(self) -> int:
        return len(self.metrics)

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(epochs, values) of one metric; NaN where an epoch lacks it."""
        return [m["epoch"] for m in self.metrics], [number(m.get(key)) for m in self.metrics]

    def angle_series(self) -> tuple[list[float], list[float]]:
        """(epochs, mean weight angle): every --angle-every steps (fractional epochs, from 0)
        where the run logged them, else per epoch."""
        if self.steps:
            return ([number(r.get("epoch")) for r in self.steps],
                    [number(r.get("mean_weight_angle")) for r in self.steps])
        return self.series("mean_weight_angle")

    def final(self, key: str) -> float:
        """The metric at the last epoch that recorded it; NaN if none did."""
        for m in reversed(self.metrics):
            if m.get(key) is not None:
                return number(m[key])
        return math.nan

    def best(self, key: str) -> float:
        """The highest finite value of the metric over epochs; NaN if none."""
        return max((v for v in self.series(key)[1] if math.isfinite(v)), default=math.nan)

    def final_layers(self, key: str = "weight_angles") -> dict[str, float]:
        """The last non-empty {layer: degrees} mapping, in network order."""
        for m in reversed(self.metrics):
            layers = m.get(key)
            if isinstance(layers, dict) and layers:
                return {str(k): number(v) for k, v in layers.items()}
        return {}

    @property
    def seconds(self) -> float:
        """Training time: the last cumulative elapsed_seconds, else the sum of epoch_seconds."""
        elapsed = self.final("elapsed_seconds")
        if math.isfinite(elapsed):
            return elapsed
        parts = [v for v in self.series("epoch_seconds")[1] if math.isfinite(v)]
        return math.fsum(parts) if parts else math.nan


def number(value: Any) -> float:
    """A metric value as a float: None, text that is not a number, or a bool give NaN."""
    if isinstance(value, bool) or value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def load_run(path: str | Path) -> Run:
    """Read a run folder. ValueError (one line) if `path` is not one."""
    path = Path(path)
    what = f"{path} is not a run folder"
    hint = f"(a run folder holds {CONFIG} and {METRICS}, written by the engine)"
    if not path.is_dir():
        raise ValueError(f"{what}: not a directory {hint}")
    if not (path / CONFIG).is_file():
        inside = sorted(p.name for p in path.iterdir() if (p / CONFIG).is_file())
        if inside:  # a compare folder: its figures are compare's; each run's are plot's
            hint = (f"(it holds the run folders {', '.join(inside)}: give one of them, like "
                    f"{path / inside[0]})")
        raise ValueError(f"{what}: no {CONFIG} {hint}")
    if not (path / METRICS).is_file() and not (path / STATUS).is_file():
        raise ValueError(f"{what}: no {METRICS} {hint}")
    config = _read_config(path / CONFIG)
    metrics = _read_metrics(path / METRICS) if (path / METRICS).is_file() else []
    if config.get("rule") is None and not (metrics and metrics[0].get("rule")):
        raise ValueError(f"{path / CONFIG} names no rule: expected a 'rule' key")
    status, message = _read_status(path / STATUS, config, metrics)
    steps = _read_steps(path / ANGLES) if (path / ANGLES).is_file() else []
    test = json.loads((path / TEST).read_text()) if (path / TEST).is_file() else {}
    return Run(path=path, config=config, metrics=metrics, status=status, message=message,
               steps=steps, test=test)


def _read_steps(file: Path) -> list[dict]:
    """angles.jsonl's records by step (a cut-short last line skipped; a later line wins)."""
    by_step: dict[int, dict] = {}
    for i, line in enumerate(file.read_text().splitlines(), 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            log.warning("%s:%d: skipping a line that is not JSON", file, i)
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            by_step[record["step"]] = record
    return [by_step[k] for k in sorted(by_step)]


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads tags it does not know (!!python/tuple, ...) as plain data."""


def _plain(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


_Loader.add_multi_constructor("", _plain)


def _read_config(file: Path) -> dict:
    try:
        config = yaml.load(file.read_text(), Loader=_Loader)  # a SafeLoader: no code runs
    except yaml.YAMLError as err:
        problem = str(err).splitlines()[0]
        raise ValueError(f"{file} is not valid YAML: {problem}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{file} is not a mapping: got {type(config).__name__}")
    return config


def _read_metrics(file: Path) -> list[dict]:
    lines = [(i, line) for i, line in enumerate(file.read_text().splitlines(), 1)
             if line.strip()]
    by_epoch: dict[int, dict] = {}
    epoch = 0
    for i, line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if i == lines[-1][0]:  # a line cut short: the run is still writing or was killed
                log.warning("%s:%d: skipping an incomplete last line", file, i)
                continue
            raise ValueError(f"{file}:{i}: not a JSON object ({err.msg})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{file}:{i}: not a JSON object (got {type(record).__name__})")
        given = record.get("epoch")
        epoch = given if isinstance(given, int) and not isinstance(given, bool) else epoch + 1
        by_epoch[epoch] = {**record, "epoch": epoch}  # a resumed run's later line wins
    return [by_epoch[e] for e in sorted(by_epoch)]


def _read_status(file: Path, config: dict, metrics: list[dict]) -> tuple[str, str]:
    if file.is_file():
        try:
            status = json.loads(file.read_text())
            return str(status["status"]), str(status.get("message") or "")
        except (json.JSONDecodeError, TypeError, KeyError):
            log.warning("%s: unreadable, inferring the status from the metrics", file)
    losses = [number(m[k]) for m in metrics for k in ("train_loss", "val_loss")
              if m.get(k) is not None]
    if any(not math.isfinite(v) for v in losses):
        return "diverged", "a loss became non-finite"
    epochs = config.get("epochs")
    if isinstance(epochs, int) and len(metrics) < epochs:
        return "incomplete", f"{len(metrics)} of {epochs} epochs recorded"
    return "finished", ""


def task_summary(runs: Iterable[Run]) -> str:
    """'model X, data Y, N epochs' from the runs' configs, every distinct value listed."""
    runs = list(runs)

    def model(config: dict) -> object:  # a detector's config names its backbone instead
        if "model" not in config and "backbone" in config:
            return f"RetinaNet {describe(config['backbone'])} FPN"
        return config.get("model")

    models = " / ".join(dict.fromkeys(describe(model(run.config)) for run in runs))
    data, epochs = (" / ".join(dict.fromkeys(describe(run.config.get(key)) for run in runs))
                    for key in ("data", "epochs"))
    held = {run.config.get("val_split") for run in runs if "model" in run.config}
    split = ""
    if held and held != {None}:
        split = (f"; validation: {' / '.join(str(h) for h in sorted(held - {None}))} images "
                 f"held out of the training split; test: the test split, scored with the "
                 f"model of the best validation epoch")
    elif held:
        split = "; validation: the test split"
    return f"model {models}, data {data}, {epochs} epoch{'' if epochs == '1' else 's'}{split}"


def describe(value: object) -> str:
    """A config entry in a few words: a mapping by its name (or its plain items), else text."""
    if isinstance(value, dict):
        for key in ("name", "arch", "type", "dataset"):
            if key in value:
                return str(value[key])
        return ", ".join(f"{k}={v}" for k, v in value.items() if not isinstance(v, dict | list))
    return "?" if value is None else str(value)


#: (metric key, label) pairs a task reports first: classification, detection.
CLASSIFICATION = (("val_top1", "val top-1 (%)"), ("val_top5", "val top-5 (%)"))
DETECTION = (("AP", "AP (%)"), ("AP50", "AP50 (%)"))


def task_metrics(runs: list[Run]) -> tuple[tuple[str, str], tuple[str, str]]:
    """The two headline metrics of the runs' task: COCO AP and AP50 for detection runs,
    validation top-1 and top-5 otherwise."""
    detection = any("AP" in line for run in runs for line in run.metrics)
    return DETECTION if detection else CLASSIFICATION
