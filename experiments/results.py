"""Write RESULTS.md and its figures from the run folders that experiments/reproduce.py made.

    python experiments/results.py runs/experiments      # -> experiments/RESULTS.md
    python experiments/results.py experiments/runs      # the same, from the committed records

Every number and verdict in RESULTS.md is computed here from OUT/DATA/RULE-seedN (config.yaml,
metrics.jsonl, angles.jsonl) and OUT/experiment.json (commands, machine, wall time, and from
its jobs which session trained which runs, so that times are compared within one session and
runs no recorded session trained are named): nothing is typed in by hand except the published
numbers below and the thresholds of the verdicts, which the page states.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import sys
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import NamedTuple

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
NOISE_FLOOR = 0.3  # points of error: a difference smaller than this, or than the std's added,
#                    is "no difference"
# Kunin et al. 2020's alignment family, in the order of their fixed points (../shared/
# REFERENCE.md): sa's B -> W, aa's B -> W on the span of the layer's inputs, ia's B ->
# (amp/2) (null W Sigma W^T + decay I)^-1 W Sigma, not W.
FAMILY = ("sa", "aa", "ia")
LEARNED = ("kp", "wm", *FAMILY)  # the rules whose B is learned: the per-layer angle table


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


def done(runs: list) -> list:
    return [r for r in runs if r.status == "finished"]


def differs(a: list[float], b: list[float]) -> tuple[float, float, bool]:
    """(mean a − mean b, the std's added, whether the difference clears the noise)."""
    (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
    d, noise = ma - mb, sa + sb
    return d, noise, abs(d) > max(noise, NOISE_FLOOR)


def gap(groups: dict[str, list], rule: str) -> tuple[float, float]:
    """(mean error of `rule` - mean error of bp, the two std's added): points."""
    m, s = mean_std([error(r) for r in groups.get(rule, [])])
    b, t = mean_std([error(r) for r in groups.get("bp", [])])
    return m - b, s + t


# --- which session trained what -------------------------------------------------------------

# A job recorded before jobs recorded whether they trained (the 'trained' flag reproduce.py
# writes now) counts as training when it ran this long or longer. A job that finds its runs
# finished only starts Python and redraws its report: 2 to 13 s in experiments/runs; the
# shortest job that trained ran 34 s (the ViT's dfa, three seeds diverging in epoch 1).
TRAINED_SECONDS = 30.0


class Job(NamedTuple):
    """One recorded job of experiment.json: which session (1-based, the record's order), the
    folder and rules it trained (rules None: every rule of the folder), how long, whether it
    trained anything."""

    session: int
    folder: str
    rules: tuple[str, ...] | None
    seconds: float
    trained: bool

    def covers(self, folder: str, rule: str) -> bool:
        return self.folder == folder and (self.rules is None or rule in self.rules)


def recorded_jobs(sessions: list[dict]) -> list[Job]:
    jobs = []
    for number, session in enumerate(sessions, 1):
        for job in session.get("runs", []):
            args = shlex.split(job["command"])
            if "--out" not in args:
                continue
            rules = tuple(args[args.index("--rules") + 1].split(",")) \
                if "--rules" in args else None
            seconds = float(job.get("seconds", 0.0))
            trained = job.get("trained", seconds >= TRAINED_SECONDS)
            jobs.append(Job(number, Path(args[args.index("--out") + 1]).name, rules, seconds,
                            bool(trained)))
    return jobs


def all_runs(out: Path) -> dict[str, dict[str, list]]:
    """{folder: {rule: [Run]}} of every folder of `out` that holds run folders."""
    found = {}
    for folder in sorted(p for p in out.iterdir() if p.is_dir()) if out.is_dir() else []:
        runs = [load_run(p) for p in sorted(folder.iterdir()) if (p / "config.yaml").is_file()]
        groups = {rule: [r for r in runs if r.rule == rule] for rule in list_rules()}
        if runs:
            found[folder.name] = {rule: rs for rule, rs in groups.items() if rs}
    return found


class Provenance:
    """Which recorded session trained each folder's runs, from experiment.json's jobs.

    A (folder, rule) is trained by the sessions whose jobs for it trained. Where the trained
    jobs' seconds add up to less than the runs' own training time (their metrics'
    elapsed_seconds), part of it happened in a job the record lacks: an interrupted session
    records only its finished jobs.
    """

    def __init__(self, sessions: list[dict], runs: dict[str, dict[str, list]]):
        self.sessions = sessions
        self.jobs = recorded_jobs(sessions)
        self.runs = runs

    def trained_by(self, folder: str, rule: str) -> list[int]:
        """The sessions that trained the runs there now: from the last that started them
        afresh (--fresh, whose records replaced the folder's), if one did."""
        by = sorted({j.session for j in self.jobs if j.trained and j.covers(folder, rule)})
        fresh = [n for n in by if self.sessions[n - 1].get("fresh")]
        return [n for n in by if n >= fresh[-1]] if fresh else by

    def session_trained(self, number: int) -> bool:
        """Whether the session trained any of the runs there now."""
        for j in self.jobs:
            if j.session == number and j.trained:
                rules = j.rules or tuple(self.runs.get(j.folder, {}))
                if not rules or any(number in self.trained_by(j.folder, r) for r in rules):
                    return True
        return False

    def scopes(self) -> list[tuple[str, tuple[str, ...]]]:
        """(folder, rules) of each job's runs, jobs of the same runs taken together, in the
        order of the folders."""
        seen: dict[tuple[str, tuple[str, ...]], None] = {}
        for folder, groups in self.runs.items():
            for rule in groups:
                rules = next((j.rules for j in self.jobs if j.covers(folder, rule)), None)
                seen[(folder, rules or tuple(groups))] = None
        return list(seen)

    def partly_outside(self, folder: str, rules: tuple[str, ...]) -> tuple[float, float] | None:
        """(seconds of the trained jobs, seconds of training in the runs) where the jobs are
        too short to hold the training, else None."""
        jobs = [j for j in self.jobs if j.trained and any(j.covers(folder, r) for r in rules)]
        runs = [r for rule in rules for r in self.runs.get(folder, {}).get(rule, [])
                if math.isfinite(r.seconds)]
        job_time, run_time = sum(j.seconds for j in jobs), sum(r.seconds for r in runs)
        return (job_time, run_time) if jobs and job_time < run_time else None

    def outside_lines(self) -> list[str]:
        """RESULTS.md's sentences on runs that no recorded session trained, or only part of."""
        lines = []
        for folder, rules in self.scopes():
            if any(self.trained_by(folder, r) for r in rules):
                part = self.partly_outside(folder, rules)
                if part:
                    lines.append(
                        f"Part of the training of {folder}'s {', '.join(rules)} runs happened "
                        f"in no recorded job: the jobs that trained them ran "
                        f"{part[0] / 60:.1f} minutes, the runs record {part[1] / 60:.1f} minutes "
                        f"of training (a session stopped part way records only its finished "
                        f"jobs).")
                continue
            n = sum(len(self.runs[folder].get(r, [])) for r in rules)
            jobs = [j for j in self.jobs if any(j.covers(folder, r) for r in rules)]
            seen = ("no recorded job names them" if not jobs else
                    "the recorded jobs for them trained nothing, finding them finished ("
                    + ", ".join(f"session {j.session}: {j.seconds:.0f} s" for j in jobs) + ")")
            lines.append(f"The {n} runs of {folder} ({', '.join(rules)}) were trained outside "
                         f"the recorded sessions: {seen}.")
        return lines

    def source(self, folder: str, rule: str) -> str:
        by = self.trained_by(folder, rule)
        if not by:
            return "outside the recorded sessions"
        return ("session" + ("s " if len(by) > 1 else " ") + " and ".join(map(str, by))
                + (" (partly in no recorded job)" if self.partly_outside(folder, (rule,))
                   else ""))

    def sources_line(self, folder: str, rules: list[str]) -> str:
        """Which session trained a table's rows; where that is more than one, a warning that
        their times are not comparable."""
        where: dict[str, list[str]] = {}
        for rule in rules:
            where.setdefault(self.source(folder, rule), []).append(rule)
        if len(where) == 1:
            source = next(iter(where))
            return f"Trained {'' if source.startswith('outside') else 'in '}{source}."
        parts = [f"{src}: {', '.join(rs)}" for src, rs in where.items()]
        if not parts[0].startswith("outside"):
            parts[0] = f"in {parts[0]}"
        return ("Trained " + "; ".join(parts) + ". Minutes per run from different sessions are "
                "not comparable: the machine's load differed between them.")

    def epoch_seconds(self, folder: str, rule: str) -> tuple[float, int] | None:
        """(median epoch_seconds, the one session) of a folder's runs of `rule`, where one
        session alone trained them all, else None."""
        by = self.trained_by(folder, rule)
        runs = self.runs.get(folder, {}).get(rule, [])
        if len(by) != 1 or self.partly_outside(folder, (rule,)) or not runs:
            return None
        values = [v for r in runs for v in r.series("epoch_seconds")[1] if math.isfinite(v)]
        return (statistics.median(values), by[0]) if values else None


# the options that set what an epoch costs: runs that agree on them ran the same work
RECIPE_KEYS = ("data", "model", "model_options", "batch_size", "image_size", "amp",
               "channels_last", "angle_every", "angle_batch", "steps_per_epoch", "unshare",
               "dale", "rule")


def recipe(run) -> tuple:
    return tuple(str(run.config.get(k) or None) for k in RECIPE_KEYS)


def same_recipe_epochs(prov: Provenance, reference) -> dict[int, tuple[float, str]]:
    """{session: (median epoch seconds, folder)} of the runs of `reference`'s recipe and rule,
    each session's first folder: how fast the same work went in each session."""
    found: dict[int, tuple[float, str]] = {}
    for folder, groups in prov.runs.items():
        runs = groups.get(reference.rule, [])
        if runs and all(recipe(r) == recipe(reference) for r in runs):
            measured = prov.epoch_seconds(folder, reference.rule)
            if measured and measured[1] not in found:
                found[measured[1]] = (measured[0], folder)
    return dict(sorted(found.items()))


def wall_time(prov: Provenance) -> str:
    """The wall-time sentences: the sessions that trained, measured or (interrupted before
    sessions recorded their time as they went) estimated; those that trained nothing, named
    and not counted."""
    sessions = prov.sessions
    trained = [n for n in range(1, len(sessions) + 1) if prov.session_trained(n)]
    measured, estimated, notes = 0.0, 0.0, []
    for n in trained:
        s = sessions[n - 1]
        if "wall_seconds" in s:
            measured += s["wall_seconds"]
            if "finished" not in s:
                notes.append(f"session {n} (started {s['started']}) was stopped part way: its "
                             f"{s['wall_seconds'] / 60:.0f} minutes run to its last finished job")
            continue
        job_time = sum(j.seconds for j in prov.jobs if j.session == n)
        estimate = job_time / max(1, s.get("jobs", 1))
        estimated += estimate
        nxt = (f"; the next session started {minutes_between(s, sessions[n]):.0f} minutes "
               f"after it" if n < len(sessions) and minutes_between(s, sessions[n]) else "")
        # at most `jobs` ran at once, so their time over `jobs` is a lower bound; the job
        # the session was stopped in is not recorded at all
        notes.append(f"session {n} (started {s['started']}) was interrupted and recorded no "
                     f"wall time: about {estimate / 60:.0f} minutes, an estimate and a lower "
                     f"bound, are counted for it, its {len(s.get('runs', []))} finished jobs' "
                     f"{job_time / 60:.0f} minutes at {s.get('jobs', 1)} at a time{nxt}")
    counted = [n for n in trained if "wall_seconds" in sessions[n - 1]]
    together, union = side_by_side(sessions, counted)
    total = union + estimated
    text = (f"Wall time: {total / 60:.0f} minutes in {len(trained)} session"
            f"{'s' if len(trained) != 1 else ''} of the script that trained runs"
            + (f" (the first started {sessions[trained[0] - 1]['started']})" if trained else "")
            + ": " + ", ".join(f"{minutes(sessions[n - 1]['wall_seconds'])} measured in "
                               f"session {n}" for n in counted))
    text += ("; " if counted and notes else "") + "; ".join(notes) + "."
    if together:
        text += (f" Sessions {', '.join(map(str, together))} ran side by side on the same "
                 f"cores: their {(measured - union) / 60:.0f} minutes of overlap are counted "
                 f"once.")
    idle = [n for n in range(1, len(sessions) + 1) if n not in trained]
    for n in idle:
        s = sessions[n - 1]
        jobs = [j for j in prov.jobs if j.session == n]
        if not jobs and "finished" not in s:
            text += (f" Session {n} (started {s['started']}) is not counted: it was stopped "
                     f"before any job finished, and a later session continued its runs.")
            continue
        if any(j.trained for j in jobs):
            text += (f" Session {n} (started {s['started']}) is not counted: a later session "
                     f"trained its runs again from scratch (--fresh).")
            continue
        text += (f" Session {n} (started {s['started']}) is not counted: its {len(jobs)} jobs "
                 f"trained nothing, finding their runs finished ("
                 f"{sum(j.seconds for j in jobs) / 60:.1f} minutes in all).")
    if any("trained" not in job for s in sessions for job in s.get("runs", [])):
        text += (f" (The record's older jobs do not say whether they trained: those that ran "
                 f"{TRAINED_SECONDS:.0f} s or more count as training, since one that only finds "
                 f"its runs finished takes a few seconds.)")
    return text


def started(session: dict) -> datetime | None:
    try:
        return datetime.strptime(" ".join(session["started"].split()[:2]), "%Y-%m-%d %H:%M:%S")
    except (KeyError, ValueError):
        return None


def side_by_side(sessions: list[dict], counted: list[int]) -> tuple[list[int], float]:
    """(the sessions among `counted` whose wall time overlapped another's, the seconds of the
    union of their wall times): sessions started while another ran share the cores, and the
    wall time counts each moment once. A session without a readable start counts whole."""
    spans, alone = [], 0.0
    for n in counted:
        start = started(sessions[n - 1])
        if start is None:
            alone += sessions[n - 1]["wall_seconds"]
            continue
        begin = start.timestamp()
        spans.append((begin, begin + sessions[n - 1]["wall_seconds"], n))
    spans.sort()
    union, together, end, last = 0.0, set(), -math.inf, None
    for begin, finish, n in spans:
        if begin < end:  # starts while `last` (or an earlier one) still runs
            together.update({n, last})
        union += max(0.0, finish - max(begin, end))
        if finish > end:
            end, last = finish, n
    return sorted(together), union + alone


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} minute{'' if round(seconds / 60) == 1 else 's'}"


def minutes_between(a: dict, b: dict) -> float:
    """Minutes from session a's start to session b's; 0 where either time is unreadable."""
    t = [started(s) for s in (a, b)]
    if None in t:
        return 0.0
    return max(0.0, (t[1] - t[0]).total_seconds() / 60)


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
    """The final mean angle between W and B; dfa's B maps the output error (drtp's the
    targets), it has none; dfa_blocks' B = W inside blocks, its random B at their outputs."""
    if rule == "bp":
        return "0"
    if get_rule(rule).direct:
        return "— (B is not W's shape)"
    if get_rule(rule).reads_output:
        return "— (B = W inside blocks)"
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


# --- Kunin et al.'s alignment family ---------------------------------------------------------

FAMILY_CRITERION = (
    f"as read from the rules' fixed points, not from Kunin et al.'s numbers, which "
    f"../shared/REFERENCE.md could not read: each of sa, aa and ia below FA's error by more "
    f"than the std's added and {NOISE_FLOOR} points; final mean angles in their fixed points' "
    f"order, sa (B → W) < aa (B → W on the span of the layer's inputs, off it B keeps its "
    f"start) < ia (B → (amp/2)(null·WΣWᵀ + decay·I)⁻¹WΣ, not W); sa's under {ALIGNED:.0f}°, "
    f"as claim 4 asks of KP and WM")


def final_angle(runs: list) -> tuple[float, float]:
    """(mean, std) over the runs of the final mean angle between W and B."""
    return mean_std([r.final("mean_weight_angle") for r in runs])


def family_ordering(groups: dict[str, list]) -> tuple[bool, str] | None:
    """(whether one data set's runs keep the family's ordering, FAMILY_CRITERION; the numbers
    read: each rule's error gap to bp and final mean angle, and what broke the ordering).
    None while bp, fa or a rule of the family has neither a finished nor a diverged run."""
    finished = {r: done(groups.get(r, [])) for r in ("bp", "fa", *FAMILY)}
    broke = {r: sum(x.status == "diverged" for x in groups.get(r, [])) for r in FAMILY}
    if not finished["bp"] or not finished["fa"] or \
            any(not finished[r] and not broke[r] for r in FAMILY):
        return None
    parts, why = [], []
    for rule in FAMILY:
        if broke[rule]:
            parts.append(f"{rule} diverged in {broke[rule]} of {len(groups[rule])} seeds")
            why.append(f"{rule} diverged")
            continue
        g, noise = gap(finished, rule)
        m, s = final_angle(finished[rule])
        parts.append(f"{rule} − BP {g:+.2f} points (±{noise:.2f}), final mean angle "
                     f"{m:.1f}° ± {s:.1f}")
        d, _, clear = differs([error(r) for r in finished["fa"]],
                              [error(r) for r in finished[rule]])
        if not (clear and d > 0):
            why.append(f"{rule} not below FA beyond the noise (FA − {rule} {d:+.2f})")
    angles = [final_angle(finished[r])[0] for r in FAMILY if not broke[r]]
    if len(angles) == len(FAMILY) and not all(a < b for a, b in pairwise(angles)):
        why.append("the angles not in the order sa < aa < ia")
    if not broke["sa"] and not angles[0] < ALIGNED:
        why.append(f"sa's angle not under {ALIGNED:.0f}°")
    close = [r for r in FAMILY if not broke[r] and gap(finished, r)[0] <= SS_TARGET]
    g_fa, _ = gap(finished, "fa")
    text = ("; ".join(parts) + f"; FA − BP {g_fa:+.2f}. Within claim 1's {SS_TARGET} points of "
            f"BP: {', '.join(close) or 'none of them'}"
            + (f". Not kept: {'; '.join(why)}" if why else ""))
    return not why, text


def family_settings(found: dict[str, dict[str, list]]) -> str:
    """The rule options each of sa, aa, ia ran with on the main comparison, from a run's
    config ("Kunin et al.'s own coefficients" where it set none)."""
    for groups in found.values():
        runs = [r for rule in FAMILY for r in groups.get(rule, [])[:1]]
        if runs:
            options = runs[0].config.get("rule_options") or {}
            return ", ".join(f"{rule} {options[rule]}" if options.get(rule) else
                             f"{rule} at Kunin et al.'s own coefficients" for rule in FAMILY)
    return ""


def layer_table(groups: dict[str, list]) -> list[str]:
    """angle(W, B) per layer at the end of training, mean over the finished seeds, of each
    rule whose B is learned (LEARNED) that has finished runs; the last row, each rule's final
    mean angle. The classifier is left out where it was on another rule."""
    columns = {r: rule_layers(done(groups[r])) for r in LEARNED if done(groups.get(r, []))}
    columns = {r: layers for r, layers in columns.items() if layers}
    if not columns:
        return []
    names = list(dict.fromkeys(n for layers in columns.values() for n in layers))
    lines = ["| layer | " + " | ".join(columns) + " |",
             "| --- |" + " ---: |" * len(columns)]
    lines += [f"| {name} | " + " | ".join(f"{layers[name]:.1f}" if name in layers else "—"
                                          for layers in columns.values()) + " |"
              for name in names]
    lines.append("| final mean angle | " + " | ".join(
        pm([r.final("mean_weight_angle") for r in done(groups[rule])], 1)
        for rule in columns) + " |")
    return lines


def family_section(found: dict[str, dict[str, list]]) -> list[str]:
    """RESULTS.md's section on sa, aa and ia in the main comparison: the ordering's verdict
    over both data sets, each rule's gap to bp and final angle, the per-layer angles."""
    lines = ["## The alignment family (Kunin et al. 2020): sa, aa, ia", ""]
    settings = family_settings(found)
    if not settings:
        return [*lines, "Not run yet: `python experiments/reproduce.py` trains sa, aa and ia "
                "in the main comparison.", ""]
    lines += [f"B is a Parameter learned by a local regulariser alone, with one setting per "
              f"rule for both models (recipe.yaml says why sa's and ia's are scaled): "
              f"{settings}. KP and WM, whose B is learned too, for reference.", ""]
    parts, held, waiting = [], [], []
    for data in ("fashion-mnist", "mnist"):
        read = family_ordering(found.get(data, {}))
        if read is None:
            waiting.append(TITLES[data])
            parts.append(f"- {TITLES[data]}: not finished yet (bp, fa, sa, aa and ia needed).")
            continue
        held.append(read[0])
        parts.append(f"- {TITLES[data]}: **{'kept' if read[0] else 'not kept'}**. {read[1]}.")
    verdict = ("cannot be told (runs missing)" if not held else
               "holds" if all(held) else "does not hold" if not any(held) else
               "holds on one data set only")
    if held and waiting:
        verdict += f" so far ({', '.join(waiting)} not finished yet)"
    lines += [f"- **Does the alignment family keep the paper-style ordering?** "
              f"({FAMILY_CRITERION}): **{verdict}**.", *parts, ""]
    for data in ("fashion-mnist", "mnist"):
        table = layer_table(found.get(data, {}))
        if table:
            lines += [f"angle(W, B) per layer on {TITLES[data]}, degrees, at the end of "
                      f"training (mean over the finished seeds):", "", *table, ""]
    return lines


def _short(command: str) -> str:
    """A recorded command with the repository's absolute path left out."""
    return command.replace(f"{ROOT}/", "")


def write_results(out: Path, path: Path) -> Path:
    found = load(out)
    if not any(found.values()):
        raise SystemExit(f"no run folders under {out}: run experiments/reproduce.py first")
    record = json.loads((out / "experiment.json").read_text()) \
        if (out / "experiment.json").is_file() else {"sessions": []}
    figures = path.parent / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    sessions = record.get("sessions", [])
    prov = Provenance(sessions, all_runs(out))

    lines = ["# Results: the seed's claims at CPU scale",
             "",
             "Written by `experiments/results.py` from the run folders of "
             "`experiments/reproduce.py`; do not edit by hand.",
             ""]
    trained = [s for n, s in enumerate(sessions, 1) if prov.session_trained(n)] or sessions
    if trained:
        m = trained[-1]["machine"]
        jobs = max(s.get("jobs", 1) for s in trained)  # the most at once in one session
        total = sum(r.seconds for groups in found.values() for rs in groups.values()
                    for r in rs if math.isfinite(r.seconds))
        lines += [f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, torch "
                  f"{m['torch']}. Up to {jobs} runs at a time in a session, "
                  f"{trained[-1]['threads']} thread each. {wall_time(prov)} Training time "
                  f"summed over the main comparison's runs: {total / 60:.0f} minutes, "
                  f"{total / 60 / jobs:.0f} per process "
                  f"(evaluation and start-up excluded).", ""]
        load_line = session_load(prov, found)
        outside = prov.outside_lines()
        if load_line or outside:
            lines += [" ".join([*outside, load_line]).strip(), ""]
    lines += ["## Verdicts", "", *verdicts(found), ""]
    for data, groups in found.items():
        runs = [r for rs in groups.values() for r in rs]
        if not runs:  # the folder is there, its jobs trained nothing (a data set missing?)
            lines += [f"## {TITLES[data]}", "", f"No runs in {data}/ yet: "
                      f"`python experiments/reproduce.py` trains them (its log says why a job "
                      f"failed).", ""]
            continue
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
                  f"top-1 on the test split.", "", *table(data, groups), "",
                  prov.sources_line(data, list(groups)), ""]
        for name, draw in (("angles-per-layer", angles_per_layer_figure),
                           ("angle-over-training", angle_over_training_figure),
                           ("accuracy", accuracy_figure)):
            file = figures / f"{data}-{name}.png"
            draw(groups, file)
            lines.append(f"![{TITLES[data]}: {name.replace('-', ' ')}](figures/{file.name})")
        lines.append("")
    lines += family_section(found)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from studies import sections

    lines += sections(out, found, PUBLISHED, figures, prov)
    lines += ["## Commands", "",
              "Run from the repository root (paths shortened to it; the commands ran with "
              "OMP_NUM_THREADS=1).", "", "```"]
    for number, session in enumerate(sessions, 1):
        what = ("" if prov.session_trained(number) else ": trained nothing") + \
            ("" if "finished" in session else ": interrupted (its finished jobs below)")
        lines.append(f"# session {number}, started {session['started']}{what}")
        lines.append(_short(session["script"]))
        lines += [_short(run["command"]) for run in session.get("runs", [])]
    lines += ["# the reports", *map(_short, record.get("report_commands", {}).values()), "```",
              ""]
    path.write_text("\n".join(lines))
    return path


def session_load(prov: Provenance, found: dict[str, dict[str, list]]) -> str:
    """How fast the same work went in each session that trained some: bp's epoch on the main
    comparison's first data set, wherever runs of that recipe were trained in one session."""
    for groups in found.values():
        if groups.get("bp"):
            epochs = same_recipe_epochs(prov, groups["bp"][0])
            break
    else:
        return ""
    if len(epochs) < 2:
        return ""
    return ("Times are comparable within a session only: the machine's load differed between "
            "them. The same recipe's bp epoch took a median "
            + ", ".join(f"{sec:.1f} s in session {n} ({folder})"
                        for n, (sec, folder) in epochs.items()) + ".")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="reproduce.py's --out (default there: runs/experiments)")
    parser.add_argument("--results", default=str(Path(__file__).parent / "RESULTS.md"))
    args = parser.parse_args(argv)
    print(f"wrote {write_results(Path(args.out), Path(args.results))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
