"""What a run writes as it goes: metrics.jsonl, status.json, TensorBoard events, progress.

Only the main process writes. metrics.jsonl has one JSON object per completed epoch; it is
written before the epoch's checkpoint, and on resume the lines past the checkpoint's epoch
are dropped (that epoch is then trained again, identically). angles.jsonl (with
--angle-every N) has the weight angles every N steps, {"step", "epoch", "weight_angles",
"mean_weight_angle"}, "epoch" fractional; it is trimmed on resume the same way.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("biograd")


def _plain(value: Any) -> Any:
    """NaN and infinities as null: metrics.jsonl stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


class RunLog:
    def __init__(self, out: Path, main: bool, tensorboard: bool) -> None:
        self.out, self.main = out, main
        self.metrics_path = out / "metrics.jsonl"
        self.angles_path = out / "angles.jsonl"
        self.writer = None
        if main and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                log.info("tensorboard is not installed: metrics.jsonl only")
            else:
                self.writer = SummaryWriter(str(out / "tensorboard"))

    def truncate(self, last_epoch: int) -> None:
        """Keep only the lines of epochs up to `last_epoch` (the checkpoint's)."""
        for path in (self.metrics_path, self.angles_path):
            if not self.main or not path.exists():
                continue
            lines = path.read_text().splitlines()
            kept = [line for line in lines if json.loads(line)["epoch"] <= last_epoch]
            path.write_text("".join(line + "\n" for line in kept))

    def angles(self, record: dict[str, Any]) -> None:
        """Append one line to angles.jsonl (and TensorBoard, by training step)."""
        if not self.main:
            return
        with open(self.angles_path, "a") as fh:
            fh.write(json.dumps(_plain(record)) + "\n")
        if self.writer is not None and record["mean_weight_angle"] is not None:
            self.writer.add_scalar("step/mean_weight_angle", record["mean_weight_angle"],
                                   record["step"])

    def epoch(self, metrics: dict[str, Any]) -> None:
        if not self.main:
            return
        with open(self.metrics_path, "a") as fh:
            fh.write(json.dumps(_plain(metrics)) + "\n")
        if self.writer is not None:
            step = metrics["epoch"]
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and key != "epoch":
                    self.writer.add_scalar(key, value, step)
            for group in ("weight_angles", "gradient_angles"):
                for layer, value in metrics.get(group, {}).items():
                    self.writer.add_scalar(f"{group}/{layer}", value, step)
            self.writer.flush()

    def status(self, status: str, message: str = "") -> None:
        if self.main:
            (self.out / "status.json").write_text(
                json.dumps({"status": status, "message": message}) + "\n")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def progress(items: Iterable, total: int, desc: str, mode: str, main: bool) -> Iterator:
    """A progress bar on a terminal, a few plain lines otherwise, nothing off the main rank."""
    if not main or mode == "none":
        yield from items
        return
    if mode == "bar" or (mode == "auto" and sys.stderr.isatty()):
        from tqdm import tqdm

        yield from tqdm(items, total=total, desc=desc, leave=False, dynamic_ncols=True)
        return
    every = max(1, total // 4)
    for i, item in enumerate(items, 1):
        yield item
        if i % every == 0 or i == total:
            log.info("%s: step %d/%d", desc, i, total)
