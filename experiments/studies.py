"""The studies' sections of RESULTS.md: the seed's claims pushed further, the open problems
measured (experiments/reproduce.py's STUDIES). Every number is computed from the run folders
OUT/STUDY/RULE-seedN and the main comparison's OUT/DATA/RULE-seedN; the thresholds of the
verdicts are stated beside them.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import spiking_study
import time_study
import yaml
from reproduce import RECIPE, STUDIES
from results import (
    ALIGNED,
    FAMILY,
    NOISE_FLOOR,
    TITLES,
    angle_cell,
    differs,
    done,
    error,
    final_angle,
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

EARLY_LATE = 2.0  # degrees: claim 3b's threshold, as in the main verdicts
# the sections in page order: a study's folder, or a section drawn from several (dfa, placement,
# robustness)
ORDER = ("long", "dfa", "unshared", "dale", "vit", "placement", "robustness", "kunin",
         "spiking", "time")
SEEDS = 3  # seeds per rule: a rule is ended when this many runs finished or diverged
ROBUST_SLACK = 1.0  # points of error: how much further behind bp a rule of the family may fall
#                     on the ViT than on the ResNet (or the std's added, if larger) and still
#                     count as robust; claim 2's "well behind" is 1 point too
NEAR_BP = 5.0  # points of error: dfa_blocks' best within this of bp's on the ViT "fixes" DFA
# TinyDFA's finding, from ../shared/REFERENCE.md, which quotes it and warns: "as quoted; check
# the paper before using it as a target"
TINYDFA = ("TinyDFA (Launay et al. 2020) reports a Transformer language model on WikiText-103 "
           "at perplexity \"BP 29.8 against DFA 52.0 (DFA through the blocks) and 93.3 (inside "
           "them)\" (as quoted in ../shared/REFERENCE.md, which says to check the paper before "
           "using it as a target)")


def load_study(out: Path, study: str) -> dict[str, list]:
    """{rule: [Run, one per seed]} of OUT/STUDY, rules in the registry's order."""
    folder = out / study
    if not folder.is_dir():
        return {}
    runs = [load_run(p) for p in sorted(folder.iterdir()) if (p / "config.yaml").is_file()]
    groups = {rule: sorted((r for r in runs if r.rule == rule), key=lambda r: r.seed or 0)
              for rule in list_rules()}
    return {rule: rs for rule, rs in groups.items() if rs}


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


def missing(groups: dict[str, list], rules: tuple[str, ...], seeds: int = SEEDS) -> str:
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
            *lines, *(drtp_line(data, done_groups(main.get(data, {})))
                      for data in ("fashion-mnist", "mnist"))]


def drtp_line(data: str, groups: dict[str, list]) -> str:
    """DRTP beside DFA on one data set's finished runs: its error, its differences to DFA and
    BP, and (its B has no W's shape: measured as DFA is) its weight updates' angles to
    backprop's."""
    if "drtp" not in groups or "bp" not in groups:
        return f"- {TITLES[data]}: {'drtp' if 'bp' in groups else 'bp'} not finished yet."
    g, noise = gap(groups, "drtp")
    to_dfa = versus(groups, "drtp", "dfa")
    grads = layer_means(groups["drtp"], "gradient_angles")
    return (f"- {TITLES[data]}: DRTP (the one-hot targets in place of DFA's output error) "
            f"{pm([error(r) for r in groups['drtp']])}% (DRTP − BP {g:+.2f} points, "
            f"±{noise:.2f}" + (f"; DRTP − DFA {to_dfa[0]:+.2f}, ±{to_dfa[1]:.2f}"
                                if to_dfa else "") + ")."
            + (" The angle of DRTP's weight updates to backprop's, layer by layer: "
               + ", ".join(f"{n} {v:.1f}°" for n, v in grads.items()) + "." if grads else ""))


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


def vit_section(groups) -> list[str]:
    """The ViT's ordering of the rules at the recipe's lr, and each seed that diverged there
    (dfa and dfa_blocks at lower lrs: placement_section)."""
    rules = STUDIES["vit"][1]
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
    left = missing(groups, rules)
    return lines + ([f"- {left}"] if left else [])


