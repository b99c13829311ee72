"""The studies' sections of RESULTS.md: the seed's claims pushed further, the open problems
measured (experiments/reproduce.py's STUDIES). Every number is computed from the run folders
OUT/STUDY/RULE-seedN and the main comparison's OUT/DATA/RULE-seedN; the thresholds of the
verdicts are stated beside them.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from results import (
    TITLES,
    angle_cell,
    error,
    gap,
    layer_means,
    mean_std,
    pm,
    rule_layers,
    same_recipe_epochs,
)

from biograd.results import load_run
from biograd.results.figures import accuracy_figure, angle_over_training_figure
from biograd.rules import list_rules

NOISE_FLOOR = 0.3  # points of error: a difference smaller than this, or than the std's added,
#                    is "no difference"
EARLY_LATE = 2.0  # degrees: claim 3b's threshold, as in the main verdicts
ORDER = ("long", "dfa", "unshared", "dale", "vit")


def load_study(out: Path, study: str) -> dict[str, list]:
    """{rule: [Run, one per seed]} of OUT/STUDY, rules in the registry's order."""
    folder = out / study
    if not folder.is_dir():
        return {}
    runs = [load_run(p) for p in sorted(folder.iterdir()) if (p / "config.yaml").is_file()]
    groups = {rule: sorted((r for r in runs if r.rule == rule), key=lambda r: r.seed or 0)
              for rule in list_rules()}
    return {rule: rs for rule, rs in groups.items() if rs}


def done(runs: list) -> list:
    return [r for r in runs if r.status == "finished"]


