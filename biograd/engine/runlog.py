"""What a run writes as it goes: metrics.jsonl, status.json, TensorBoard events, progress.

Only the main process writes. metrics.jsonl has one JSON object per completed epoch; it is
written before the epoch's checkpoint, and on resume the lines past the checkpoint's epoch
are dropped (that epoch is then trained again, identically). angles.jsonl (with
--angle-every N) has the weight angles every N steps, {"step", "epoch", "weight_angles",
"mean_weight_angle", "weight_kurtosis"}, "epoch" fractional; it is trimmed on resume the same
way.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

#: How log lines look, on the terminal and in RUN/train.log: time, level, message.
LOG_FORMAT, LOG_DATES = "%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"

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
        self.current: str | None = None  # the status this process last wrote
        if main and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                log.info("tensorboard is not installed: metrics.jsonl only")
            else:
                self.writer = SummaryWriter(str(out / "tensorboard"))

    def truncate(self, last_epoch: int) -> None:
        """Keep only the lines of epochs up to `last_epoch` (the checkpoint's); a line a
        killed process left half-written goes too."""
        for path in (self.metrics_path, self.angles_path):
            if not self.main or not path.exists():
                continue
            kept = []
            for line in path.read_text().splitlines():
                try:
                    if json.loads(line)["epoch"] <= last_epoch:
                        kept.append(line)
                except (ValueError, KeyError, TypeError):
                    log.warning("%s: dropped a line cut short: %.60s", path, line)
            path.write_text("".join(line + "\n" for line in kept))

    def start(self) -> None:
        """A fresh start in a folder a run stopped in before its first checkpoint: the step
        angles it left are not this run's."""
        if self.main:
            self.angles_path.unlink(missing_ok=True)

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

    def environment(self, device, dist, command: list[str] | None = None) -> None:
        """Append what this start of the run ran on to environment.jsonl: the command line,
        versions, the device actually used, the world size, the git commit of biograd's
        checkout when it is one."""
        if not self.main:
            return
        import platform
        import subprocess
        import time

        import torch

        import biograd
        from biograd._machine import cpu_name

        try:
            commit = subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=Path(biograd.__file__).parent,
                capture_output=True, text=True, timeout=10).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            commit = None
        record = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": command or sys.argv,
            "biograd": biograd.__version__, "git_commit": commit,
            "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "device": str(device),
            "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                            else cpu_name()),
            "world_size": dist.world_size, "threads": torch.get_num_threads(),
        }
        with open(self.out / "environment.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")

    def status(self, status: str, message: str = "") -> None:
        self.current = status
        if self.main:
            (self.out / "status.json").write_text(
                json.dumps({"status": status, "message": message}) + "\n")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class Progress:
    """The batches of an epoch, with the epoch's progress shown: a bar on a terminal (mode
    "auto" or "bar"), log lines at each `report` otherwise ("auto" off a terminal, "lines"),
    nothing with "none" or off the main rank."""

    def __init__(self, items: Iterable, total: int, desc: str, mode: str, main: bool) -> None:
        self.items, self.bar = items, None
        self.lines = main and (mode == "lines" or (mode == "auto" and not sys.stderr.isatty()))
        if main and (mode == "bar" or (mode == "auto" and sys.stderr.isatty())):
            from tqdm import tqdm

            self.bar = tqdm(items, total=total, desc=desc, leave=False, dynamic_ncols=True)

    def __iter__(self) -> Iterator:
        return iter(self.bar if self.bar is not None else self.items)

    def report(self, line: str, short: str) -> None:
        """One log line (lines mode), or the bar's postfix (bar mode)."""
        if self.bar is not None:
            self.bar.set_postfix_str(short, refresh=False)
        elif self.lines:
            log.info("%s", line)
