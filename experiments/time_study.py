"""RESULTS.md's section on time (reproduce.py's studies `lstm` and `rlif_*`): an image read
row by row, 28 steps of 28 pixels. The lstm on the paper's rules, with the angle of each
weight (input W_ih and recurrent W_hh apart); the recurrent LIF network (rlif) by BPTT
against e-prop with symmetric, random and adaptive feedback: error, and the memory a sequence
takes (benchmarks/results_eprop_cost.json). Every number is computed from the run folders and
that record; the thresholds of the verdicts are stated beside them.
"""

from __future__ import annotations

import json
import math
import statistics

from results import FA_BEHIND, NOISE_FLOOR, ROOT, differs, done, error, pm
from spiking_study import gap, layer_table, ordering

#: the rlif studies: folder -> what it trains
RLIF = {"rlif_bptt": "BPTT", "rlif_symmetric": "e-prop, symmetric (readout on bp)",
        "rlif_random": "e-prop, random (readout on fa)",
        "rlif_adaptive": "e-prop, adaptive (readout on kp)"}
EPROP_COST = ROOT / "benchmarks" / "results_eprop_cost.json"


def weight_kind(name: str) -> str:
    """"input" for a recurrent layer's W_ih, "recurrent" for W_hh, else the layer's name."""
    leaf = name.rsplit(".", 1)[-1]
    return ("input" if leaf.startswith("weight_ih") else
            "recurrent" if leaf.startswith("weight_hh") else name)


