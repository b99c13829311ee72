"""Figures: rules compared (accuracy, alignment per layer, alignment over training) and one run's.

Drawn on matplotlib's Agg canvas through the object API (no pyplot), so nothing here changes
the process's backend or leaves figures open. Colours and markers follow the rule's place in
the comparison, the same in every figure.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Iterable, Sequence
from pathlib import Path

from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from biograd.results.runs import DETECTION, Run, load_run, number, task_metrics, task_summary

DPI = 120
MARKERS = "osD^vP*Xph<>"
Groups = dict[str, list[Run]]  # rule -> its runs (one per seed), in the order given


def plot_run(run_or_dir: Run | str | Path, out: str | Path | None = None) -> list[Path]:
    """Redraw one run's figures into `out` (default: the run folder); returns their paths.

    accuracy.png (train and val top-1, val top-5), loss.png (train and val loss),
    angles_per_layer.png (final weight and gradient angle per layer) and
    angle_over_training.png (every layer's weight angle per epoch, and the means).
    """
    run = run_or_dir if isinstance(run_or_dir, Run) else load_run(run_or_dir)
    out = Path(out) if out is not None else run.path
    out.mkdir(parents=True, exist_ok=True)
    title = f"{run.label}: {task_summary([run])}"
    detection = task_metrics([run]) == DETECTION
    curves = ["AP", "AP50", "AP75"] if detection else ["train_top1", "val_top1", "val_top5"]
    return [
        _run_curves(run, curves, "AP (%)" if detection else "accuracy (%)",
                    f"{'COCO AP' if detection else 'Accuracy'}, {title}", out / "accuracy.png"),
        _run_curves(run, ["train_loss", "val_loss"], "loss", f"Loss, {title}",
                    out / "loss.png"),
        _run_angles_per_layer(run, title, out / "angles_per_layer.png"),
        _run_angle_over_training(run, title, out / "angle_over_training.png"),
    ]


# --- rules compared --------------------------------------------------------------------------

def accuracy_figure(groups: Groups, path: Path) -> Path:
    """Validation top-1 (detection: AP) per epoch, one line per rule: mean over seeds, band
    from min to max."""
    fig, ax = _figure(9, 4.8)
    (key, label), _ = task_metrics([run for runs in groups.values() for run in runs])
    for i, (rule, runs) in enumerate(groups.items()):
        _mean_line(ax, i, _label(rule, runs), [run.series(key) for run in runs])
    name = label.replace(" (%)", "").removeprefix("val ")  # "val top-1 (%)": "top-1"
    _finish(ax, f"Validation {name} per epoch", "epoch", f"validation {name} (%)",
            integer_x=True)
    _legend(fig, ax)
    return _save(fig, path)


def angle_over_training_figure(groups: Groups, path: Path) -> Path:
    """Mean weight angle over training, one line per rule (mean over seeds, band min to max):
    every --angle-every steps where the runs logged that, else per epoch."""
    fig, ax = _figure(9, 4.8)
    every_step = all(run.steps for runs in groups.values() for run in runs)
    for i, (rule, runs) in enumerate(groups.items()):
        _mean_line(ax, i, _label(rule, runs),
                   [run.angle_series() if every_step else run.series("mean_weight_angle")
                    for run in runs])
    _finish(ax, "Angle between forward weights W and feedback B over training", "epoch",
            "mean angle(W, B) over layers (degrees)", integer_x=not every_step)
    ax.set_ylim(bottom=-1)
    _legend(fig, ax)
    return _save(fig, path)


def angles_per_layer_figure(groups: Groups, path: Path) -> Path:
    """Final weight angle per layer (network order), one line per rule, mean over seeds."""
    per_rule = {rule: _mean_layers([run.final_layers("weight_angles") for run in runs])
                for rule, runs in groups.items()}
    layers = [name for name in layer_order(per_rule.values())
              if any(math.isfinite(angles.get(name, math.nan)) for angles in per_rule.values())]
    fig, ax = _figure(_layers_width(len(layers)), 4.8)
    for i, (rule, angles) in enumerate(per_rule.items()):
        _layer_line(ax, i, _label(rule, groups[rule]), layers, angles)
    _finish(ax, "Final angle between forward weights W and feedback B, per layer", "layer",
            "angle(W, B) (degrees)")
    _layer_axis(ax, layers)
    _legend(fig, ax)
    return _save(fig, path)


# --- one run ---------------------------------------------------------------------------------

def _run_curves(run: Run, keys: Sequence[str], ylabel: str, title: str, path: Path) -> Path:
    fig, ax = _figure(7, 4.2)
    positive = []
    for i, key in enumerate(keys):
        epochs, values = run.series(key)
        if any(math.isfinite(v) for v in values):
            ax.plot(epochs, values, marker=MARKERS[i], **_marks(len(epochs)),
                    label=key.replace("_", " ").replace("top", "top-"))
            positive += [v for v in values if math.isfinite(v)]
    if positive and min(positive) > 0 and max(positive) / min(positive) > 20:
        ax.set_yscale("log")
    _finish(ax, title, "epoch", ylabel, integer_x=True)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=9)
    return _save(fig, path)


def _run_angles_per_layer(run: Run, title: str, path: Path) -> Path:
    series = {"weight angle(W, B)": run.final_layers("weight_angles"),
              "gradient angle to bp": run.final_layers("gradient_angles")}
    layers = [name for name in layer_order(series.values())
              if any(math.isfinite(s.get(name, math.nan)) for s in series.values())]
    fig, ax = _figure(_layers_width(len(layers)), 4.8)
    for i, (label, angles) in enumerate(series.items()):
        if angles:
            _layer_line(ax, i, label, layers, angles)
    _finish(ax, f"Final angles per layer, {title}", "layer", "angle (degrees)")
    _layer_axis(ax, layers)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=9)
    return _save(fig, path)


def _run_angle_over_training(run: Run, title: str, path: Path) -> Path:
    """Each layer's angle(W, B) and their mean, every --angle-every steps where angles.jsonl
    has them (else per epoch), and the mean angle to bp's gradient per epoch; points are
    marked where a line has too few to show."""
    fig, ax = _figure(7.5, 4.5)
    records = run.steps or run.metrics
    layers = layer_order(r.get("weight_angles") or {} for r in records)
    x = [number(r.get("epoch")) for r in records]
    colours = colormaps["viridis"]

    def draw(xs, ys, *style, **kw):
        ax.plot(xs, ys, *style, marker="o" if len(xs) < 3 else None, ms=3, **kw)

    for j, name in enumerate(layers):
        values = [_get(r.get("weight_angles"), name) for r in records]
        if any(math.isfinite(v) for v in values):
            draw(x, values, lw=0.8, alpha=0.6, color=colours(j / max(1, len(layers) - 1)))
    series = {"mean weight angle(W, B)": (run.angle_series(), "-"),
              "mean gradient angle to bp": (run.series("mean_gradient_angle"), "--")}
    for label, ((xs, values), style) in series.items():
        if any(math.isfinite(v) for v in values):
            draw(xs, values, style, lw=2.2, color="black", label=label)
    if layers and ax.lines:  # thin lines: one per layer, coloured first (dark) to last (yellow)
        ax.plot([], [], lw=0.8, color=colours(0.5),
                label=f"one layer ({_short(layers[0])} dark … {_short(layers[-1])} light)")
    _finish(ax, f"Angles during training, {title}", "epoch", "angle (degrees)", integer_x=True)
    ax.set_ylim(bottom=-1)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=9)
    return _save(fig, path)


# --- helpers ---------------------------------------------------------------------------------

def layer_order(mappings: Iterable[dict]) -> list[str]:
    """All layer names, in network order: each new name goes after its predecessor."""
    order: list[str] = []
    for mapping in mappings:
        previous = None
        for name in mapping:
            if name not in order:
                order.insert(order.index(previous) + 1 if previous is not None else 0, name)
            previous = name
    return order


def short_labels(names: Sequence[str], width: int = 24) -> list[str]:
    """Axis labels: the dotted prefix all names share removed, long names cut in the middle."""
    parts = [name.split(".") for name in names]
    common = 0
    while (parts and all(len(p) > common + 1 for p in parts)
           and len({p[common] for p in parts}) == 1):
        common += 1
    return [_short(".".join(p[common:]), width) for p in parts]


def _short(name: str, width: int = 24) -> str:
    if len(name) <= width:
        return name
    head = (width - 1) // 2
    return f"{name[:head]}…{name[-(width - 1 - head):]}"


def _figure(width: float, height: float) -> tuple[Figure, Axes]:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI)
    return path


def _style(i: int) -> dict:
    palette = colormaps["tab10" if i < 10 else "tab20"]
    return {"color": palette(i % palette.N), "marker": MARKERS[i % len(MARKERS)]}


def _marks(points: int) -> dict:
    return {"markersize": 4, "markevery": max(1, points // 15)}


def _finish(ax: Axes, title: str, xlabel: str, ylabel: str, integer_x: bool = False) -> None:
    # wrapped to the figure's width (about 10 characters an inch at this size): a run's
    # title carries its task summary, which can be longer than the figure is wide
    ax.set_title(textwrap.fill(title, int(ax.figure.get_figwidth() * 10)), fontsize=11)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if integer_x:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if not any(len(line.get_xdata()) for line in ax.lines):
        ax.text(0.5, 0.5, "nothing recorded", transform=ax.transAxes, ha="center",
                va="center", color="grey")


def _legend(fig: Figure, ax: Axes) -> None:
    if ax.get_legend_handles_labels()[0]:
        fig.legend(loc="outside right upper", fontsize=9, title="rule")


def _label(rule: str, runs: list[Run]) -> str:
    """The rule, how many seeds its line averages, and how many runs did not finish."""
    notes = [] if len(runs) == 1 else [f"mean of {len(runs)} seeds"]
    unfinished = [run for run in runs if run.status != "finished"]
    for status in dict.fromkeys(run.status for run in unfinished):
        count = sum(run.status == status for run in unfinished)
        notes.append(status if len(runs) == 1 else f"{count} {status}")
    return f"{rule} ({', '.join(notes)})" if notes else rule


def _mean_line(ax: Axes, i: int, label: str, series: list[tuple[list[int], list[float]]]) -> None:
    """Mean over seeds at each epoch (of the seeds that reached it); band from min to max."""
    epochs = sorted({e for xs, _ in series for e in xs})
    at = [dict(zip(xs, ys, strict=True)) for xs, ys in series]
    values = [[v for a in at if math.isfinite(v := a.get(e, math.nan))] for e in epochs]
    mean = [math.fsum(vs) / len(vs) if vs else math.nan for vs in values]
    style = _style(i)
    if not any(math.isfinite(v) for v in mean):
        ax.plot([], [], lw=0, label=f"{label}: none recorded", **style)
        return
    ax.plot(epochs, mean, label=label, **style, **_marks(len(epochs)))
    if len(series) > 1:
        low = [min(vs) if vs else math.nan for vs in values]
        high = [max(vs) if vs else math.nan for vs in values]
        ax.fill_between(epochs, low, high, color=style["color"], alpha=0.2, lw=0)


def _mean_layers(mappings: list[dict[str, float]]) -> dict[str, float]:
    """{layer: mean of its finite values over seeds}, in network order."""
    means = {}
    for name in layer_order(mappings):
        values = [v for m in mappings if math.isfinite(v := m.get(name, math.nan))]
        means[name] = math.fsum(values) / len(values) if values else math.nan
    return means


def _layer_line(ax: Axes, i: int, label: str, layers: list[str], angles: dict) -> None:
    points = [(x, angles[name]) for x, name in enumerate(layers)
              if math.isfinite(angles.get(name, math.nan))]
    style = _style(i)
    if not points:
        ax.plot([], [], lw=0, label=f"{label}: none recorded", **style)
        return
    xs, ys = zip(*points, strict=True)
    ax.plot(xs, ys, label=label, markersize=5, **style)


def _layer_axis(ax: Axes, layers: list[str]) -> None:
    step = max(1, math.ceil(len(layers) / 40))  # at most about 40 labels
    ticks = list(range(0, len(layers), step))
    labels = short_labels(layers)
    if max(map(len, labels), default=0) > 6 or len(ticks) > 12:
        ax.set_xticks(ticks, [labels[t] for t in ticks], rotation=55, ha="right",
                      rotation_mode="anchor", fontsize=8)
    else:
        ax.set_xticks(ticks, [labels[t] for t in ticks])
    top = max([90.0, *(y for line in ax.lines for y in line.get_ydata())])
    ax.axhline(90, color="grey", ls=":", lw=1, label="90°: orthogonal")
    ax.set_ylim(-0.02 * top, top * 1.08)  # below 0 so that bp's zeros stay in sight
    if layers:
        ax.set_xlim(-0.5, len(layers) - 0.5)


def _layers_width(count: int) -> float:
    return min(16.0, max(9.0, 4.5 + 0.28 * count))


def _get(mapping: object, key: str) -> float:
    return number(mapping.get(key)) if isinstance(mapping, dict) else math.nan


def _distinct(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))