# --- DFA's placement on the ViT ---------------------------------------------------------------

def ended(runs: list) -> bool:
    """Whether every seed has finished or diverged."""
    return len(done(runs)) + len(diverged(runs)) >= SEEDS


def trained(runs: list) -> bool:
    """Whether every seed finished, none diverged."""
    return ended(runs) and not diverged(runs)


def study_lr(study: str, groups: dict[str, list]) -> float:
    """The study's learning rate: its runs' config, else its flags', else the recipe's."""
    if groups:
        return next(iter(groups.values()))[0].config.get("lr")
    flags = STUDIES[study][2]
    if "--lr" in flags:
        return float(flags[flags.index("--lr") + 1])
    return yaml.safe_load(RECIPE.read_text())["lr"]


def outcome(runs: list) -> str:
    """A table cell: "diverged (n of m seeds)", else the finished seeds' error ± std, with how
    many are still to run; "—" without runs."""
    if not runs:
        return "—"
    if diverged(runs):
        return f"diverged ({len(diverged(runs))} of {len(runs)} seeds)"
    text = pm([error(r) for r in done(runs)]) if done(runs) else "running"
    return text if ended(runs) else f"{text} ({len(done(runs))} of {SEEDS} seeds)"


def best(by_lr: dict[float, list]) -> tuple[float, list] | None:
    """(lr, runs) of the lowest mean error among the lrs where the rule trained; None if it
    trained at none."""
    trains = {lr: done(runs) for lr, runs in by_lr.items() if trained(runs)}
    if not trains:
        return None
    return min(trains.items(), key=lambda item: mean_std([error(r) for r in item[1]])[0])


def placement_verdict(dfa: dict[float, list], blocks: dict[float, list], bp: list) -> str:
    """Whether dfa_blocks fixes DFA on the ViT (the criterion on the page: placement_section)."""
    b_best, d_best = best(blocks), best(dfa)
    if b_best is None:
        return "no"
    rescued = any(diverged(dfa[lr]) and trained(blocks.get(lr, [])) for lr in dfa)
    if d_best is None:
        better = True
    else:
        d, _, clear = differs([error(r) for r in b_best[1]], [error(r) for r in d_best[1]])
        better = (clear and d < 0) or (rescued and not (clear and d > 0))
    if not better:
        return "no"
    g, _ = gap({"bp": done(bp), "dfa_blocks": b_best[1]}, "dfa_blocks")
    return "yes" if g <= NEAR_BP else f"better than dfa, but not within {NEAR_BP:.0f} points of bp"


def placement_section(out: Path, prov=None) -> list[str]:
    """dfa_blocks against dfa at every layer and bp on the ViT at each learning rate (the
    studies vit, vit_dfa, vit_dfa_slow): each diverged or its error, the best of each rule
    over the lrs, and the verdict."""
    studies = [s for s in STUDIES if s == "vit" or s.startswith("vit_dfa")]
    folders = {s: load_study(out, s) for s in studies}
    lrs = {s: study_lr(s, g) for s, g in folders.items()}
    by_rule = {rule: {lrs[s]: g.get(rule, []) for s, g in folders.items() if rule in
                      STUDIES[s][1]} for rule in ("bp", "dfa", "dfa_blocks")}
    left = [f"- In {s} (lr {lrs[s]}): {m[0].lower()}{m[1:]}" for s, g in folders.items()
            if (m := missing(g, ("dfa", "dfa_blocks", "bp") if s == "vit" else STUDIES[s][1]))]
    bp = by_rule["bp"][lrs["vit"]]
    verdict = ("cannot be told yet" if left else
               placement_verdict(by_rule["dfa"], by_rule["dfa_blocks"], bp))
    lines = [f"dfa_blocks is TinyDFA's \"macro\" placement (backprop inside each encoder "
             f"block, the "
             f"projected output error at each block's output); dfa projects the error to "
             f"every layer. {TINYDFA}. bp runs at the recipe's lr only (study vit).", "",
             f"- **Does the placement fix DFA on attention, as TinyDFA reports?** (dfa_blocks "
             f"trains, every seed, at an lr where dfa diverged, or its best error is below "
             f"dfa's best by more than the std's added and {NOISE_FLOOR} points, and not above "
             f"it by as much; \"yes\" where its best is also within {NEAR_BP:.0f} points of "
             f"bp's): **{verdict}**.", *left]
    for rule, per_lr in by_rule.items():
        top = best(per_lr)
        if top:
            g, noise = gap({"bp": done(bp), rule: top[1]}, rule)
            lines.append(f"- Best {rule}: {pm([error(r) for r in top[1]])}% at lr {top[0]}"
                         + ("" if rule == "bp" else f" ({rule} − BP {g:+.2f} points, "
                                                    f"±{noise:.2f})") + ".")
        elif all(ended(runs) for runs in per_lr.values()):
            lines.append(f"- {rule} trained at none of the learning rates.")
    lines += ["", "| lr | study | bp | dfa (every layer) | dfa_blocks (between blocks) |",
              "| ---: | --- | ---: | ---: | ---: |"]
    lines += [f"| {lrs[s]} | {s} | " + " | ".join(outcome(g.get(r, [])) for r in
                                                  ("bp", "dfa", "dfa_blocks")) + " |"
              for s, g in folders.items()]
    if prov is not None:
        lines += ["", *(f"{s}: " + prov.sources_line(s, list(g)) for s, g in folders.items()
                        if g and s != "vit")]
    return lines


