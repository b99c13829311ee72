"""Distributed set-up from torchrun's environment alone (RANK, WORLD_SIZE, LOCAL_RANK).

Without those variables everything runs in one process. gloo on the CPU, nccl on CUDA.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """True on the process that alone writes logs and checkpoints."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device: torch.device) -> Dist:
    """Join the process group torchrun describes, or run alone."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return Dist()
    info = Dist(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(minutes=30))
    return info


def pick_device(name: str, local_rank: int) -> torch.device:
    """auto: this process's GPU when there is one, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            from biograd.errors import UsageError

            raise UsageError("--device cuda, but torch sees no GPU: use --device cpu")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def all_reduce_sum(values: list[float], device: torch.device, info: Dist) -> list[float]:
    """Sum a few numbers over all processes (identity when running alone)."""
    return _all_reduce(values, device, info, dist.ReduceOp.SUM)


def all_reduce_max(values: list[float], device: torch.device, info: Dist) -> list[float]:
    """The largest of a few numbers over all processes (identity when running alone)."""
    return _all_reduce(values, device, info, dist.ReduceOp.MAX)


def _all_reduce(values: list[float], device: torch.device, info: Dist, op) -> list[float]:
    if not info.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=op)
    return t.tolist()


def gather_objects(obj: object, info: Dist) -> list[object]:
    """[obj of rank 0, obj of rank 1, ...] on every process ([obj] when running alone)."""
    if not info.enabled:
        return [obj]
    out: list[object] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def share(obj: object, info: Dist) -> object:
    """Rank 0's `obj`, on every process (obj itself when running alone)."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(info: Dist) -> None:
    """Wait for every process (nothing when running alone)."""
    if info.enabled:
        dist.barrier()


def broadcast_buffers(model: torch.nn.Module, skip: set[str], info: Dist) -> None:
    """Send rank 0's buffers (BatchNorm statistics) to every rank, but not those in `skip`
    (feedback, which every rank derives alike): before evaluation, so that every rank scores
    its shard with the model rank 0 saves."""
    if not info.enabled:
        return
    for name, buffer in model.named_buffers():
        if name not in skip:
            dist.broadcast(buffer, 0)
