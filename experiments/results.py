"""Write RESULTS.md and its figures from the run folders that experiments/reproduce.py made.

    python experiments/results.py runs/experiments      # -> experiments/RESULTS.md
    python experiments/results.py experiments/runs      # the same, from the committed records

Every number and verdict in RESULTS.md is computed here from OUT/DATA/RULE-seedN (config.yaml,
metrics.jsonl, angles.jsonl) and OUT/experiment.json (commands, machine, wall time): nothing
is typed in by hand except the published numbers below and the thresholds of the verdicts,
which the page states.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

from biograd.results import load_run
from biograd.results.figures import (
    accuracy_figure,
    angle_over_training_figure,
    angles_per_layer_figure,
)
from biograd.rules import get_rule, list_rules

# Top-1 test error (%), biotorch's Benchmarks.md (Sanfiz & Akrout 2021), as quoted in
# ../shared/REFERENCE.md; biotorch's "uSF" is the seed's sign-symmetry (ss).
PUBLISHED = {
    "mnist": {"bp": 0.91, "fa": 1.7, "ss": 0.94, "brsf": 0.91, "frsf": 0.97, "dfa": 1.61},
    "fashion-mnist": {"bp": 9.2, "fa": 13.06, "ss": 9.69, "brsf": 10.02, "frsf": 9.61,
                      "dfa": 12.81},
}
TITLES = {"fashion-mnist": "Fashion-MNIST", "mnist": "MNIST", "digits": "digits (sklearn)"}
ORDER = ("fashion-mnist", "mnist", "digits")
ROOT = Path(__file__).resolve().parents[1]

SS_TARGET = 0.5  # points of error: "SS within 0.5 points of BP" (the target)
FA_BEHIND = 1.0  # points of error: FA "well behind" BP at least by this much...
FA_VS_SS = 3.0  # ...and by this many times SS's gap
ALIGNED = 10.0  # degrees: "KP and WM final angles under 10 degrees" (the target)
SS_RANGE = (30.0, 55.0)  # degrees: the seed's SS angles on ImageNet
SS_MOVED = 3.0  # degrees: an SS layer whose angle moved less has kept its initial shape
GAUSSIAN = math.degrees(math.acos(math.sqrt(2 / math.pi)))  # SS's angle for Gaussian weights


# --- reading ---------------------------------------------------------------------------------

def load(out: Path) -> dict[str, dict[str, list]]:
    """{data set: {rule: [Run, one per seed]}}, rules in the registry's order."""
    found: dict[str, dict[str, list]] = {}
    for data in ORDER:
        folder = out / data
        if not folder.is_dir():
            continue
        runs = [load_run(p) for p in sorted(folder.iterdir()) if (p / "config.yaml").is_file()]
        groups = {rule: sorted((r for r in runs if r.rule == rule), key=lambda r: r.seed or 0)
                  for rule in list_rules()}
        found[data] = {rule: rs for rule, rs in groups.items() if rs}
    return found


def error(run) -> float:
    return 100.0 - run.final("val_top1")


def mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def pm(values: list[float], digits: int = 2) -> str:
    m, s = mean_std(values)
    return "n/a" if math.isnan(m) else f"{m:.{digits}f} ± {s:.{digits}f}"


def layer_means(runs: list, key: str) -> dict[str, float]:
    """The final epoch's per-layer `key` (weight_angles, gradient_angles), mean over the
    seeds, network order."""
    per_seed = [layers for run in runs if (layers := run.final_layers(key))]
    names = list(per_seed[0]) if per_seed else []
    return {n: statistics.fmean(s[n] for s in per_seed if n in s) for n in names}


def rule_layers(runs: list) -> dict[str, float]:
    """Final weight angle per layer on the run's rule (mean over seeds), network order; the
    last layer is left out when it was on another rule (last_rule)."""
    layers = layer_means(runs, "weight_angles")
    config = runs[0].config
    if layers and config.get("last_rule", config.get("rule")) != config.get("rule"):
        layers.pop(next(reversed(layers)))
    return layers


