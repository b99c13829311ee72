"""Checkpoints that are never half-written and load with weights_only=True.

A checkpoint holds the model (feedback state included), optimiser, scheduler, AMP scaler,
every random stream, the epoch and the resolved config. It is written to a temporary file in
the same folder, flushed to disk, then renamed over the old one: a run killed while saving
leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from biograd.errors import UsageError

NAME = "checkpoint.pt"  # the latest epoch's, to resume from
BEST = "best.pt"  # the model of the epoch with the best validation score (top-1, or AP)


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save to `path` via a temporary file and a rename (atomic on POSIX)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load(path: Path, device: torch.device) -> dict[str, Any]:
    """A checkpoint, with weights_only=True; a one-line error if it is unreadable."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise UsageError(f"no checkpoint at {path}: nothing to resume") from None
    except pickle.UnpicklingError as err:  # torch's advice (weights_only=False) is not ours
        found = re.search(r"WeightsUnpickler error:\s*(.+)", str(err))
        raise UsageError(
            f"cannot read checkpoint {path}: not a file of tensors that torch.load reads with "
            f"weights_only=True ({found.group(1).strip() if found else 'unpickling failed'}): "
            f"give a biograd checkpoint, a state dict of tensors or a .safetensors file "
            f"(biograd never runs code a file holds)") from None
    except Exception as err:  # a truncated or foreign file: say which, never a traceback
        raise UsageError(f"cannot read checkpoint {path}: {type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}") from None


def rng_state() -> dict[str, Any]:
    """Every random stream the training touches, as tensors and plain values."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": [py_version, list(py_internal), py_gauss],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
