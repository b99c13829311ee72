"""The cost of a sequence against its length T: e-prop against BPTT, on one recurrent LIF layer.

biograd.nn.eprop.RecurrentLIF and a linear readout on its rates (the rlif model's network),
cross-entropy, forward + backward of one batch, in each mode: `learning="eprop"` accumulates
the eligibility traces forward and keeps (N, H, I + H + 1) numbers whatever T;
`learning="bptt"` keeps every step's activations for backprop through time.

Per (T, mode): the CPU time of `--calls` forward + backward passes (interleaved rounds, every
variant once per round, order rotated each round; the median ms per pass), the bytes autograd
saves for the backward (torch.autograd.graph.saved_tensors_hooks: the distinct storages, the
parameters and the input left out; what grows with T), and with --peak the most bytes torch's
CPU allocator held at once during the pass beyond what it held before (torch.profiler's memory
events): the transients too, the forward's temporaries and the backward's gradients.

    python benchmarks/eprop_cost.py --threads 1 --peak --json benchmarks/results_eprop_cost.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled
import step_time  # machine()

from biograd.nn.eprop import RecurrentLIF

MODES = ("eprop", "bptt")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, nargs="+", default=[8, 28, 112, 448], help="T values")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--input", type=int, default=28)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--calls", type=int, default=3, help="passes per variant per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--peak", action="store_true", help="also measure the peak memory of one "
                   "pass (torch's profiler: slow at large T)")
    p.add_argument("--json", type=Path, default=None, help="write all results here")
    return p


def build(args: argparse.Namespace, mode: str) -> nn.Sequential:
    torch.manual_seed(0)  # the same weights in both modes
    return nn.Sequential(RecurrentLIF(args.input, args.hidden, learning=mode),
                         nn.Linear(args.hidden, 10))


def data(args: argparse.Namespace, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(steps)
    return (torch.randn(steps, args.batch, args.input, generator=g),
            torch.randint(0, 10, (args.batch,), generator=g))


def one_pass(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    F.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)


def saved_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes autograd keeps for the backward of one forward: the distinct storages saved, the
    parameters and the input left out (they are held anyway; ops save them again and again)."""
    held = {t.untyped_storage().data_ptr() for t in [x, *model.parameters()]}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in held:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    del out
    return sum(saved.values())


def peak_bytes(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """The most bytes torch's CPU allocator held at once over one forward + backward, beyond
    what it held before (the profiler's memory events: every allocation and free, in order)."""
    with tempfile.TemporaryDirectory() as tmp:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                    profile_memory=True) as prof:
            one_pass(model, x, y)
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    return max((e["args"]["Total Allocated"] for e in events if e.get("name") == "[memory]"),
               default=0)


def main(args: argparse.Namespace) -> dict:
    """Prints the table; returns {"rows": {T: {mode: {ms, saved_bytes[, peak_bytes]}}}, ...}."""
    if args.threads:
        torch.set_num_threads(args.threads)
    models = {mode: build(args, mode) for mode in MODES}
    inputs = {steps: data(args, steps) for steps in args.steps}
    variants = [(steps, mode) for steps in args.steps for mode in MODES]

    def timed(steps: int, mode: str) -> float:
        start = time.process_time()
        for _ in range(args.calls):
            one_pass(models[mode], *inputs[steps])
        return (time.process_time() - start) / args.calls * 1e3

    for v in variants:  # warm-up
        timed(*v)
    times: dict[tuple[int, str], list[float]] = {v: [] for v in variants}
    for r in range(args.rounds):
        for v in variants[r % len(variants):] + variants[: r % len(variants)]:
            times[v].append(timed(*v))
    rows: dict[str, dict[str, dict]] = {}
    for steps, mode in variants:
        cell = {"ms": statistics.median(times[steps, mode]),
                "saved_bytes": saved_bytes(models[mode], inputs[steps][0])}
        if args.peak:
            cell["peak_bytes"] = peak_bytes(models[mode], *inputs[steps])
        rows.setdefault(str(steps), {})[mode] = cell
    result = {"machine": step_time.machine(), "command": "python " + shlex.join(sys.argv),
              "batch": args.batch, "input": args.input, "hidden": args.hidden,
              "calls": args.calls, "rounds": args.rounds, "rows": rows}
    print(f"# {result['command']}\n# torch {torch.__version__}, {result['machine']['cpu']}, "
          f"{torch.get_num_threads()} thread(s); LIF {args.input}→{args.hidden}, "
          f"batch {args.batch}\n")
    print("\n".join(table(result)))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


def table(result: dict) -> list[str]:
    """The markdown table of a result (main's, or its JSON), as docs and RESULTS.md quote it."""
    rows = result["rows"]
    peak = all("peak_bytes" in cell for row in rows.values() for cell in row.values())
    lines = ["| T | e-prop ms | BPTT ms | BPTT ÷ e-prop | e-prop saved MB | BPTT saved MB"
             + (" | e-prop peak MB | BPTT peak MB |" if peak else " |"),
             "| ---: | ---: | ---: | ---: | ---: | ---:" + (" | ---: | ---: |" if peak else " |")]
    for steps, row in rows.items():
        e, b = row["eprop"], row["bptt"]
        line = (f"| {steps} | {e['ms']:.1f} | {b['ms']:.1f} | {b['ms'] / e['ms']:.2f} | "
                f"{e['saved_bytes'] / 1e6:.2f} | {b['saved_bytes'] / 1e6:.2f}")
        if peak:
            line += f" | {e['peak_bytes'] / 1e6:.2f} | {b['peak_bytes'] / 1e6:.2f}"
        lines.append(line + " |")
    return lines


if __name__ == "__main__":
    main(get_args_parser().parse_args())