# --- Kunin et al.'s alignment family: one setting on two models, and Kunin's own coefficients --

def robust_verdict(rule: str, resnet: dict[str, list], vit: dict[str, list]) -> str:
    """Whether one setting of `rule` trains both models alike: every seed finished on both and
    its gap to bp on the ViT at most ROBUST_SLACK points (or the std's added, if larger)
    beyond its gap on the ResNet."""
    for model, groups in (("the ResNet", resnet), ("the ViT", vit)):
        runs = groups.get(rule, [])
        if diverged(runs):
            return f"not robust: diverged on {model} ({len(diverged(runs))} of {len(runs)} seeds)"
    if not all(trained(g.get(r, [])) for g in (resnet, vit) for r in (rule, "bp")):
        return "cannot be told yet"
    (g_res, n_res), (g_vit, n_vit) = gap(done_groups(resnet), rule), gap(done_groups(vit), rule)
    grows = g_vit - g_res
    if grows <= max(ROBUST_SLACK, n_res + n_vit):
        return "robust at this scale"
    return f"not robust: its gap to bp grows by {grows:.2f} points"


def model_cells(rule: str, groups: dict[str, list]) -> list[str]:
    """[error, gap to bp, final mean angle] of `rule`'s finished runs, as table cells."""
    runs = done(groups.get(rule, []))
    if not runs or diverged(groups.get(rule, [])):
        return [outcome(groups.get(rule, [])), "—", "—"]
    g, noise = gap(done_groups(groups), rule) if done(groups.get("bp", [])) else (math.nan, 0)
    m, s = final_angle(runs)
    return [outcome(groups[rule]), "—" if rule == "bp" or math.isnan(g) else
            f"{g:+.2f} (±{noise:.2f})", "0" if rule == "bp" else f"{m:.1f} ± {s:.1f}"]


def epochs(groups: dict[str, list]) -> str:
    """The epochs the runs were configured for, or "?" without runs."""
    return str(next(iter(groups.values()))[0].config.get("epochs")) if groups else "?"


