"""`biograd eval`: score a saved model on its validation split, as training scored it.

    biograd eval runs/fm-ss                  # the run's best.pt (else its checkpoint.pt)
    biograd eval runs/fm-ss --checkpoint last
    biograd eval runs/fm-ss/best.pt --data fashion-mnist --data-root /data

The checkpoint holds the config that built the model: the same data, model, rules and
feedback are built again, the saved weights and feedback loaded (strict), and the task's own
evaluation runs (top-1/top-5 and loss; detection: the COCO APs). The numbers are printed and
written beside the checkpoint: eval.json for best.pt, eval-last.json for checkpoint.pt, with
"-DATA" added for another data set, so no evaluation overwrites another.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from biograd.config import DetectConfig, TrainConfig, validate
from biograd.engine import checkpoint, distributed, loop
from biograd.errors import UsageError

log = logging.getLogger("biograd")


def find_checkpoint(target: str | Path, which: str = "best") -> Path:
    """The checkpoint file `target` names: a file, or a run folder's best.pt (`which`
    "best", falling back to checkpoint.pt when no epoch was scored) or checkpoint.pt."""
    path = Path(target)
    if path.is_file():
        return path
    if not path.is_dir():
        raise UsageError(f"{path} is neither a run folder nor a checkpoint file")
    names = [checkpoint.BEST, checkpoint.NAME] if which == "best" else [checkpoint.NAME]
    for name in names:
        if (path / name).is_file():
            return path / name
    raise UsageError(f"{path} holds no {' or '.join(names)}: is it a run folder?")


def evaluate_checkpoint(target: str | Path, *, which: str = "best", data: str | None = None,
                        data_root: str | None = None, device: str = "auto") -> dict[str, Any]:
    """The validation metrics of the model saved at `target` (see the module's doc); also
    written beside the checkpoint (`result_name`: eval.json for best.pt on the run's own data),
    whose path the returned dict gives as "written"."""
    path = find_checkpoint(target, which)
    dev = distributed.pick_device(device, 0)
    state = checkpoint.load(path, dev)
    saved = state.get("config") if isinstance(state, dict) else None
    if not isinstance(saved, dict) or "model" not in state:
        raise UsageError(f"{path} is not a biograd checkpoint (it has no config to build the "
                         f"model from): give a run folder, or its best.pt or checkpoint.pt")
    cls = DetectConfig if "backbone" in saved else TrainConfig
    known = {f.name for f in dataclasses.fields(cls)}
    if data_root and "data_root" not in known:
        raise UsageError("--data-root finds classification data sets; a detection run's data "
                         "is a folder: give it with --data")
    cfg = cls(**{k: v for k, v in saved.items() if k in known})
    # the checkpoint holds every weight: no pretrained file is read; and fp16, which the CPU
    # does not train in, is scored in float32 there
    cfg = dataclasses.replace(cfg, device=device, resume=False, accept_changes=False,
                              tensorboard=False,
                              angle_batch=0, **({"data": data} if data else {}),
                              **({"data_root": data_root} if data_root else {}),
                              **({"pretrained": False} if "pretrained" in known else {}),
                              **({"amp": "none"} if cfg.amp == "fp16" and dev.type == "cpu"
                                 else {}))
    validate(cfg)
    if cls is DetectConfig:
        from biograd.engine.detect import build
    else:
        from biograd.engine.classify import build
    alone = distributed.Dist()
    torch.manual_seed(cfg.seed)
    task = build(cfg, alone, dev)
    try:
        task.model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise UsageError(f"{path}: the saved weights do not fit the model its config builds "
                         f"({str(err).splitlines()[1].strip()})") from None
    loader = loop.make_loader(task, task.val_set, alone, cfg, dev, False, 0)
    ctx = SimpleNamespace(cfg=cfg, dist=alone, device=dev, task=task, model=task.model)
    metrics = task.evaluate(ctx, loader)
    result = {"checkpoint": str(path), "epoch": state.get("epoch"), "data": cfg.data,
              "split": "val", **metrics}
    other_data = data is not None and data != saved.get("data")
    file = path.parent / result_name(path, str(cfg.data) if other_data else None)
    file.write_text(json.dumps(result, indent=1) + "\n")
    return {**result, "written": str(file)}


def result_name(checkpoint_path: Path, other_data: str | None = None) -> str:
    """Where an evaluation is written beside its checkpoint: eval.json for best.pt on the
    run's own data; eval-last.json for checkpoint.pt (eval-NAME.json for another file NAME.pt),
    and "-DATA" added for another data set (a folder's whole path, "/" as "_")."""
    def slug(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)

    name = "eval" + ("" if checkpoint_path.name == checkpoint.BEST else
                     "-last" if checkpoint_path.name == checkpoint.NAME else
                     "-" + slug(checkpoint_path.stem))
    if other_data:
        parts = [p for p in Path(other_data).parts if p not in ("/", "\\")]  # a folder: all
        name += "-" + (slug("_".join(parts)) or "data")
    return name + ".json"
