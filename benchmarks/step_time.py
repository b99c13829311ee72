"""Training-step time and memory of a model on each learning rule, against native torch.

One step is what a training loop does per batch: zero_grad, forward, cross-entropy, backward,
SGD (momentum 0.9, weight decay 1e-4; torch's default foreach form, or with --fused its fused
one) step and `biograd.after_step`. Every rule converts all
layers of the model (the classifier included): by default a torchvision resnet18 with
--classes outputs (1000); `--model resnet18-unshared` the same with every Conv2d unshared
(biograd.unshare at the one --sizes given; its native step runs the unshared model on plain
autograd); `--model resnet18-narrow` ResNet-18's layers at 1/8 of its widths (8 to 64
channels), a step bound by the layers' host cost; `--model vit` a small torchvision
VisionTransformer (patch 4, 4 layers of width 192, 3 heads; native: torch's own
MultiheadAttention). Steps are interleaved: each round
runs native, two rules, native, two rules, ..., native (one step each, the rule order rotated
every round); warm-up rounds are dropped. A rule step's ratio is its time over the mean of
the native steps just before and after its pair, so a stall of a shared machine that spans
them cancels; each rule's ratio is the median of these over the rounds (the ratio of the
median step times is reported too).

Memory, per rule:
  saved: bytes of the distinct storages saved for backward during one forward
      (torch.autograd.graph.saved_tensors_hooks), the model's own parameters and buffers
      excepted: what a step holds between forward and backward beyond the model.
  state: the rule's feedback buffers and parameters (`rule.state` on every layer).
  optim: optimiser state beyond native's (kp's B gets a momentum buffer).
  peak: CUDA: torch.cuda.max_memory_allocated during one step, above what was allocated
      before it. CPU (with --rss): peak RSS of a fresh process that builds the model and runs
      a few steps at the largest size, minus native's.

    python benchmarks/step_time.py --sizes 64 96 --batch 32 --repeats 9 --threads 1 --rss
    python benchmarks/step_time.py --device cuda --sizes 128 224 --repeats 20
    python benchmarks/step_time.py --device cuda --sizes 224 --batch 256 --amp bf16 --channels-last
    python benchmarks/step_time.py --model resnet18-unshared --sizes 32 --batch 16 --threads 1
    python benchmarks/step_time.py --model vit --sizes 32 --batch 32 --threads 1

About 6-9 minutes for the first on 2 shared cores (ResNet-18 steps of 0.7 s and 1.4 s).
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled
import biograd
from biograd._machine import cpu_name

NATIVE = "native"
#: the variant --floor adds: native with every layer under a minimal autograd Function
FLOOR = "minimal Function"
CLOCKS = ("wall", "cpu")
MiB = 2**20


MODELS = ("resnet18", "resnet18-narrow", "resnet18-unshared", "vit")
#: the first stage's width of resnet18-narrow (torchvision's resnet18: 64)
NARROW = 8


def narrow_resnet18(classes: int, width: int = NARROW) -> torch.nn.Module:
    """torchvision's ResNet-18, its 21 convolutions and classifier, at stage widths w, 2w, 4w,
    8w (w = 64 is resnet18 itself): the same layers and kernel calls per step with 1/64 of the
    weights at w = 8, so that a step's time is the layers' host cost, not passes over W."""
    block = torchvision.models.resnet.BasicBlock
    net = torchvision.models.resnet18(weights=None, num_classes=classes)
    net.inplanes = width
    net.conv1 = torch.nn.Conv2d(3, width, 7, 2, 3, bias=False)
    net.bn1 = torch.nn.BatchNorm2d(width)
    for i, name in enumerate(("layer1", "layer2", "layer3", "layer4")):
        setattr(net, name, net._make_layer(block, width * 2**i, 2, stride=1 if i == 0 else 2))
    net.fc = torch.nn.Linear(width * 8, classes)
    for m in net.modules():  # torchvision's initialisation
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return net


def build(rule: str, seed: int = 0, model: str = "resnet18", classes: int = 1000,
          size: int = 64) -> torch.nn.Module:
    """`model` (random weights, `classes` outputs, for size×size inputs), on `rule`
    everywhere; NATIVE: untouched."""
    torch.manual_seed(seed)
    if model == "resnet18-narrow":
        net = narrow_resnet18(classes)
    elif model == "vit":
        net = torchvision.models.VisionTransformer(
            image_size=size, patch_size=4, num_layers=4, num_heads=3, hidden_dim=192,
            mlp_dim=768, num_classes=classes)
    else:
        net = torchvision.models.resnet18(weights=None, num_classes=classes)
    if model == "resnet18-unshared":
        biograd.unshare(net, torch.zeros(1, 3, size, size))
    if rule == FLOOR:
        minimal(net)
    elif rule != NATIVE:
        biograd.convert(net, rule, seed=seed)
    return net


def minimal(net: torch.nn.Module) -> None:
    """In place: every Conv2d and Linear of `net` under layer_cost.py's minimal autograd
    Function (torch's op forward, one backward call with W): the floor of a rule's layer
    written as a Function."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from layer_cost import Minimal

    for module in list(net.modules()):
        for name, child in module.named_children():
            if isinstance(child, (torch.nn.Conv2d, torch.nn.Linear)):
                setattr(module, name, Minimal(child))


class Variant:
    """A model, its optimiser and one training step."""

    def __init__(self, rule: str, device: torch.device, amp: str = "none",
                 channels_last: bool = False, compile: bool = False,
                 compile_mode: str = "default", model: str = "resnet18", classes: int = 1000,
                 size: int = 64, fused: bool = False):
        self.rule = rule
        self.device = device
        self.amp = amp
        self.model = build(rule, model=model, classes=classes, size=size).to(device).train()
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # the step runs the compiled model; memory is read from the eager one
        self.runner = torch.compile(self.model, mode=compile_mode) if compile else self.model
        # torch's default SGD (fused None) is its foreach form; fused=True its one-call form
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9,
                                   weight_decay=1e-4, fused=fused or None)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16,
                              enabled=self.amp == "bf16")

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """A step's first part: zero_grad, then the forward and its loss."""
        self.opt.zero_grad(set_to_none=True)
        biograd.targets(self.runner, y)  # drtp's; a no-op for every other rule
        with self.autocast():
            return F.cross_entropy(self.runner(x), y)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.loss(x, y).backward()
        self.opt.step()
        biograd.after_step(self.model)

    def state_bytes(self) -> int:
        """Bytes of the rule's feedback state (buffers and parameters named in rule.state)."""
        total = 0
        for _, layer in biograd.feedback_layers(self.model):
            for name in layer.learning_rule.state:
                t = getattr(layer, name)
                total += t.numel() * t.element_size()
        source = self.model.__dict__.get("_biograd_error_source")  # dfa's (drtp's...) table
        if source is not None:
            total += sum(t.numel() * t.element_size() for t in source.tables.values())
        return total

    def optim_bytes(self) -> int:
        return sum(
            t.numel() * t.element_size()
            for s in self.opt.state.values()
            for t in s.values()
            if isinstance(t, torch.Tensor)
        )

    def saved_bytes(self, x: torch.Tensor, y: torch.Tensor) -> int:
        """Bytes of the distinct storages autograd saves for backward in one forward, not
        counting the model's own parameters and buffers (they are held anyway)."""
        own = {t.untyped_storage().data_ptr()
               for t in [*self.model.parameters(), *self.model.buffers()]}
        storages: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            s = t.untyped_storage()
            if s.data_ptr() not in own:
                storages[s.data_ptr()] = s.nbytes()
            return t

        self.opt.zero_grad(set_to_none=True)
        biograd.targets(self.model, y)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), self.autocast():
            loss = F.cross_entropy(self.model(x), y)
        loss.backward()  # frees the graph; no optimiser step, so the weights do not change
        self.opt.zero_grad(set_to_none=True)
        return sum(storages.values())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def batch(size: int, n: int, device: torch.device, channels_last: bool = False,
          classes: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(size)
    x = torch.randn(n, 3, size, size, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x.to(device), y.to(device)


def timed_step(v: Variant, x, y) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one step."""
    sync(v.device)
    t0, c0 = time.perf_counter(), time.process_time()
    v.step(x, y)
    sync(v.device)
    return time.perf_counter() - t0, time.process_time() - c0


Series = dict[str, list[float]]
Times = dict[str, dict[str, list[float]]]  # clock -> rule -> seconds


def time_interleaved(native: Variant, rules: list[Variant], x, y, warmup: int, repeats: int,
                     group: int) -> tuple[Times, Times]:
    """Interleaved step times: each round is N r1 r2 N r3 r4 N ... N (`group` rules between
    native steps, the rule order rotated every round).

    Returns, per clock ("wall", "cpu"), every variant's step times and each rule step's ratio
    over the mean of the two native steps around its group: a stall that spans a group
    cancels out.
    """
    names = [NATIVE] + [v.rule for v in rules]
    times: Times = {c: {r: [] for r in names} for c in CLOCKS}
    ratios: Times = {c: {r: [] for r in names[1:]} for c in CLOCKS}
    n = len(rules)
    for r in range(warmup + repeats):
        order = rules[r % n:] + rules[:r % n]
        keep = r >= warmup
        before = timed_step(native, x, y)
        got = []
        for i in range(0, n, group):
            got = [(v.rule, timed_step(v, x, y)) for v in order[i:i + group]]
            after = timed_step(native, x, y)
            for k, clock in enumerate(CLOCKS if keep else ()):
                if i == 0:
                    times[clock][NATIVE].append(before[k])
                times[clock][NATIVE].append(after[k])
                for rule, t in got:
                    times[clock][rule].append(t[k])
                    ratios[clock][rule].append(2 * t[k] / (before[k] + after[k]))
            before = after
        print(f"  round {r + 1}/{warmup + repeats}", end="\r", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return times, ratios


def quartiles(xs: list[float]) -> tuple[float, float, float]:
    if len(xs) < 2:
        return xs[0], xs[0], xs[0]
    q1, q2, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return q1, q2, q3


def cuda_peak(v: Variant, x, y) -> int:
    """Peak bytes allocated during one step, above what was allocated before it."""
    sync(v.device)
    before = torch.cuda.memory_allocated(v.device)
    torch.cuda.reset_peak_memory_stats(v.device)
    v.step(x, y)
    sync(v.device)
    return torch.cuda.max_memory_allocated(v.device) - before


def rss_child(rule: str, size: int, n: int, steps: int, model: str, classes: int) -> None:
    """Run in a fresh process: build, run `steps` steps, print peak RSS in bytes."""
    v = Variant(rule, torch.device("cpu"), model=model, classes=classes, size=size)
    x, y = batch(size, n, torch.device("cpu"), classes=classes)
    for _ in range(steps):
        v.step(x, y)
    # VmHWM, not getrusage's ru_maxrss: that one keeps the parent's peak across fork + exec.
    status = Path("/proc/self/status").read_text()
    hwm = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
    print(int(hwm.split()[1]) * 1024)  # kB


def rss_of(rule: str, size: int, n: int, threads: int, model: str, classes: int) -> int:
    cmd = [sys.executable, __file__, "--rss-child", rule, "--sizes", str(size),
           "--batch", str(n), "--threads", str(threads), "--model", model,
           "--classes", str(classes)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return int(out.strip().splitlines()[-1])


def machine() -> dict[str, str | int]:
    info: dict[str, str | int] = {
        "cpu": cpu_name(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def at_least(low: int):
    """An argparse type: an integer >= low (a bad value is argparse's one-line error, not a
    traceback or an empty median later)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"an integer >= {low}, not {text!r}")
        return value
    return parse


def timing_args(p: argparse.ArgumentParser, repeats: int) -> argparse.ArgumentParser:
    """The options a benchmark of interleaved rounds over the rules shares (sequence_cost.py,
    spiking_cost.py): --repeats, --warmup, --rules, --threads, --json. Returns `p`."""
    p.add_argument("--repeats", type=at_least(1), default=repeats, help="timed rounds")
    p.add_argument("--warmup", type=at_least(0), default=1, help="discarded rounds")
    p.add_argument("--rules", nargs="+", default=None, choices=biograd.list_rules(),
                   metavar="RULE", help="default: all registered")
    p.add_argument("--threads", type=int, default=None, help="torch threads (1 on a shared "
                   "CPU: CPU-time ratios are then immune to being descheduled)")
    p.add_argument("--json", type=Path, default=None, help="write all results here")
    return p


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=at_least(1), nargs="+", default=[64, 96],
                   help="input heights = widths (default: 64 96)")
    p.add_argument("--batch", type=at_least(1), default=32)
    p.add_argument("--model", choices=MODELS, default="resnet18",
                   help="resnet18 (default), resnet18-narrow (widths 8 to 64: the layers' host "
                   "cost), resnet18-unshared or vit (one --sizes for these two)")
    p.add_argument("--classes", type=at_least(1), default=1000,
                   help="the model's outputs (default 1000; dfa's projection scales with it)")
    p.add_argument("--repeats", type=at_least(1), default=9, help="timed rounds per size")
    p.add_argument("--warmup", type=at_least(0), default=1, help="discarded rounds per size")
    p.add_argument("--group", type=at_least(1), default=2,
                   help="rule steps between two native steps in a round (default 2)")
    p.add_argument("--rules", nargs="+", default=None, choices=biograd.list_rules(),
                   metavar="RULE",
                   help=f"default: all registered ({' '.join(biograd.list_rules())})")
    p.add_argument("--floor", action="store_true",
                   help=f"time a variant '{FLOOR}' too: native with every Conv2d and Linear "
                   f"under a minimal autograd Function (layer_cost.py's), a Function's floor")
    p.add_argument("--each", type=at_least(1), nargs="?", const=1, default=0, metavar="N",
                   help="time every rule in processes of its own beside native, N of them "
                   "(default 1), reporting the process of median ratio (short steps: many "
                   "models in one process bias the ratios, and processes differ)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: torch's); on a shared CPU, 1 avoids the "
                   "stalls of OpenMP threads waiting for a descheduled sibling")
    p.add_argument("--amp", choices=("none", "bf16"), default="none",
                   help="bf16: forward under torch.autocast (every variant alike)")
    p.add_argument("--channels-last", action="store_true",
                   help="models and inputs in channels_last memory format")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile every variant's model (the warm-up rounds compile)")
    p.add_argument("--compile-mode", default="default",
                   choices=("default", "reduce-overhead", "max-autotune"),
                   help="torch.compile's mode (reduce-overhead: CUDA graphs)")
    p.add_argument("--fused", action="store_true",
                   help="SGD(fused=True) for every variant, torch's one-call optimiser step, "
                        "in place of its default foreach form (on the CPU a loop over the "
                        "tensors, op by op)")
    p.add_argument("--rss", action="store_true",
                   help="CPU: also the peak RSS of a fresh process per rule (largest size)")
    p.add_argument("--json", type=Path, default=None, help="write all results here")
    p.add_argument("--rss-child", default=None, help=argparse.SUPPRESS)
    return p


