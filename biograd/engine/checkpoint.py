"""Checkpoints that are never half-written and load with weights_only=True, and weights
loaded from one (or a state dict, or a .safetensors file) into a model.

A checkpoint holds the model (feedback state included), optimiser, scheduler, AMP scaler,
every random stream, the epoch and the resolved config. It is written to a temporary file in
the same folder, flushed to disk, then renamed over the old one: a run killed while saving
leaves the previous checkpoint intact.
"""

from __future__ import annotations

import logging
import os
import pickle
import random
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

import biograd
from biograd.errors import UsageError

if TYPE_CHECKING:
    from biograd.config import RunConfig

log = logging.getLogger("biograd")

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


def load_weights(model: nn.Module, path: str | Path, device: torch.device,
                 cfg: RunConfig | None = None) -> None:
    """Weights from `path` into `model`, in place: a torch or biograd state dict, a biograd
    checkpoint (its "model"), or a .safetensors file. Weights only: a file's feedback state
    (of whichever rule) and Dale signs are left out, the feedback is derived from the loaded
    weights with the run's seed, as converting after loading would, and under cfg.dale the
    loaded weights take the run's Dale signs, as biograd.dale gives them. Every other tensor
    must fit (strict)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--init-checkpoint: no file {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(path, device=str(device))
    else:
        state = load(path, device)
        state = state.get("model", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise UsageError(f"--init-checkpoint: {path} holds no state dict")
    own = {name for name, _ in biograd.feedback_layers(model)}
    derived = {name for rule in biograd.list_rules() for name in biograd.get_rule(rule).state}
    derived |= {"feedback_seed", "_extra_state"}

    def weights_only(key: str) -> bool:
        owner, _, leaf = key.rpartition(".")
        return not (leaf == "dale_sign" or (owner in own and leaf in derived))

    kept = {k: v for k, v in state.items() if weights_only(k)}
    try:
        missing, unexpected = model.load_state_dict(kept, strict=False)
        lacking = [k for k in missing if weights_only(k)]
        if lacking or unexpected:  # the first few keys of each, whole, and how many more
            raise RuntimeError("\n" + "; ".join(
                f"{len(keys)} {what} key(s): {', '.join(keys[:4])}"
                + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")
                for what, keys in (("missing", lacking), ("unexpected", unexpected)) if keys))
    except RuntimeError as err:  # torch's size mismatches: the first, a line of its own
        detail = next((line.strip() for line in str(err).splitlines()[1:] if line.strip()), "")
        raise UsageError(f"--init-checkpoint: {path} does not fit the model ({detail})"
                         ) from None
    if cfg is not None and getattr(cfg, "dale", None) is not None:
        biograd.dale(model, cfg.dale, seed=cfg.seed, balance=cfg.dale_balance)
    log.info("weights from %s (%d tensors; feedback derived from them)", path, len(kept))
