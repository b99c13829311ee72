"""RESULTS.md's section on spikes: spiking_cnn (spikingjelly's LIF neurons) on Fashion-MNIST
under every rule of the paper's and the learned-feedback family's (reproduce.py's studies
`spiking` and `spiking_blocks`): the paper's ordering, each layer's update against backprop's,
and each layer's spike rate. Every number is computed from the run folders; the thresholds
of the verdicts are stated beside them.
"""

from __future__ import annotations

import math
import statistics

from results import (
    FA_BEHIND,
    FA_VS_SS,
    NOISE_FLOOR,
    SS_TARGET,
    angle_cell,
    differs,
    done,
    error,
    mean_std,
    pm,
)

# A layer's spike rate is "changed" by a rule when its mean over seeds differs from bp's by
# more than the two std's added and by more than this fraction of bp's rate.
RATE_CHANGE = 0.10
RULES = ("bp", "ss", "fa", "kp", "sa", "aa", "ia", "dfa", "drtp", "dfa_blocks")


def merged(*studies: dict[str, list]) -> dict[str, list]:
    """One {rule: runs} of the spiking studies' folders, in RULES' order."""
    found: dict[str, list] = {}
    for groups in studies:
        for rule, runs in groups.items():
            found.setdefault(rule, []).extend(runs)
    return {rule: found[rule] for rule in (*RULES, *sorted(set(found) - set(RULES)))
            if rule in found}


def seed_means(runs: list, key: str) -> tuple[dict[str, float], dict[str, float]]:
    """({layer: mean}, {layer: std}) over the seeds of the final epoch's per-layer `key`."""
    per_seed = [layers for run in runs if (layers := run.final_layers(key))]
    names = list(per_seed[0]) if per_seed else []
    stats = {n: mean_std([s[n] for s in per_seed if n in s]) for n in names}
    return {n: m for n, (m, _) in stats.items()}, {n: s for n, (_, s) in stats.items()}


def gap(groups: dict[str, list], rule: str) -> tuple[float, float]:
    """(mean error of `rule` − bp's, the two std's added), finished runs only."""
    mine = [error(r) for r in done(groups.get(rule, []))]
    ref = [error(r) for r in done(groups.get("bp", []))]
    if not mine or not ref:
        return math.nan, math.nan
    d, noise, _ = differs(mine, ref)
    return d, noise


def ordering(groups: dict[str, list], where: str = "with spikes") -> list[str]:
    """The paper's ordering here: SS near BP, FA far behind (claim 2's thresholds)."""
    g_ss, n_ss = gap(groups, "ss")
    g_fa, n_fa = gap(groups, "fa")
    if math.isnan(g_ss) or math.isnan(g_fa):
        return ["- The ordering needs finished bp, ss and fa runs: not there yet."]
    ss_near = g_ss <= max(SS_TARGET, n_ss)
    fa_behind = g_fa >= FA_BEHIND and g_fa >= FA_VS_SS * max(g_ss, 0.0) and g_fa > n_fa
    finished = {rule: statistics.fmean(error(r) for r in done(runs))
                for rule, runs in groups.items() if done(runs)}
    ranked = sorted(finished, key=finished.get)
    return [
        f"- **Does SS stay near BP {where}?** (SS − BP at most {SS_TARGET} points, or "
        f"within the std's added): **{'yes' if ss_near else 'no'}**. SS − BP = {g_ss:+.2f} "
        f"points (±{n_ss:.2f}).",
        f"- **Does FA fall far behind {where}?** (FA − BP at least {FA_BEHIND:g} point, "
        f"{FA_VS_SS:g}× SS's gap and more than the std's added): "
        f"**{'yes' if fa_behind else 'no'}**. FA − BP = {g_fa:+.2f} points (±{n_fa:.2f}).",
        "- From best to worst (mean test error over the finished seeds): "
        + ", ".join(f"{r} {finished[r]:.2f}%" for r in ranked) + "."]


