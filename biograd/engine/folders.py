"""The checks a run folder passes before training starts: a folder that can be made, no run
overwritten, no resume of what is not there, and no resume with a changed recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from biograd.config import RESUMABLE, RunConfig, comparable
from biograd.engine import checkpoint, distributed
from biograd.errors import UsageError


def check_folder(out: Path, flag: str = "--out") -> None:
    """A one-line UsageError where `out` cannot be a folder: it, or a folder above it, is a
    file."""
    for path in (out, *out.parents):
        if path.exists():
            if not path.is_dir():
                raise UsageError(f"{flag} {out}: {path} is a file, not a folder: choose "
                                 f"another folder")
            return


def make_folder(out: Path, flag: str = "--out") -> None:
    """mkdir -p `out`, with a one-line UsageError where it cannot be made."""
    check_folder(out, flag)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"{flag} {out}: the folder cannot be made ({err.strerror or err}): "
                         f"choose another folder") from None


def check_out(cfg: RunConfig, out: Path) -> None:
    """Refuse to overwrite a run; refuse to resume what is not there."""
    check_folder(out)
    ckpt = out / checkpoint.NAME
    if not cfg.resume and (ckpt.exists() or (out / "metrics.jsonl").exists()):
        raise UsageError(f"{out} already holds a run: pass --resume to continue it, or "
                         f"choose another --out")
    if cfg.resume and not ckpt.exists():
        raise UsageError(f"--resume: no checkpoint in {out}; start without --resume")


def check_compatible(cfg: RunConfig, state: dict[str, Any], out: Path,
                     dist: distributed.Dist) -> bool:
    """Refuse a resume whose recipe differs from the checkpoint's. Another world size, batch
    size or number of epochs changes the schedule's shape: refused too unless
    cfg.accept_changes; returns True when the shape changed (and was accepted)."""
    saved, now = comparable(state["config"]), comparable(cfg.to_dict())
    changed = sorted(k for k, v in now.items()
                     if k not in RESUMABLE | {"epochs", "batch_size"} and saved.get(k) != v)
    if changed:
        diffs = ", ".join(f"{k}={saved.get(k)!r} (now {now[k]!r})" for k in changed)
        raise UsageError(f"--resume: {out} was trained with {diffs}; drop the changed options "
                         f"or choose another --out")
    shape = []
    if saved.get("epochs") != cfg.epochs:
        shape.append(f"epochs={saved.get('epochs')} (now {cfg.epochs})")
    world, batch = state.get("world_size", 1), saved.get("batch_size", cfg.batch_size)
    if (world, batch) != (dist.world_size, cfg.batch_size):  # the steps per epoch change
        shape.append(f"{world} process{'es' if world != 1 else ''} × batch {batch}, a global "
                     f"batch of {world * batch} "
                     f"(now {dist.world_size} × {cfg.batch_size}, "
                     f"{dist.world_size * cfg.batch_size})")
    if shape and not cfg.accept_changes:
        raise UsageError(f"--resume: {out} was trained with {'; '.join(shape)}: pass "
                         f"--accept-changes to continue with the schedule recomputed for the "
                         f"new shape, or resume as it was")
    return bool(shape)