def differs(a: list[float], b: list[float]) -> tuple[float, float, bool]:
    """(mean a − mean b, the std's added, whether the difference clears the noise)."""
    (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
    d, noise = ma - mb, sa + sb
    return d, noise, abs(d) > max(noise, NOISE_FLOOR)


def table(groups: dict[str, list], reference: dict[str, list], label: str) -> list[str]:
    """Each rule's error here beside the main comparison's (`label`) on the same data."""
    lines = [f"| rule | test error % | seeds finished | {label} | difference (points) | "
             f"final mean angle ° | minutes per run |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for rule, runs in groups.items():
        finished = done(runs)
        ref = done(reference.get(rule, []))
        d, noise, _ = differs([error(r) for r in finished], [error(r) for r in ref])
        minutes = [r.seconds / 60 for r in finished if math.isfinite(r.seconds)]
        lines.append(
            f"| {rule} | {pm([error(r) for r in finished])} | {len(finished)} of "
            f"{len(runs)} | {pm([error(r) for r in ref]) if ref else '—'} | "
            f"{f'{d:+.2f} (±{noise:.2f})' if ref and finished else '—'} | "
            f"{angle_cell(rule, finished)} | "
            f"{f'{statistics.fmean(minutes):.1f}' if minutes else '—'} |")
    return lines


def missing(groups: dict[str, list], rules: tuple[str, ...], seeds: int = 3) -> str:
    """What is still to run, or ""."""
    ended = {rule: len(done(groups.get(rule, []))) + len(diverged(groups.get(rule, [])))
             for rule in rules}
    short = [f"{rule} ({ended[rule]} of {seeds} seeds)" for rule in rules if ended[rule] < seeds]
    return ("Not finished yet (`python experiments/reproduce.py` continues them): "
            + ", ".join(short) + ".") if short else ""


def kurtosis_moves(runs: list) -> dict[str, tuple[float, float]]:
    """{layer: (W's excess kurtosis at the start, at the end)}, mean over seeds, from
    angles.jsonl's weight_kurtosis."""
    first, last = {}, {}
    for run in runs:
        steps = [s for s in run.steps if s.get("weight_kurtosis")]
        if steps:
            for name, value in steps[0]["weight_kurtosis"].items():
                first.setdefault(name, []).append(value)
            for name, value in steps[-1]["weight_kurtosis"].items():
                last.setdefault(name, []).append(value)
    return {n: (statistics.fmean(first[n]), statistics.fmean(last[n])) for n in first
            if n in last}


def long_section(groups, main) -> list[str]:
    rules = ("ss", "bp")
    lines = []
    if not all(done(groups.get(r, [])) for r in rules):
        return [missing(groups, rules)]
    g_long, n_long = gap(done_groups(groups), "ss")
    g_short, n_short = gap(done_groups(main), "ss")
    change = g_long - g_short
    noise = n_long + n_short
    verdict = ("narrows" if change < -max(noise, NOISE_FLOOR) else
               "widens" if change > max(noise, NOISE_FLOOR) else "does not change beyond noise")
    epochs = done(groups["ss"])[0].config.get("epochs")
    lines.append(
        f"- **Does SS's gap to BP narrow with training?** (a change beyond the std's added and "
        f"{NOISE_FLOOR} points): **it {verdict}**. SS − BP = {g_short:+.2f} points after 3 "
        f"epochs (±{n_short:.2f}), {g_long:+.2f} after {epochs} (±{n_long:.2f}).")
    layers = rule_layers(done(groups["ss"]))
    if layers:
        values = list(layers.values())
        third = max(1, len(values) // 3)
        early, late = statistics.fmean(values[:third]), statistics.fmean(values[-third:])
        moves = kurtosis_moves(done(groups["ss"]))
        start = {n: a for n, (a, _) in moves.items() if n in layers}
        end = {n: b for n, (_, b) in moves.items() if n in layers}
        verdict = "yes" if early > late + EARLY_LATE else "no"
        line = (f"- **Do early layers' SS angles rise above late ones'?** (threshold: "
                f"{EARLY_LATE:.0f}°): **{verdict}**. After {epochs} epochs the first third of "
                f"the layers averages {early:.1f}°, the last third {late:.1f}° (per layer: "
                + ", ".join(f"{n} {v:.1f}°" for n, v in layers.items()) + ").")
        if start:
            line += (" W's excess kurtosis (0 for Gaussian weights; SS's angle grows with it) "
                     "went from " + ", ".join(f"{n} {start[n]:+.2f} to {end[n]:+.2f}"
                                              for n in start) + ".")
        lines.append(line)
    return lines


def done_groups(groups: dict[str, list]) -> dict[str, list]:
    return {rule: done(runs) for rule, runs in groups.items() if done(runs)}


def dfa_section(main: dict[str, dict[str, list]], published: dict) -> list[str]:
    lines, agree = [], []
    for data in ("fashion-mnist", "mnist"):
        groups = done_groups(main.get(data, {}))
        if "dfa" not in groups or "fa" not in groups:
            lines.append(f"- {TITLES[data]}: dfa or fa not finished yet.")
            continue
        d, noise, clear = differs([error(r) for r in groups["dfa"]],
                                  [error(r) for r in groups["fa"]])
        ref = published.get(data, {})
        theirs = ref.get("dfa", math.nan) - ref.get("fa", math.nan)
        agree.append(clear and (d < 0) == (theirs < 0))
        g, _ = gap(groups, "dfa")
        grads = layer_means(groups["dfa"], "gradient_angles")
        lines.append(
            f"- {TITLES[data]}: DFA {pm([error(r) for r in groups['dfa']])}% against FA "
            f"{pm([error(r) for r in groups['fa']])}% (DFA − FA {d:+.2f} points, ±{noise:.2f}; "
            f"DFA − BP {g:+.2f}); biotorch: DFA {ref.get('dfa', math.nan):.2f}, FA "
            f"{ref.get('fa', math.nan):.2f} (DFA − FA {theirs:+.2f})."
            + (" The angle of DFA's weight updates to backprop's, layer by layer: "
               + ", ".join(f"{n} {v:.1f}°" for n, v in grads.items())
               + " (the last hidden layer learns from the classifier's Wᵀe, on bp)."
               if grads else ""))
    verdict = ("cannot be told yet" if len(agree) < 2 else
               "yes, on both" if all(agree) else "no" if not any(agree) else "on one only")
    return [f"- **Does DFA rank against FA as in biotorch's table?** (a difference beyond the "
            f"std's added and {NOISE_FLOOR} points, of biotorch's sign): **{verdict}**.",
            *lines]


def versus(groups: dict[str, list], a: str, b: str) -> tuple[float, float, bool] | None:
    ga, gb = done(groups.get(a, [])), done(groups.get(b, []))
    if not ga or not gb:
        return None
    return differs([error(r) for r in ga], [error(r) for r in gb])


def unshared_section(groups, shared) -> list[str]:
    rules = ("kp", "fa", "ss", "bp")
    lines = []
    here, there = versus(groups, "fa", "ss"), versus(shared, "fa", "ss")
    if here is None or there is None:
        return [missing(groups, rules)]
    d, noise, clear = here
    verdict = "survives" if clear and d > 0 else "does not survive"
    lines.append(
        f"- **Does SS's advantage over FA survive without weight sharing?** (FA − SS beyond "
        f"the std's added and {NOISE_FLOOR} points): **it {verdict}**. FA − SS = {d:+.2f} "
        f"points unshared (±{noise:.2f}), {there[0]:+.2f} with weight sharing.")
    costs = cost_per_rule(groups, shared, rules)
    if costs:
        lines.append("- What unsharing costs each rule (unshared − shared error, points): "
                     + costs + ".")
    return lines


def cost_per_rule(groups: dict[str, list], reference: dict[str, list],
                  rules: tuple[str, ...]) -> str:
    """"rule +d.dd (±noise), ..." of each rule's error here minus in `reference`, for the
    rules finished in both."""
    costs = []
    for rule in rules:
        pair = versus({"here": groups.get(rule, []), "ref": reference.get(rule, [])},
                      "here", "ref")
        if pair is not None:
            costs.append(f"{rule} {pair[0]:+.2f} (±{pair[1]:.2f})")
    return ", ".join(costs)


def dale_section(groups, plain) -> list[str]:
    rules = ("sign_fixed", "fa", "ss", "bp")
    lines = []
    costs = cost_per_rule(groups, plain, rules)
    if costs:
        lines.append("- **What Dale's law costs each rule** (Dale − unconstrained error, "
                     "points): " + costs + ".")
    here = versus(groups, "fa", "ss")
    if here is None:
        return [*lines, missing(groups, rules)]
    d, noise, clear = here
    verdict = "yes" if clear and d > 0 else "no"
    line = (f"- **Does SS still beat FA under Dale's law?** (FA − SS beyond the std's "
            f"added and {NOISE_FLOOR} points): **{verdict}**. FA − SS = {d:+.2f} points "
            f"(±{noise:.2f}).")
    ss, ss_plain = done(groups.get("ss", [])), done(plain.get("ss", []))
    if ss and ss_plain:
        line += (f" Under Dale's law sign(W) is one sign per column, so SS's B = s·sign(W) "
                 f"has rank one and sends each unit only the sum of its targets' errors "
                 f"(docs/beyond.md); SS's final mean angle to W is "
                 f"{pm([r.final('mean_weight_angle') for r in ss], 1)}° against "
                 f"{pm([r.final('mean_weight_angle') for r in ss_plain], 1)}° without.")
    lines.append(line)
    return lines


def diverged(runs: list) -> list:
    return [r for r in runs if r.status == "diverged"]


def vit_section(groups, lower: list[dict[str, list]]) -> list[str]:
    rules = ("kp", "dfa", "fa", "ss", "bp")
    finished = done_groups(groups)
    if not all(r in finished for r in ("bp", "ss", "fa")):
        return [missing(groups, rules)]
    errors = {rule: mean_std([error(r) for r in runs])[0] for rule, runs in finished.items()}
    ranked = sorted(errors, key=errors.get)
    g_ss, _ = gap(finished, "ss")
    g_fa, n_fa = gap(finished, "fa")
    same = g_fa >= 1.0 and g_fa >= 3 * max(g_ss, 0.0) and g_fa > n_fa
    lines = [f"- **Is the paper's ordering the same for attention?** (claim 2's thresholds: FA "
             f"− BP at least 1 point, 3× SS's gap and more than the std's added): **"
             f"{'yes' if same else 'no'}**. SS − BP = {g_ss:+.2f} points, FA − BP = "
             f"{g_fa:+.2f}; from best to worst: "
             + ", ".join(f"{r} {errors[r]:.2f}%" for r in ranked) + "."]
    for rule, runs in groups.items():
        if diverged(runs):  # each seed's own message: where it diverged differs by seed
            lines.append(f"- {rule} diverged in {len(diverged(runs))} of {len(runs)} seeds at "
                         f"lr {runs[0].config.get('lr')}:")
            lines += [f"  - seed {r.seed}: {r.message or 'no message'}" for r in diverged(runs)]
    for rule, runs in ((r, rs) for low in lower for r, rs in done_groups(low).items()):
        g, noise = gap({**finished, rule: runs}, rule)
        fa_gap = versus({rule: runs, "fa": finished.get("fa", [])}, rule, "fa")
        lines.append(f"- {rule} at lr {runs[0].config.get('lr')}: "
                     f"{pm([error(r) for r in runs])}% over {len(runs)} seeds ({rule} − BP "
                     f"{g:+.2f} points, ±{noise:.2f}"
                     + (f"; {rule} − FA {fa_gap[0]:+.2f}" if fa_gap else "") + ").")
    left = missing(groups, rules)
    return lines + ([left] if left else [])


def epoch_cost(prov, study: dict[str, list], main: dict[str, list], label: str) -> str:
    """"; an epoch took N times the ResNet's (...)" for `study`'s bp against the main
    recipe's bp, measured in one session; where no session trained both, both times and
    their sessions, said not to compare; "" without the runs."""
    if prov is None or not study.get("bp") or not main.get("bp"):
        return ""
    mine = next((prov.epoch_seconds(f, "bp") for f, g in prov.runs.items()
                 if g.get("bp") and g["bp"][0].path == study["bp"][0].path), None)
    theirs = same_recipe_epochs(prov, main["bp"][0])
    if not mine or not theirs:
        return ""
    seconds, session = mine
    if session in theirs:
        ref, folder = theirs[session]
        return (f"; {label} took {seconds / ref:.1f} times the ResNet's (bp's epochs in "
                f"session {session}: a median {seconds:.1f} s against {ref:.1f} s in "
                f"{folder})")
    other, (ref, folder) = next(iter(theirs.items()))
    return (f"; bp's epoch took a median {seconds:.1f} s here in session {session}, the "
            f"ResNet's {ref:.1f} s in session {other} ({folder}): different sessions, under "
            f"different load, so not a measure of the cost")


def sections(out: Path, main: dict[str, dict[str, list]], published: dict,
             figures: Path, prov=None) -> list[str]:
    """The studies' part of RESULTS.md; `prov` (results.Provenance) says which session
    trained what, for the times."""
    fashion = main.get("fashion-mnist", {})
    unshared = epoch_cost(prov, load_study(out, "unshared"), fashion, "an epoch of it")
    vit = epoch_cost(prov, load_study(out, "vit"), fashion, "an epoch of it")
    lines = ["## The studies: further, and the open problems", "",
             "Each on Fashion-MNIST and the main recipe (3 seeds), changed by a flag or two "
             "(reproduce.py's STUDIES, sized to stay within about three hours of the 2 cores "
             "with the main comparison): `long` trains bp and ss for 20 epochs, the most the "
             "question asks, for W's distribution to change shape; `unshared` keeps 3 epochs "
             f"(5.7 M weights){unshared}; `dale` keeps 3, and "
             "balances the weights, as without it BatchNorm networks stop learning "
             "(docs/beyond.md); the ViT (16 patches of 7×7, 4 layers of width 64) gets 5"
             f"{vit}. Differences are called real when they "
             f"exceed both the two std's added and {NOISE_FLOOR} points.", ""]
    intro = {
        "long": ("Longer training (claims 1 and 3b)", fashion, "3 epochs (main)"),
        "unshared": ("No weight sharing (`--unshare`)", fashion, "shared (main)"),
        "dale": ("Dale's law (`--dale 0.8 --dale-balance`)", fashion, "unconstrained (main)"),
        "vit": ("Attention: a small ViT (`--model vit_small`)", {}, "—"),
    }
    for study in ORDER:
        if study == "dfa":
            lines += ["### DFA beside FA", "", *dfa_section(main, published), ""]
            continue
        groups = load_study(out, study)
        title, reference, label = intro[study]
        lines += [f"### {title}", ""]
        if not groups:
            lines += ["Not run yet.", ""]
            continue
        cfg = groups[next(iter(groups))][0].config
        options = cfg.get("model_options") or {}
        flags = [f for f, on in (("--unshare", cfg.get("unshare")),
                                 (f"--dale {cfg.get('dale')}", cfg.get("dale")),
                                 ("--dale-balance", cfg.get("dale_balance"))) if on]
        lines += [f"{TITLES.get(cfg.get('data'), cfg.get('data'))}, {cfg.get('model')}"
                  f"{f' {options}' if options else ''}, {cfg.get('epochs')} epochs, the "
                  f"recipe's optimiser and schedule{', ' + ' '.join(flags) if flags else ''}.",
                  ""]
        body = {"long": lambda g=groups, r=reference: long_section(g, r),
                "unshared": lambda g=groups, r=reference: unshared_section(g, r),
                "dale": lambda g=groups, r=reference: dale_section(g, r),
                "vit": lambda g=groups: vit_section(
                    g, [load_study(out, "vit_dfa"), load_study(out, "vit_dfa_slow")])}[study]()
        lines += [line for line in body if line] + [""]
        lines += [*table(groups, reference, label), ""]
        if prov is not None:
            lines += [prov.sources_line(study, list(groups)), ""]
        finished = done_groups(groups)
        if finished:
            for name, draw in (("accuracy", accuracy_figure),
                               ("angle-over-training", angle_over_training_figure)):
                file = figures / f"{study}-{name}.png"
                draw(finished, file)
                lines.append(f"![{title}: {name.replace('-', ' ')}](figures/{file.name})")
            lines.append("")
    return lines
