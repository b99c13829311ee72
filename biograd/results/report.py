"""`biograd compare`'s folder: report.md, results.csv and three figures from run folders.

Per run: best = the highest value over epochs (each metric on its own), final = the value at
the last epoch that recorded it, time = the run's cumulative elapsed_seconds. Per rule, with
several seeds: mean ± sample standard deviation over the seeds that have a finite value.
Runs of one rule whose recipes differ (not only in seed) get a row each (`group_label`).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import statistics
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import biograd
from biograd.config import RESUMABLE, DetectConfig, TrainConfig, comparable, field_default
from biograd.results import figures
from biograd.results.runs import Run, describe, task_metrics, task_summary


def numbers(runs: list[Run]) -> list[tuple[str, str, int]]:
    """(key in results.csv, table heading, decimals) for the task of `runs`."""
    (first, first_label), (second, second_label) = task_metrics(runs)
    tested = [("test_top1", "test top-1 (%), best val epoch", 2)] if any(
        run.test for run in runs) else []
    gradient = [("final_mean_gradient_angle", "final mean angle to bp's gradient (°)", 1)] if any(
        math.isfinite(run.final("mean_gradient_angle")) for run in runs) else []
    return [
        (f"best_{first}", f"best {first_label}", 2),
        (f"final_{first}", f"final {first_label}", 2),
        (f"best_{second}", f"best {second_label}", 2),
        (f"final_{second}", f"final {second_label}", 2),
        *tested,
        ("final_mean_weight_angle", "final mean angle(W, B) (°)", 1),
        *gradient,
        ("seconds", "time (s)", 1),
    ]


FIGURES = {  # file: (caption in report.md, drawing)
    "accuracy.png": ("Validation {label} per epoch", figures.accuracy_figure),
    "angles_per_layer.png": ("Final angle between W and B per layer",
                             figures.angles_per_layer_figure),
    "angle_over_training.png": ("Mean angle between W and B per epoch",
                                figures.angle_over_training_figure),
}


def summarize(run: Run, keys: list[tuple[str, str, int]] | None = None) -> dict[str, float]:
    """The run's numbers for the table and results.csv (NaN where not recorded)."""
    keys = keys or numbers([run])
    values = {"final_mean_weight_angle": run.final("mean_weight_angle"),
              "final_mean_gradient_angle": run.final("mean_gradient_angle"),
              "seconds": run.seconds}
    values = {key: values[key] for key, _, _ in keys if key in values}
    for key, _, _ in keys:
        if key == "test_top1":  # test.json, with --val-split
            values[key] = float(run.test.get("test_top1", math.nan))
            continue
        kind, _, metric = key.partition("_")
        if kind in ("best", "final") and key not in values:
            values[key] = run.best(metric) if kind == "best" else run.final(metric)
    return values


def write_report(runs: list[Run], out: str | Path) -> dict[str, Path]:
    """Write report.md, results.csv and the figures into `out`; returns {file name: path}.

    Rules appear in the order of their first run in `runs`; a rule's runs are its seeds,
    unless their recipes differ: then each recipe is a row of its own (`group_label`).
    """
    if not runs:
        raise ValueError("write_report needs at least one run")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    groups: figures.Groups = {}
    for run in runs:
        groups.setdefault(group_label(run, runs), []).append(run)
    written = {"report.md": out / "report.md", "results.csv": out / "results.csv"}
    written["report.md"].write_text(_markdown(groups, out))
    _write_csv(runs, written["results.csv"])
    for file, (_, draw) in FIGURES.items():
        written[file] = draw(groups, out / file)
    return written


def group_label(run: Run, runs: list[Run]) -> str:
    """The row `run` belongs to: its rule, and, where runs of that rule differ in their
    recipe (--dale, --lr, the model, ...), the entries that set it apart ("ss, dale=0.8"):
    only seeds of one recipe are averaged."""
    same_rule = [comparable(r.config) for r in runs if r.rule == run.rule]
    keys = sorted({k for config in same_rule for k in config} - RESUMABLE - {"rule", "seed"})
    differ = [k for k in keys if len({_key(_entry(c, k)) for c in same_rule}) > 1]
    values = {k: _entry(comparable(run.config), k) for k in differ}
    return ", ".join([run.rule, *(f"{k}={'none' if v is None else describe(v)}"
                                  for k, v in values.items())])


def _entry(config: dict, key: str) -> object:
    """config[key]; where a run's config lacks it (written before the field existed), the
    field's default, which is what that run trained with."""
    if key in config:
        return config[key]
    cls = DetectConfig if "backbone" in config else TrainConfig
    field = next((f for f in dataclasses.fields(cls) if f.name == key), None)
    return None if field is None else field_default(field)