def initial_layers(runs: list, names: list[str]) -> dict[str, float]:
    """Weight angle per layer at step 0 (angles.jsonl), mean over the seeds that logged it."""
    first = [run.steps[0]["weight_angles"] for run in runs
             if run.steps and run.steps[0].get("step") == 0]
    return {n: statistics.fmean(f[n] for f in first) for n in names if first and n in first[0]}


def gap(groups: dict[str, list], rule: str) -> tuple[float, float]:
    """(mean error of `rule` - mean error of bp, the two std's added): points."""
    m, s = mean_std([error(r) for r in groups.get(rule, [])])
    b, t = mean_std([error(r) for r in groups.get("bp", [])])
    return m - b, s + t


# --- writing ---------------------------------------------------------------------------------

def table(data: str, groups: dict[str, list]) -> list[str]:
    published = PUBLISHED.get(data, {})
    lines = ["| rule | test error % (mean ± std) | seeds | published (biotorch) | "
             "final mean angle ° | minutes per run |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for rule, runs in groups.items():
        unfinished = [r for r in runs if r.status != "finished"]
        note = f" ({len(unfinished)} not finished)" if unfinished else ""
        ref = published.get(rule)
        lines.append(
            f"| {rule} | {pm([error(r) for r in runs])}{note} | {len(runs)} | "
            f"{'—' if ref is None else f'{ref:.2f}'} | "
            f"{angle_cell(rule, runs)} | "
            f"{statistics.fmean(r.seconds for r in runs) / 60:.1f} |")
    return lines


def angle_cell(rule: str, runs: list) -> str:
    """The final mean angle between W and B; dfa's B maps the output error, it has none."""
    if rule == "bp":
        return "0"
    if get_rule(rule).direct:
        return "— (B is not W's shape)"
    return pm([r.final("mean_weight_angle") for r in runs], 1)


def verdicts(found: dict[str, dict[str, list]]) -> list[str]:
    lines = []
    hard, easy = found.get("fashion-mnist", {}), found.get("mnist", {})

    # 1. SS trains nearly as well as BP.
    parts, held = [], []
    for data in ("fashion-mnist", "mnist"):
        if "ss" in found.get(data, {}) and "bp" in found.get(data, {}):
            g, noise = gap(found[data], "ss")
            held.append(g <= SS_TARGET)
            parts.append(f"{TITLES[data]}: SS − BP = {g:+.2f} points (std's added: "
                         f"{noise:.2f})")
    verdict = ("cannot be told (runs missing)" if not held else
               "holds" if all(held) else "does not hold" if not any(held) else
               "holds on one data set only")
    line = (f"- 1. **SS trains nearly as well as BP** (target: within {SS_TARGET} points of "
            f"error): **{verdict}**. " + "; ".join(parts) + ".")
    # the angle between SS's weight gradients and backprop's, per layer
    grads = layer_means(hard["ss"], "gradient_angles") if "ss" in hard else {}
    if grads:
        first, top = next(iter(grads.items())), max(grads.values())
        line += (f" Where SS loses: on Fashion-MNIST the angle of its weight gradients to "
                 f"backprop's grows from {min(grads.values()):.1f}° under the classifier to "
                 f"{first[1]:.1f}° at the first layer ({first[0]}; largest {top:.1f}°), the "
                 f"feedback's error compounding downwards.")
    lines.append(line)

    # 2. FA falls well behind on harder tasks.
    if all(r in hard for r in ("fa", "ss", "bp")) and all(r in easy for r in ("fa", "bp")):
        fa_hard, n_hard = gap(hard, "fa")
        fa_easy, _ = gap(easy, "fa")
        ss_hard, _ = gap(hard, "ss")
        behind = fa_hard >= FA_BEHIND and fa_hard >= FA_VS_SS * max(ss_hard, 0.0) \
            and fa_hard > n_hard
        harder = fa_hard > fa_easy
        verdict = "holds" if behind and harder else "does not hold"
        lines.append(
            f"- 2. **FA falls well behind BP, more so on the harder task** (thresholds: FA − BP "
            f"at least {FA_BEHIND} point, {FA_VS_SS:.0f}× SS's gap and more than the std's "
            f"added, and larger on Fashion-MNIST than on MNIST): **{verdict}**. FA − BP = "
            f"{fa_hard:+.2f} points on Fashion-MNIST (SS − BP {ss_hard:+.2f}), "
            f"{fa_easy:+.2f} on MNIST.")
    else:
        lines.append("- 2. **FA falls well behind on harder tasks**: cannot be told (runs "
                     "missing).")

    # 3. SS learns with feedback 30-55 degrees away, more in early layers.
    layers = rule_layers(hard["ss"]) if "ss" in hard else {}
    if layers:
        values = list(layers.values())
        low, high = min(values), max(values)
        inside = SS_RANGE[0] - 3 <= low and high <= SS_RANGE[1] + 3
        third = max(1, len(values) // 3)
        early, late = statistics.fmean(values[:third]), statistics.fmean(values[-third:])
        g, _ = gap(hard, "ss")
        verdict = "holds" if inside and g <= SS_TARGET else "does not hold"
        lines.append(
            f"- 3a. **SS learns well although its feedback is {SS_RANGE[0]:.0f}° to "
            f"{SS_RANGE[1]:.0f}° from W**: **{verdict}**. On Fashion-MNIST the final SS "
            f"angles per layer run from {low:.1f}° to "
            f"{high:.1f}° (mean over seeds; ±3° of slack on the range), with SS − BP = "
            f"{g:+.2f} points of error.")
        # SS's cos(B, W) is mean|w| / rms(w): the angle reads only the shape of W's
        # distribution. Where no layer's has moved from its initial value, training has not
        # reshaped the weights, and an early-late difference could not have formed.
        start = initial_layers(hard["ss"], list(layers))
        moved = max((abs(layers[n] - a) for n, a in start.items()), default=math.nan)
        if early > late + 2:
            verdict = "holds"
        elif moved < SS_MOVED:
            verdict = "cannot be told at this scale"
        else:
            verdict = "does not hold"
        line = (f"- 3b. **SS's angle is larger in early layers than in late ones**: "
                f"**{verdict}** (threshold: 2°). The first third of the layers averages "
                f"{early:.1f}°, the last third {late:.1f}°.")
        if start:
            line += (f" SS's cos(B, W) is mean|w| / rms(w), a property of the shape of W's "
                     f"distribution alone (Gaussian weights give {GAUSSIAN:.1f}°, uniform "
                     f"ones 30°); the layers started at {min(start.values()):.1f}° to "
                     f"{max(start.values()):.1f}° and no layer's final angle is more than "
                     f"{moved:.1f}° from its start"
                     + (f" (under {SS_MOVED:.0f}°: the weights kept their initial shape, "
                        f"where the seed's 55° early layers had 90 epochs of ImageNet)."
                        if moved < SS_MOVED else "."))
        lines.append(line)
    else:
        lines.append("- 3. **SS's angles**: cannot be told (runs missing).")

    # 4. KP and WM align almost perfectly.
    parts, held = [], []
    for data in ("fashion-mnist", "mnist"):
        for rule in ("kp", "wm"):
            runs = found.get(data, {}).get(rule)
            if not runs:
                continue
            m, s = mean_std([r.final("mean_weight_angle") for r in runs])
            worst = max(rule_layers(runs).values(), default=math.nan)
            held.append(m < ALIGNED)
            parts.append(f"{rule.upper()} on {TITLES[data]}: mean {m:.1f}° ± {s:.1f}, worst "
                         f"layer {worst:.1f}°")
    verdict = ("cannot be told (runs missing)" if not held else
               "holds" if all(held) else "does not hold" if not any(held) else "partly holds")
    lines.append(f"- 4. **KP and WM align their feedback almost perfectly** (target: final mean "
                 f"angle under {ALIGNED:.0f}°): **{verdict}**. " + "; ".join(parts) + ".")
    return lines


def _short(command: str) -> str:
    """A recorded command with the repository's absolute path left out."""
    return command.replace(f"{ROOT}/", "")


def write_results(out: Path, path: Path) -> Path:
    found = load(out)
    if not found:
        raise SystemExit(f"no run folders under {out}: run experiments/reproduce.py first")
    record = json.loads((out / "experiment.json").read_text()) \
        if (out / "experiment.json").is_file() else {"sessions": []}
    figures = path.parent / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    sessions = record.get("sessions", [])
    wall = sum(s.get("wall_seconds", 0.0) for s in sessions)

    lines = ["# Results: the seed's claims at CPU scale",
             "",
             "Written by `experiments/results.py` from the run folders of "
             "`experiments/reproduce.py`; do not edit by hand.",
             ""]
    if sessions:
        m = sessions[-1]["machine"]
        jobs = sessions[-1]["jobs"]
        trained = sum(r.seconds for groups in found.values() for rs in groups.values()
                      for r in rs if math.isfinite(r.seconds))
        lines += [f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, torch "
                  f"{m['torch']}. {jobs} runs at a time, {sessions[-1]['threads']} thread "
                  f"each. Wall time: {wall / 60:.0f} minutes in {len(sessions)} session(s) of "
                  f"the script (started {sessions[0]['started']}). Training time summed over "
                  f"the main comparison's runs: {trained / 60:.0f} minutes, "
                  f"{trained / 60 / jobs:.0f} per process (evaluation and start-up excluded).",
                  ""]
    lines += ["## Verdicts", "", *verdicts(found), ""]
    for data, groups in found.items():
        runs = [r for rs in groups.values() for r in rs]
        cfg = runs[0].config
        options = cfg.get("model_options") or {}
        epochs = cfg.get("epochs")
        lines += [f"## {TITLES[data]}", "",
                  f"{cfg.get('model')}{f' {options}' if options else ''}, {epochs} "
                  f"epoch{'s' if epochs != 1 else ''}, batch "
                  f"{cfg.get('batch_size')}, {cfg.get('optimizer')} lr {cfg.get('lr')} "
                  f"({cfg.get('schedule')}), momentum {cfg.get('momentum')}, weight decay "
                  f"{cfg.get('weight_decay')}, last layer on {cfg.get('last_rule')}, rule "
                  f"options {cfg.get('rule_options') or 'none'}; seeds "
                  f"{sorted({r.seed for r in runs})}. Test error is 100 − the final epoch's "
                  f"top-1 on the test split.", "", *table(data, groups), ""]
        for name, draw in (("angles-per-layer", angles_per_layer_figure),
                           ("angle-over-training", angle_over_training_figure),
                           ("accuracy", accuracy_figure)):
            file = figures / f"{data}-{name}.png"
            draw(groups, file)
            lines.append(f"![{TITLES[data]}: {name.replace('-', ' ')}](figures/{file.name})")
        lines.append("")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from studies import sections

    lines += sections(out, found, PUBLISHED, figures)
    lines += ["## Commands", "",
              "Run from the repository root (paths shortened to it; the commands ran with "
              "OMP_NUM_THREADS=1).", "", "```"]
    for session in sessions:
        lines.append(_short(session["script"]))
        lines += [_short(run["command"]) for run in session.get("runs", [])]
    lines += [*map(_short, record.get("report_commands", {}).values()), "```", ""]
    path.write_text("\n".join(lines))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="reproduce.py's --out (default there: runs/experiments)")
    parser.add_argument("--results", default=str(Path(__file__).parent / "RESULTS.md"))
    args = parser.parse_args(argv)
    print(f"wrote {write_results(Path(args.out), Path(args.results))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