def robustness_section(fashion: dict[str, list], vit: dict[str, list]) -> list[str]:
    """sa, aa and ia with the same setting on resnet_small (the main Fashion-MNIST comparison)
    and on the ViT (study vit): per rule, the verdict and the numbers behind it."""
    lines = [f"The claim (Kunin et al.'s, as issue 20 puts it): the same coefficients on "
             f"different architectures, no tuning. Here each rule keeps one setting "
             f"(recipe.yaml's) on the ResNet (the main Fashion-MNIST comparison, "
             f"{epochs(fashion)} epochs) and on the ViT (study vit, {epochs(vit)} epochs). A rule "
             f"is called robust at this scale where "
             f"every seed trains on both (none diverges) and its gap to bp on the ViT is at most "
             f"{ROBUST_SLACK:.0f} point beyond its gap on the ResNet, or the std's added where "
             f"those are larger.", ""]
    for rule in FAMILY:
        verdict = robust_verdict(rule, fashion, vit)
        lines.append(f"- **Is {rule}'s setting robust from the ResNet to the ViT?** (ViT gap "
                     f"at most ResNet gap + {ROBUST_SLACK:.0f} point or the std's added): "
                     f"**{verdict}**.")
    for groups, where in ((fashion, "the main Fashion-MNIST comparison"), (vit, "study vit")):
        left = missing(groups, ("bp", *FAMILY))
        if left:
            lines.append(f"- In {where}: {left[0].lower()}{left[1:]}")
    lines += ["", "| rule | ResNet error % | ResNet − BP | ResNet angle ° | ViT error % | "
              "ViT − BP | ViT angle ° |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {rule} | " + " | ".join([*model_cells(rule, fashion), *model_cells(rule, vit)])
              + " |" for rule in ("bp", *FAMILY)]
    return lines


def kunin_lines(rule: str, own: list, scaled: list) -> list[str]:
    """The verdict on one rule at Kunin et al.'s own coefficients (`own`, the study kunin's
    runs) against the recipe's scaled setting (`scaled`, the main comparison's finished runs)."""
    m_scaled, _ = final_angle(scaled)
    seeds = [f"  - seed {r.seed}: {r.message or 'no message'}" for r in diverged(own)]
    if seeds:
        verdict = "yes"
        said = f"At Kunin's coefficients it diverged in {len(seeds)} of {len(own)} seeds"
    else:
        d, noise, clear = differs([error(r) for r in done(own)], [error(r) for r in scaled])
        m_own, _ = final_angle(done(own))
        slow = not m_own < ALIGNED and m_scaled < ALIGNED
        verdict = "yes" if (clear and d > 0) or slow else "no"
        said = (f"At Kunin's coefficients {pm([error(r) for r in done(own)])}% error, final "
                f"mean angle {m_own:.1f}°, {d:+.2f} points (±{noise:.2f}) from the scaled "
                f"setting's error")
    return [f"- **Did {rule} need the recipe's scaled setting?** (at Kunin's own coefficients "
            f"it diverged in a seed, or its error is above the scaled setting's by more than "
            f"the std's added and {NOISE_FLOOR} points, or its final mean angle is not under "
            f"{ALIGNED:.0f}° where the scaled setting's is): **{verdict}**. {said}; the scaled "
            f"setting (recipe.yaml's, the main comparison): {pm([error(r) for r in scaled])}%, "
            f"{m_scaled:.1f}°" + (":" if seeds else "."), *seeds]


def kunin_section(groups: dict[str, list], fashion: dict[str, list]) -> list[str]:
    """The study kunin: ia and sa at Kunin et al.'s own coefficients against the recipe's
    scaled setting (the main Fashion-MNIST comparison): did they need the scaling?"""
    lines = []
    for rule in STUDIES["kunin"][1]:
        own, scaled = groups.get(rule, []), done(fashion.get(rule, []))
        if not ended(own) and not diverged(own):  # one seed that diverged answers it
            continue
        lines += (kunin_lines(rule, own, scaled) if scaled else
                  [f"- {rule}: the main comparison's runs (the scaled setting) are not "
                   f"finished yet."])
    left = missing(groups, STUDIES["kunin"][1])
    return lines + ([f"- {left}"] if left else [])


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


def intro_text(unshared: str, vit: str) -> str:
    """The studies' opening paragraph: what each study changes (`unshared`, `vit`: the epoch
    costs epoch_cost measured, or "")."""
    slower = [s for s in STUDIES if s.startswith("vit_dfa")]
    return (
        "Each on Fashion-MNIST and the main recipe (3 seeds), changed by a flag or two "
        "(reproduce.py's STUDIES): `long` trains bp and ss for 20 epochs, the most the question "
        f"asks, for W's distribution to change shape; `unshared` keeps 3 epochs (5.7 M "
        f"weights){unshared}; `dale` keeps 3, and balances the weights, as without it BatchNorm "
        f"networks stop learning (docs/beyond.md); the ViT (16 patches of 7×7, 4 layers of "
        f"width 64) gets 5{vit}: `vit` trains {', '.join(STUDIES['vit'][1])} on it at the "
        f"recipe's lr, "
        + " and ".join(f"`{s}` {' and '.join(STUDIES[s][1])} at lr {study_lr(s, {})}"
                       for s in slower)
        + f"; `kunin` trains {' and '.join(STUDIES['kunin'][1])} on the ResNet at Kunin et "
        f"al.'s own coefficients (`--rule-options {{}}`). Differences are called real when "
        f"they exceed both the two std's added and {NOISE_FLOOR} points.")