def _key(value: object) -> str:
    """A value's text for comparing: mappings in key order and 1.0 as 1, so notation alone
    never splits runs of one recipe."""
    def plain(v: object) -> object:
        if isinstance(v, float) and v.is_integer():
            return int(v)
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return [plain(x) for x in v] if isinstance(v, list | tuple) else v

    return json.dumps(plain(value), sort_keys=True, default=str)


def _write_csv(runs: list[Run], path: Path) -> None:
    keys = numbers(runs)
    fields = ["rule", "seed", "status", "epochs_done", "epochs", *(k for k, _, _ in keys), "path"]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for run in runs:
            writer.writerow({
                "rule": run.rule,
                "seed": "" if run.seed is None else run.seed,
                "status": run.status,
                "epochs_done": run.epochs_done,
                "epochs": run.config.get("epochs", ""),
                **{key: repr(value) for key, value in summarize(run, keys).items()},
                "path": _relative(run.path, path.parent),
            })


def _markdown(groups: dict[str, list[Run]], out: Path) -> str:
    runs = [run for group in groups.values() for run in group]
    several = any(len(group) > 1 for group in groups.values())
    keys = numbers(runs)
    head = ["rule", "seeds", *(heading for _, heading, _ in keys), "status"]
    lines = [
        f"# Learning rules compared: {', '.join(groups)}",
        "",
        f"**Task:** {task_summary(runs)}.",
        "",
        "| " + " | ".join(head) + " |",
        "| " + " | ".join(["---"] * 2 + ["---:"] * len(keys) + ["---"]) + " |",
    ]
    for rule, group in groups.items():
        values = [summarize(run, keys) for run in group]
        seeds = ", ".join("–" if run.seed is None else str(run.seed) for run in group)
        cells = [f"`{rule}`", seeds if len(group) == 1 else f"{len(group)} ({seeds})"]
        cells += [_cell([n[key] for n in values], digits) for key, _, digits in keys]
        cells.append(_status(group))
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines += [
        "",
        "Best: the highest value over epochs, each metric on its own; final: the last epoch's. "
        "Angle: mean over the layers on the run's rule of the angle between the forward "
        "weights W and the feedback B the backward uses (0 under bp, whose B is W; – where "
        "no layer is on the rule, where B is not W's shape, as under dfa and drtp, or where "
        "the random B sits at blocks' outputs, as under dfa_blocks)." + (
            " Angle to bp's gradient: mean over the same layers of the angle between the "
            "rule's weight gradient and backprop's on a fixed batch (what DFA papers report)."
            if any(key == "final_mean_gradient_angle" for key, _, _ in keys) else ""),
    ]
    if several:
        lines[-1] += (" With several seeds: mean ± sample standard deviation over the seeds "
                      "(count in the seeds column; (n=k) where only k of them have the number).")
    notes = [f"- {run.label} ([{folder}]({folder})): {run.status} after {run.epochs_done} of "
             f"{run.config.get('epochs', '?')} epochs" + (f": {run.message}" if run.message else "")
             for run in runs if run.status != "finished"
             for folder in [_relative(run.path, out)]]
    if notes:
        lines += ["", "Runs that did not finish:", "", *notes]
    lines.append("")
    label = task_metrics(runs)[0][1].replace(" (%)", "").removeprefix("val ")
    for file, (caption, _) in FIGURES.items():
        lines += [f"![{caption.format(label=label)}]({file})", ""]
    if several:
        lines += ["Lines with several seeds: the mean over seeds, shaded from the lowest to the "
                  "highest seed.", ""]
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines += [f"Made by `biograd compare` (biograd {biograd.__version__}) from {len(runs)} "
              f"run folders on {when}; per-run numbers in results.csv.", ""]
    return "\n".join(lines)


def _cell(values: list[float], digits: int) -> str:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "–"
    if len(finite) == 1:
        text = f"{finite[0]:.{digits}f}"
    else:
        text = f"{statistics.fmean(finite):.{digits}f} ± {statistics.stdev(finite):.{digits}f}"
    return text if len(finite) == len(values) else f"{text} (n={len(finite)})"


def _status(group: list[Run]) -> str:
    counts = Counter(run.status for run in group)
    if len(counts) == 1:
        return next(iter(counts))
    return ", ".join(f"{n} {status}" for status, n in counts.items())


def _relative(path: Path, start: Path) -> str:
    try:
        return Path(os.path.relpath(path, start)).as_posix()
    except ValueError:  # another drive on Windows
        return Path(path).as_posix()