def table(groups: dict[str, list], spikes: bool = True) -> list[str]:
    """Each rule's error, gap to bp, angles, (mean spike rate) and minutes per run."""
    head = ["rule", "test error % (mean ± std)", "seeds finished", "− bp (points)",
            "final mean angle(W, B) °", "mean angle to bp's gradient °",
            *(["mean spike rate"] if spikes else []), "minutes per run"]
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    for rule, runs in groups.items():
        finished = done(runs)
        g, noise = gap(groups, rule)
        rates = [statistics.fmean(r.final_layers("val_spike_rates").values())
                 for r in finished if r.final_layers("val_spike_rates")]
        minutes = [r.seconds / 60 for r in finished if math.isfinite(r.seconds)]
        cells = [rule, pm([error(r) for r in finished]), f"{len(finished)} of {len(runs)}",
                 "—" if rule == "bp" or math.isnan(g) else f"{g:+.2f} (±{noise:.2f})",
                 angle_cell(rule, finished),
                 "0" if rule == "bp" else pm([r.final("mean_gradient_angle") for r in finished], 1),
                 *([pm(rates, 4)] if spikes else []),
                 f"{statistics.fmean(minutes):.1f}" if minutes else "—"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def layer_table(groups: dict[str, list], key: str, digits: int, what: str) -> list[str]:
    """rule × layer: the final epoch's per-layer `key`, mean over the finished seeds."""
    rows = {rule: seed_means(done(runs), key)[0] for rule, runs in groups.items()}
    rows = {rule: layers for rule, layers in rows.items() if layers}
    if not rows:
        return []
    names = list(next(iter(rows.values())))
    lines = [f"| {what} | " + " | ".join(f"`{n}`" for n in names) + " |",
             "| --- |" + " ---: |" * len(names)]
    for rule, layers in rows.items():
        lines.append(f"| {rule} | " + " | ".join(
            f"{layers[n]:.{digits}f}" if math.isfinite(layers.get(n, math.nan)) else "—"
            for n in names) + " |")
    return lines


def rate_changes(groups: dict[str, list]) -> list[str]:
    """Which rules change which layer's spike rate against bp's (RATE_CHANGE's criterion)."""
    bp_mean, bp_std = seed_means(done(groups.get("bp", [])), "val_spike_rates")
    if not bp_mean:
        return []
    changed, same = [], []
    for rule, runs in groups.items():
        if rule == "bp" or not done(runs):
            continue
        mean, std = seed_means(done(runs), "val_spike_rates")
        moves = []
        for name, ref in bp_mean.items():
            d = mean.get(name, math.nan) - ref
            if abs(d) > bp_std[name] + std.get(name, 0.0) and abs(d) > RATE_CHANGE * ref:
                moves.append(f"`{name}` {mean[name]:.4f} ({'+' if d > 0 else '−'}"
                             f"{abs(d) / ref:.0%})" if ref > 0 else f"`{name}` {mean[name]:.4f}")
        (changed if moves else same).append((rule, moves))
    verdict = f"yes, under {', '.join(rule for rule, _ in changed)}" if changed else "no"
    line = (f"- **Do the rules change the spike rate?** (a layer's rate in evaluation differs "
            f"from bp's by more than the std's added over seeds and by more than "
            f"{RATE_CHANGE:.0%} of bp's): **{verdict}**.")
    if changed:
        line += " " + "; ".join(f"{rule}: {', '.join(moves)}" for rule, moves in changed) + "."
    if same:
        line += f" No layer's rate changed under {', '.join(rule for rule, _ in same)}."
    return [line]


def control(groups: dict[str, list], plain: dict[str, list]) -> list[str]:
    """The gaps to bp with spikes against without (small_cnn, the same recipe)."""
    lines = []
    for rule in ("ss", "fa"):
        spiked, spread = gap(groups, rule)
        unspiked, noise = gap(plain, rule)
        if math.isnan(spiked) or math.isnan(unspiked):
            continue
        d = spiked - unspiked
        wider = d > max(spread + noise, NOISE_FLOOR)
        lines.append(
            f"- **Do spikes widen {rule.upper()}'s gap to BP?** (the gap with spikes beyond the "
            f"gap without, small_cnn on the same recipe, by more than the std's added and "
            f"{NOISE_FLOOR} points): **{'yes' if wider else 'no'}**. {rule.upper()} − BP = "
            f"{spiked:+.2f} points with spikes (±{spread:.2f}), {unspiked:+.2f} without "
            f"(±{noise:.2f}).")
    return lines


def longer(groups: dict[str, list], long: dict[str, list]) -> list[str]:
    """Whether SS's gap to BP narrows with longer training, with spikes."""
    if not long:
        return []
    short, s_noise = gap(groups, "ss")
    more, m_noise = gap(long, "ss")
    if math.isnan(short) or math.isnan(more):
        return [f"- The longer runs (spiking_long): {', '.join(sorted(long))} not all finished."]
    cfg = long[next(iter(long))][0].config
    narrows = short - more > max(s_noise + m_noise, NOISE_FLOOR)
    fa, _ = gap(long, "fa")
    return [f"- **Does SS's gap to BP narrow with longer training, with spikes?** (SS − BP "
            f"after {cfg.get('epochs')} whole epochs below the gap after the study's steps by "
            f"more than the std's added and {NOISE_FLOOR} points): "
            f"**{'yes' if narrows else 'no'}**. SS − BP = {more:+.2f} points (±{m_noise:.2f}) "
            f"against {short:+.2f} (±{s_noise:.2f}); FA − BP = {fa:+.2f}."]


def section(spiking: dict[str, list], blocks: dict[str, list],
            plain: dict[str, list] | None = None,
            long: dict[str, list] | None = None) -> list[str]:
    """RESULTS.md's lines for the spiking studies (the caller adds the title); `plain`: the
    same network without spikes (the study spiking_control); `long`: the paper's rules over
    whole epochs (spiking_long)."""
    groups = merged(spiking, blocks)
    if not groups:
        return ["Not run yet (`python experiments/reproduce.py --studies spiking,spiking_blocks "
                "--data none`, after `pip install '.[spiking]'`)."]
    cfg = groups[next(iter(groups))][0].config
    lines = [f"Fashion-MNIST, spiking_cnn {cfg.get('model_options')} (spikingjelly's LIF "
             f"neurons, τ 2, sigmoid surrogate; T time steps of direct input), "
             f"{cfg.get('epochs')} epochs of {cfg.get('steps_per_epoch')} steps at batch "
             f"{cfg.get('batch_size')}, the recipe's optimiser and schedule; the classifier on "
             f"{cfg.get('last_rule')}, as in the main comparison; dfa_blocks with each "
             f"conv-BatchNorm-LIF unit a block. Differences count where they clear the std's "
             f"added and {NOISE_FLOOR} points.", ""]
    lines += [*ordering(groups), *control(groups, plain or {}), *longer(groups, long or {}),
              *rate_changes(groups), ""]
    lines += [*table(groups), ""]
    if long:
        cfg = long[next(iter(long))][0].config
        lines += [f"Longer, with spikes ({cfg.get('epochs')} whole epochs, the same network "
                  f"and recipe):", "", *table(merged(long)), ""]
    if plain:
        lines += ["Without spikes (small_cnn at the same width, ReLU for LIF, one pass; the same "
                  "recipe and steps):", "", *table(merged(plain), spikes=False), ""]
    grads = layer_table(groups, "gradient_angles", 1, "angle to bp's gradient (°)")
    if grads:
        lines += ["Each layer's update against backprop's (degrees, final epoch, on the fixed "
                  "angle batch; the classifier is on bp):", "", *grads, ""]
    rates = layer_table(groups, "val_spike_rates", 4, "spike rate")
    if rates:
        lines += ["Each LIF layer's spike rate in evaluation (the fraction of its neurons' time "
                  "steps that fire, over the validation set, final epoch):", "", *rates, ""]
    return lines
