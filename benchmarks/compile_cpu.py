"""torch.compile on the CPU: each rule's compiled ResNet-18 step over the compiled native step,
beside the same ratio eager, and what compiling costs.

For each rule, a fresh process (compiled variants of several rules in one process slow one
another down: docs/performance.md) builds native and the rule, eager and compiled
(`biograd.engine.loop.compile_model`, as `biograd train --compile` compiles: inductor, its
default mode), and:
  compile   the wall and CPU seconds of each compiled variant's first step (forward and
            backward compile then), and of its second (a recompile would show there);
  graphs    for the rule's model, torch._dynamo.explain's graphs and graph breaks of one
            forward, and the first break's reason;
  steps     interleaved training steps (step_time.py's: native, rule, native, ..., the rule
            step over the mean of the native steps around it, CPU time of this process,
            median over rounds), compiled against compiled native, then eager against eager.
Inductor's cache directory is a fresh one per run (`--cache`), so native's compile is cold in
the first process only and each rule's in its own; kernels an earlier run compiled can still be
found elsewhere (this machine's second run compiled 2-6 times faster): a machine's first run
gives the cold compile times.

    python benchmarks/compile_cpu.py --json benchmarks/results_compile_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_time import NATIVE, Variant, batch, quartiles, time_interleaved

import biograd
from biograd._machine import cpu_name

#: the rules issue 23 names, the default
RULES = ("fa", "ss", "frsf", "brsf", "sign_fixed", "kp", "wm", "dfa")


def compiled(rule: str, classes: int, size: int) -> Variant:
    """`rule`'s Variant with its runner compiled as `biograd train --compile` compiles it."""
    from biograd.engine.loop import compile_model

    v = Variant(rule, torch.device("cpu"), classes=classes, size=size)
    v.runner = compile_model(v.model, v.model, "default")
    return v


def graphs(v: Variant, x: torch.Tensor) -> dict:
    """torch._dynamo.explain of one forward of v's model (no backend compile)."""
    import torch._dynamo as dynamo

    e = dynamo.explain(v.model)(x)
    reasons = [r.reason for r in e.break_reasons]
    return {"graphs": e.graph_count, "breaks": e.graph_break_count,
            "first_break": reasons[0].splitlines()[0][:300] if reasons else None}


def first_steps(v: Variant, x, y, n: int = 3) -> list[dict[str, float]]:
    out = []
    for _ in range(n):
        t, c = time.perf_counter(), time.process_time()
        v.step(x, y)
        out.append({"wall_s": time.perf_counter() - t, "cpu_s": time.process_time() - c})
    return out


def summary(times, ratios) -> dict:
    """{rule: {median_s, ratio, ratio_q1, ratio_q3}} on the CPU clock."""
    out = {}
    for rule, t in times["cpu"].items():
        q1, q2, q3 = quartiles(ratios["cpu"][rule]) if rule != NATIVE else (1, 1, 1)
        out[rule] = {"median_s": statistics.median(t), "ratio": q2, "ratio_q1": q1,
                     "ratio_q3": q3}
    return out


def child(rule: str, args: argparse.Namespace) -> dict:
    import torch._dynamo as dynamo

    torch.set_num_threads(args.threads)
    x, y = batch(args.size, args.batch, torch.device("cpu"), classes=args.classes)
    eager = [Variant(r, torch.device("cpu"), classes=args.classes, size=args.size)
             for r in (NATIVE, rule)]
    result: dict = {"graphs": graphs(eager[1], x), "compile": {}}
    dynamo.reset()
    fast = []
    for r in (NATIVE, rule):
        v = compiled(r, args.classes, args.size)
        result["compile"][r] = first_steps(v, x, y)
        fast.append(v)
    result["compiled"] = summary(*time_interleaved(fast[0], fast[1:], x, y, 1, args.repeats, 1))
    result["eager"] = summary(*time_interleaved(eager[0], eager[1:], x, y, 1, args.repeats, 1))
    return result


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rules", nargs="+", default=list(RULES), choices=biograd.list_rules(),
                   metavar="RULE")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache", type=Path, default=None,
                   help="inductor's cache directory (default: a fresh temporary one)")
    p.add_argument("--json", type=Path, default=None, help="write the record here")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args)))
        return {}
    cache = args.cache or Path(tempfile.mkdtemp(prefix="biograd-inductor-"))
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache),
           "TORCHINDUCTOR_COMPILE_THREADS": str(args.threads)}
    record: dict = {"machine": f"{cpu_name()}, torch {torch.__version__}, threads "
                               f"{args.threads}",
                    "command": shlex.join(["python", "benchmarks/compile_cpu.py",
                                           *(sys.argv[1:] if argv is None else argv)]),
                    "batch": args.batch, "size": args.size, "classes": args.classes,
                    "repeats": args.repeats, "rules": {}}
    keep = ["--batch", str(args.batch), "--size", str(args.size), "--classes",
            str(args.classes), "--repeats", str(args.repeats), "--threads", str(args.threads)]
    for rule in args.rules:
        t = time.perf_counter()
        out = subprocess.run([sys.executable, __file__, "--child", rule, *keep], env=env,
                             check=True, capture_output=True, text=True).stdout
        record["rules"][rule] = json.loads(out.strip().splitlines()[-1])
        print(f"{rule}: {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
        if args.json:  # as it goes: a long run keeps what it has
            args.json.write_text(json.dumps(record, indent=1))
    print(table(record))
    return record


def table(record: dict) -> str:
    lines = ["| rule | compiled: step / compiled native (IQR) | eager: step / native (IQR) | "
             "compiled native / eager native | first compiled step s (wall) | graphs, breaks |",
             "| --- | --- | --- | ---: | ---: | --- |"]
    for rule, r in record["rules"].items():
        c, e = r["compiled"], r["eager"]
        first = r["compile"][rule][0]["wall_s"]
        g = r["graphs"]
        lines.append(
            f"| {rule} | **{c[rule]['ratio']:.3f}** ({c[rule]['ratio_q1']:.3f}–"
            f"{c[rule]['ratio_q3']:.3f}) | **{e[rule]['ratio']:.3f}** ({e[rule]['ratio_q1']:.3f}"
            f"–{e[rule]['ratio_q3']:.3f}) | {c[NATIVE]['median_s'] / e[NATIVE]['median_s']:.3f}"
            f" | {first:.0f} | {g['graphs']}, {g['breaks']} |")
    first = next(iter(record["rules"].values()))["compile"][NATIVE][0]["wall_s"]
    lines += ["", f"native's first compiled step: {first:.0f} s; machine: "
              f"{record['machine']}; ResNet-18, {record['classes']} classes, batch "
              f"{record['batch']} at {record['size']}²; {record['repeats']} rounds; CPU time",
              f"command: `{record['command']}`"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
