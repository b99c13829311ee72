"""DDP on gloo ranks (CPU, loopback): what each rule costs in throughput and in bytes sent.

For every rule and native, a torchvision ResNet-18 is trained under DistributedDataParallel
as biograd's engine wraps it (feedback buffers excluded from DDP's buffer sync). Each variant
records, per step, the bytes DDP all-reduces (its gradient buckets, counted in a comm hook) and
the bytes it broadcasts (buffers, counted where DDP calls torch.distributed), and its
throughput: images per second over all ranks, median of interleaved rounds. The driver runs
the same worker on 1 rank and on `--ranks` ranks at the same per-rank batch and prints the
scaling (throughput on N ranks / on 1) of each rule beside native's.

    python benchmarks/ddp.py --ranks 2 --size 32 --batch 16
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
NATIVE = "native"


def worker(args: argparse.Namespace) -> None:
    import torch.distributed as dist
    import torch.nn.functional as F
    import torchvision
    from torch.nn.parallel import DistributedDataParallel as DDP

    import biograd

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    counted = {"allreduce": 0, "broadcast": 0}
    real_broadcast = dist._broadcast_coalesced

    def broadcast(group, tensors, *rest):
        counted["broadcast"] += sum(t.numel() * t.element_size() for t in tensors)
        return real_broadcast(group, tensors, *rest)

    dist._broadcast_coalesced = broadcast

    def allreduce(state, bucket):
        counted["allreduce"] += bucket.buffer().numel() * bucket.buffer().element_size()
        tensor = bucket.buffer().div_(world)
        return dist.all_reduce(tensor, async_op=True).get_future().then(lambda f: f.value()[0])

    variants = {}
    for rule in [NATIVE, *args.rules]:
        torch.manual_seed(0)
        model = torchvision.models.resnet18(num_classes=10)
        if rule != NATIVE:
            biograd.convert(model, rule, seed=0)
            if not args.sync_feedback:
                biograd.exclude_feedback_from_ddp(model)
        ddp = DDP(model)
        ddp.register_comm_hook(None, allreduce)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        variants[rule] = (ddp, model, opt)
    torch.manual_seed(rank)
    x = torch.randn(args.batch, 3, args.size, args.size)
    y = torch.randint(0, 10, (args.batch,))

    def steps(rule: str, n: int) -> None:
        ddp, model, opt = variants[rule]
        for _ in range(n):
            biograd.targets(ddp, y)  # drtp's; a no-op for every other rule
            F.cross_entropy(ddp(x), y).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            biograd.after_step(model)

    for rule in variants:
        steps(rule, 1)  # warm up: buckets are rebuilt after the first step
    sent, rates = {}, {rule: [] for rule in variants}
    for rule in variants:
        counted.update(allreduce=0, broadcast=0)
        steps(rule, 1)
        sent[rule] = dict(counted)
    order = list(variants)
    for r in range(args.rounds):
        k = r % len(order)
        for rule in order[k:] + order[:k]:
            dist.barrier()
            start = time.perf_counter()
            steps(rule, args.steps)
            dist.barrier()
            rates[rule].append(world * args.batch * args.steps / (time.perf_counter() - start))
    if rank == 0:
        out = {rule: {"images_per_second": statistics.median(rates[rule]), **sent[rule]}
               for rule in variants}
        Path(args.out).write_text(json.dumps(out))
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: argparse.Namespace, ranks: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks),
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), __file__,
               "--worker", "--out", str(out), "--size", str(args.size), "--batch",
               str(args.batch), "--steps", str(args.steps), "--rounds", str(args.rounds),
               *(["--sync-feedback"] if args.sync_feedback else []), "--rules", *args.rules]
        env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
        subprocess.run(cmd, check=True, env=env)
        return json.loads(out.read_text())


def main(args: argparse.Namespace) -> None:
    import biograd
    from biograd._machine import cpu_name

    args.rules = args.rules or biograd.list_rules()
    one, many = launch(args, 1), launch(args, args.ranks)
    mib = 2**20
    lines = [f"| rule | images/s, 1 rank | images/s, {args.ranks} ranks | scaling | scaling / "
             f"native's | all-reduced per step (MiB) | broadcast per step (MiB) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    base = many[NATIVE]["images_per_second"] / one[NATIVE]["images_per_second"]
    for rule in [NATIVE, *args.rules]:
        scale = many[rule]["images_per_second"] / one[rule]["images_per_second"]
        lines.append(f"| {rule} | {one[rule]['images_per_second']:.1f} | "
                     f"{many[rule]['images_per_second']:.1f} | {scale:.2f} | {scale / base:.3f} | "
                     f"{many[rule]['allreduce'] / mib:.1f} | {many[rule]['broadcast'] / mib:.3f} |")
    lines += ["", f"ResNet-18, {args.batch}×{args.size}² per rank, gloo on loopback, one thread "
              f"per rank; median of {args.rounds} interleaved rounds of {args.steps} steps",
              f"machine: {cpu_name()}, torch {torch.__version__}",
              "command: `python " + shlex.join(sys.argv) + "`"]
    print("\n".join(lines))


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--rules", nargs="+", default=None)
    p.add_argument("--sync-feedback", action="store_true",
                   help="leave DDP's default buffer sync on for feedback (what biograd avoids)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    return p


if __name__ == "__main__":
    parsed = get_args_parser().parse_args()
    (worker if parsed.worker else main)(parsed)