def lstm_table(groups: dict[str, list]) -> list[str]:
    lines = ["| rule | test error % (mean ± std) | seeds finished | − bp (points) | "
             "angle(W_ih, B_ih) ° | angle(W_hh, B_hh) ° | W_ih's update to bp's ° | "
             "W_hh's update to bp's ° |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for rule, runs in groups.items():
        finished = done(runs)
        g, noise = gap(groups, rule)

        def per_kind(key: str, kind: str, runs=finished) -> str:
            if rule == "bp":
                return "0"
            values = [statistics.fmean(v for n, v in run.final_layers(key).items()
                                       if weight_kind(n) == kind)
                      for run in runs if any(weight_kind(n) == kind
                                             for n in run.final_layers(key))]
            return pm(values, 1) if values else "—"

        lines.append(
            f"| {rule} | {pm([error(r) for r in finished])} | {len(finished)} of {len(runs)} | "
            f"{'—' if rule == 'bp' or math.isnan(g) else f'{g:+.2f} (±{noise:.2f})'} | "
            f"{per_kind('weight_angles', 'input')} | {per_kind('weight_angles', 'recurrent')} | "
            f"{per_kind('gradient_angles', 'input')} | "
            f"{per_kind('gradient_angles', 'recurrent')} |")
    return lines


def lstm_section(groups: dict[str, list]) -> list[str]:
    if not groups:
        return ["The lstm: not run yet (`python experiments/reproduce.py --studies lstm "
                "--data none`)."]
    cfg = groups[next(iter(groups))][0].config
    lines = [f"The lstm (torch's nn.LSTM, hidden {cfg.get('model_options', {}).get('hidden', 128)}"
             f", both its weights on the rule, the readout on {cfg.get('last_rule')}) on "
             f"Fashion-MNIST, {cfg.get('epochs')} epochs, the recipe's optimiser and schedule:",
             "", *ordering(groups, "in time"), "", *lstm_table(groups), ""]
    grads = layer_table(groups, "gradient_angles", 1, "update's angle to bp's (°)")
    if grads:
        lines += ["Each weight's update against backprop's through time (final epoch, the "
                  "fixed angle batch):", "", *grads, ""]
    return lines


def memory_line() -> str:
    """The bytes a sequence of 28 steps keeps for the backward, each way (the benchmark)."""
    if not EPROP_COST.is_file():
        return ""
    record = json.loads(EPROP_COST.read_text())
    rows = record["rows"]
    if "28" not in rows:
        return ""
    longest = max(rows, key=int)
    mb = {t: {mode: rows[t][mode]["saved_bytes"] / 2**20 for mode in ("eprop", "bptt")}
          for t in ("28", longest)}
    return (f"- Memory per sequence (benchmarks/eprop_cost.py, batch {record['batch']}, hidden "
            f"{record['hidden']}: the bytes autograd keeps for the backward): at 28 steps "
            f"e-prop {mb['28']['eprop']:.2f} MiB, BPTT {mb['28']['bptt']:.2f} MiB; at "
            f"{longest} steps e-prop {mb[longest]['eprop']:.2f} MiB, BPTT "
            f"{mb[longest]['bptt']:.2f} MiB: e-prop's is flat in the length, BPTT's grows with "
            f"it.")


def rlif_section(studies: dict[str, dict[str, list]]) -> list[str]:
    """studies: {folder: {rule: runs}} of the rlif studies."""
    found = {folder: [r for runs in groups.values() for r in runs]
             for folder, groups in studies.items() if groups}
    if not found:
        return ["The recurrent LIF network: not run yet (`python experiments/reproduce.py "
                "--studies rlif_bptt,rlif_symmetric,rlif_random,rlif_adaptive --data none`)."]
    errors = {f: [error(r) for r in done(runs)] for f, runs in found.items()}
    base = errors.get("rlif_bptt", [])
    lines = ["The recurrent LIF network (rlif, hidden 128, τ 10 steps, readout on the "
             "time-averaged spikes) on Fashion-MNIST, the recipe's optimiser and schedule:", ""]

    def mean_gap(a: str, b: str) -> tuple[float, float] | None:
        if not errors.get(a) or not errors.get(b):
            return None
        d, noise, _ = differs(errors[a], errors[b])
        return d, noise

    near = mean_gap("rlif_symmetric", "rlif_bptt")
    if near is not None:
        d, noise = near
        close = d <= max(FA_BEHIND, noise)
        lines.append(f"- **Does e-prop with symmetric feedback come near BPTT?** (e-prop − BPTT "
                     f"at most {FA_BEHIND:g} point, or within the std's added): "
                     f"**{'yes' if close else 'no'}**. e-prop − BPTT = {d:+.2f} points "
                     f"(±{noise:.2f}).")
    behind = mean_gap("rlif_random", "rlif_symmetric")
    if behind is not None:
        d, noise = behind
        worse = d > max(noise, NOISE_FLOOR)
        lines.append(f"- **Does random feedback cost e-prop accuracy?** (random − symmetric "
                     f"beyond the std's added and {NOISE_FLOOR} points): "
                     f"**{'yes' if worse else 'no'}**. Random − symmetric = {d:+.2f} points "
                     f"(±{noise:.2f}).")
    memory = memory_line()
    lines += ([memory] if memory else []) + [""]
    lines += ["| training | test error % (mean ± std) | seeds finished | − BPTT (points) | "
              "minutes per run |", "| --- | ---: | ---: | ---: | ---: |"]
    for folder, label in RLIF.items():
        runs = found.get(folder, [])
        finished = done(runs)
        d = mean_gap(folder, "rlif_bptt") if folder != "rlif_bptt" and base else None
        minutes = [r.seconds / 60 for r in finished if math.isfinite(r.seconds)]
        lines.append(f"| {label} | {pm(errors.get(folder, [])) if finished else '—'} | "
                     f"{len(finished)} of {len(runs)} | "
                     f"{'—' if d is None else f'{d[0]:+.2f} (±{d[1]:.2f})'} | "
                     f"{f'{statistics.fmean(minutes):.1f}' if minutes else '—'} |")
    return [*lines, ""]


def section(load) -> list[str]:
    """RESULTS.md's lines for the time studies; load(study) -> {rule: runs}."""
    return [*lstm_section(load("lstm")), *rlif_section({f: load(f) for f in RLIF})]