def study_heading(groups: dict[str, list]) -> str:
    """The line under a study's title: data, model, epochs and the flags that differ."""
    cfg = groups[next(iter(groups))][0].config
    options = cfg.get("model_options") or {}
    flags = [f for f, on in (("--unshare", cfg.get("unshare")),
                             (f"--dale {cfg.get('dale')}", cfg.get("dale")),
                             ("--dale-balance", cfg.get("dale_balance"))) if on]
    return (f"{TITLES.get(cfg.get('data'), cfg.get('data'))}, {cfg.get('model')}"
            f"{f' {options}' if options else ''}, {cfg.get('epochs')} epochs, the recipe's "
            f"optimiser and schedule{', ' + ' '.join(flags) if flags else ''}.")


def sections(out: Path, main: dict[str, dict[str, list]], published: dict,
             figures: Path, prov=None) -> list[str]:
    """The studies' part of RESULTS.md; `prov` (results.Provenance) says which session
    trained what, for the times."""
    fashion = main.get("fashion-mnist", {})
    unshared = epoch_cost(prov, load_study(out, "unshared"), fashion, "an epoch of it")
    vit = epoch_cost(prov, load_study(out, "vit"), fashion, "an epoch of it")
    lines = ["## The studies: further, and the open problems", "", intro_text(unshared, vit),
             ""]
    drawn = {  # the sections drawn from several folders
        "dfa": ("DFA and DRTP beside FA", lambda: dfa_section(main, published)),
        "placement": ("DFA's placement on the ViT: between blocks or at every layer",
                      lambda: placement_section(out, prov)),
        "robustness": ("The alignment family: one setting on two architectures",
                       lambda: robustness_section(fashion, load_study(out, "vit"))),
        "spiking": ("Spikes: a spiking CNN on every rule (`--model spiking_cnn`)",
                    lambda: spiking_study.section(load_study(out, "spiking"),
                                                  load_study(out, "spiking_blocks"),
                                                  load_study(out, "spiking_control"),
                                                  load_study(out, "spiking_long"))),
        "time": ("Time: an image read row by row (`--model lstm`, `--model rlif`)",
                 lambda: time_study.section(lambda study: load_study(out, study))),
    }
    intro = {
        "long": ("Longer training (claims 1 and 3b)", fashion, "3 epochs (main)"),
        "unshared": ("No weight sharing (`--unshare`)", fashion, "shared (main)"),
        "dale": ("Dale's law (`--dale 0.8 --dale-balance`)", fashion, "unconstrained (main)"),
        "vit": ("Attention: a small ViT (`--model vit_small`)", {}, "—"),
        "kunin": ("The alignment family at Kunin et al.'s own coefficients "
                  "(`--rule-options {}`)", fashion, "recipe's setting (main)"),
    }
    for study in ORDER:
        if study in drawn:
            title, body = drawn[study]
            lines += [f"### {title}", "", *body(), ""]
            continue
        groups = load_study(out, study)
        title, reference, label = intro[study]
        lines += [f"### {title}", ""]
        if not groups:
            lines += ["Not run yet.", ""]
            continue
        lines += [study_heading(groups), ""]
        body = {"long": lambda g=groups, r=reference: long_section(g, r),
                "unshared": lambda g=groups, r=reference: unshared_section(g, r),
                "dale": lambda g=groups, r=reference: dale_section(g, r),
                "vit": lambda g=groups: vit_section(g),
                "kunin": lambda g=groups, r=reference: kunin_section(g, r)}[study]()
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