def main(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.rss_child:
        rss_child(args.rss_child, max(args.sizes), args.batch, 3, args.model, args.classes)
        return {}
    if args.model in ("resnet18-unshared", "vit") and len(args.sizes) != 1:
        raise SystemExit(f"--model {args.model} is built for one input size: give one --sizes")
    device = torch.device(args.device)
    rules = (args.rules or biograd.list_rules()) + ([FLOOR] if args.floor else [])
    command = "python " + shlex.join(sys.argv)
    if args.each and len(rules) > 1:
        return each_alone(args, rules, command)
    if args.compile:
        broken = [r for r in rules if r != FLOOR and biograd.rules.get_rule(r).compile_note]
        if broken and len(rules) > 1:
            # dynamo looks a code object's compiled entries up newest first, and an entry of a
            # model whose graph breaks at its first layer guards only what precedes the
            # break: another converted model compiled before it then matches it and runs in
            # pieces (fa: 1 graph alone, 42 after dfa's compile, ResNet-18, torch 2.14)
            raise SystemExit(f"--compile: {', '.join(broken)} "
                             f"{'breaks' if len(broken) == 1 else 'break'} the graph at each layer "
                             f"and slow every converted model compiled beside them: time each "
                             f"alone (--rules {broken[0]}), or all of them with "
                             f"benchmarks/compile_cpu.py (one process per rule)")
        # every variant is alive at once, so each is a cache entry of the same code (ResNet's
        # forward), and dfa's graph breaks make each of its layer shapes one of the layers'
        # code: past torch's default of 8 the rest would silently run eagerly. Room for all,
        # and an error rather than an eager fallback should a variant still run out of it.
        torch._dynamo.config.recompile_limit = 64
        torch._dynamo.config.fail_on_recompile_limit_hit = True
    variants = [Variant(r, device, args.amp, args.channels_last, args.compile,
                        args.compile_mode, args.model, args.classes, max(args.sizes),
                        args.fused)
                for r in [NATIVE, *rules]]

    result: dict = {"machine": machine(), "command": command, "batch": args.batch,
                    "model": args.model, "classes": args.classes,
                    "amp": args.amp, "channels_last": args.channels_last,
                    "compile": args.compile and args.compile_mode,
                    "optimizer": "SGD fused" if args.fused else "SGD foreach",
                    "sizes": {}, "memory": {}}
    for size in args.sizes:
        x, y = batch(size, args.batch, device, args.channels_last, args.classes)
        print(f"batch {args.batch} at {size}x{size}", file=sys.stderr)
        times, ratios = time_interleaved(
            variants[0], variants[1:], x, y, args.warmup, args.repeats, args.group)
        out: dict = {}
        for clock in CLOCKS:
            base = statistics.median(times[clock][NATIVE])
            for rule, t in times[clock].items():
                q1, q2, q3 = quartiles(ratios[clock][rule]) if rule != NATIVE else (1, 1, 1)
                out.setdefault(rule, {})[clock] = {
                    "median_s": statistics.median(t), "ratio": q2, "ratio_q1": q1,
                    "ratio_q3": q3, "ratio_of_medians": statistics.median(t) / base,
                    "times_s": t, "ratios": ratios[clock].get(rule, [])}
        result["sizes"][size] = out

    x, y = batch(max(args.sizes), args.batch, device, args.channels_last, args.classes)
    native = variants[0]
    for v in variants:
        mem = {"saved": v.saved_bytes(x, y), "state": v.state_bytes(),
               "optim": v.optim_bytes() - native.optim_bytes()}
        if device.type == "cuda":
            mem["peak"] = cuda_peak(v, x, y)
        result["memory"][v.rule] = mem
    if args.rss and device.type == "cpu":
        for r in [NATIVE, *rules]:
            result["memory"][r]["rss"] = rss_of(r, max(args.sizes), args.batch,
                                                torch.get_num_threads(), args.model,
                                                args.classes)
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


def each_alone(args: argparse.Namespace, rules: list[str], command: str) -> dict:
    """--each N: every rule timed in N processes of its own beside native (the floor beside
    bp), merged into one result: per rule the process of median CPU-time ratio, with every
    process's ratio in "process_ratios". A process that holds many models biases short steps:
    on resnet18-narrow at 2×16², 17 variants in one process read bp 1.05 against 1.00 alone,
    the native model, run every other step, staying the warmer in the caches; and processes
    of the same code differ by a few hundredths there."""
    base = ["--sizes", *map(str, args.sizes), "--batch", str(args.batch), "--model", args.model,
            "--classes", str(args.classes), "--repeats", str(args.repeats), "--warmup",
            str(args.warmup), "--group", str(args.group), "--device", args.device, "--amp",
            args.amp, "--compile-mode", args.compile_mode,
            *(["--threads", str(args.threads)] if args.threads else []),
            *[flag for flag, on in (("--channels-last", args.channels_last),
                                    ("--compile", args.compile), ("--rss", args.rss),
                                    ("--fused", args.fused)) if on]]
    result: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rule in rules:
            runs = []
            for k in range(args.each):
                print(f"{rule}, process {k + 1} of {args.each}", file=sys.stderr)
                out = Path(tmp) / "one.json"
                alone = ["--rules", "bp", "--floor"] if rule == FLOOR else ["--rules", rule]
                subprocess.run([sys.executable, __file__, *base, *alone, "--json", str(out)],
                               check=True)
                runs.append(json.loads(out.read_text()))
            if not result:
                result = {**runs[0], "command": command, "sizes": {}, "memory": {
                    NATIVE: runs[0]["memory"][NATIVE]}, "each": args.each}
            for size in runs[0]["sizes"]:
                ranked = sorted(runs, key=lambda r: r["sizes"][size][rule]["cpu"]["ratio"])
                median = ranked[(len(ranked) - 1) // 2]["sizes"][size]
                got = result["sizes"].setdefault(int(size), {NATIVE: median[NATIVE]})
                got[rule] = {**median[rule], "process_ratios": [
                    r["sizes"][size][rule]["cpu"]["ratio"] for r in runs]}
            result["memory"][rule] = runs[0]["memory"][rule]
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


def table(result: dict) -> str:
    sizes = list(result["sizes"])
    n = result["batch"]
    mem = result["memory"]
    big = max(sizes)
    peak = "peak" if "peak" in mem[NATIVE] else "rss" if "rss" in mem[NATIVE] else None
    head = ["rule"]
    for s in sizes:
        head += [f"{n}×{s}² wall: ratio (IQR) [of medians]", f"{n}×{s}² CPU time: ratio (IQR)"]
    head += [f"saved for backward MiB ({big}²)", "feedback state MiB", "optimiser extra MiB"]
    if peak:
        head.append(f"{'CUDA step peak' if peak == 'peak' else 'peak RSS'} MiB vs native")
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for rule in result["sizes"][sizes[0]]:
        cells = [rule]
        for s in sizes:
            for clock in CLOCKS:
                r = result["sizes"][s][rule][clock]
                if rule == NATIVE:
                    cells.append(f"1 ({r['median_s'] * 1e3:.0f} ms)")
                    continue
                cell = f"**{r['ratio']:.3f}** ({r['ratio_q1']:.3f}–{r['ratio_q3']:.3f})"
                if clock == "wall":
                    cell += f" [{r['ratio_of_medians']:.3f}]"
                cells.append(cell)
        m = mem[rule]
        cells += [f"{m['saved'] / MiB:.1f}", f"{m['state'] / MiB:.1f}", f"{m['optim'] / MiB:.1f}"]
        if peak:
            cells.append(f"{(m[peak] - mem[NATIVE][peak]) / MiB:+.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    info = result["machine"]
    lines += ["", "machine: " + ", ".join(f"{k} {v}" for k, v in info.items()),
              f"command: `{result['command']}`",
              f"model: {result.get('model', 'resnet18')}, {result.get('classes', 1000)} "
              f"classes; autocast {result.get('amp', 'none')}, "
              f"channels_last {result.get('channels_last', False)}, "
              f"torch.compile {result.get('compile', False)}"
              + (f"; {result['optimizer']}" if "optimizer" in result else ""),
              "ratio: median over timed rounds of (rule step / mean of the native steps around "
              "it); IQR: its quartiles; [of medians]: median rule step / median native step. "
              "CPU time: this process's (time.process_time), immune to being descheduled "
              "on a shared machine; meaningful with --threads 1 on CPU, not on CUDA."]
    return "\n".join(lines)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
