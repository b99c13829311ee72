"""`biograd train` under torchrun: two gloo ranks on loopback end with identical weights and
feedback, and only rank 0 writes the run folder."""

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

RULES = ["brsf", "kp", "wm"]

WORKER = textwrap.dedent("""
    import os, sys, torch, biograd
    from biograd.config import resolve
    from biograd.engine import classify

    torch.set_num_threads(1)
    out, rank = sys.argv[1], int(os.environ["RANK"])
    torch.manual_seed(1000 + rank)  # feedback must not come from the per-rank stream
    models = []
    convert = biograd.convert
    biograd.convert = lambda *a, **k: models.append(convert(*a, **k)) or models[-1]
    for rule in sys.argv[2:]:
        cfg = resolve(data="digits", model="small_cnn", rule=rule, epochs=2, steps_per_epoch=3,
                      batch_size=16, out=f"{out}/{rule}", progress="none", tensorboard=False,
                      angle_batch=8)
        classify.train(cfg)
        torch.save(models[-1].state_dict(), f"{out}/{rule}-rank{rank}.pt")
    torch.distributed.destroy_process_group()
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(tmp_path: Path, source: str, *args: str) -> None:
    """Run the worker `source` on two gloo ranks on loopback, with tmp_path and `args`."""
    worker = tmp_path / "worker.py"
    worker.write_text(source)
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
           str(worker), str(tmp_path), *args]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def assert_same_on_both_ranks(path0: Path, path1: Path) -> dict:
    """The two ranks' saved state dicts agree on everything but BatchNorm statistics (each
    rank's last forward updates its own); returns rank 0's."""
    a, b = (torch.load(p, weights_only=True) for p in (path0, path1))
    assert a.keys() == b.keys()
    for key in a:
        if key.endswith(("running_mean", "running_var")):
            continue
        assert torch.equal(a[key], b[key]), (path0.name, key)
    return a


def test_two_ranks_end_identical(tmp_path):
    torchrun(tmp_path, WORKER, *RULES)
    for rule in RULES:
        a = assert_same_on_both_ranks(tmp_path / f"{rule}-rank0.pt", tmp_path / f"{rule}-rank1.pt")
        assert any(k.endswith("feedback") or k.endswith("feedback_pool") for k in a), rule
        run = tmp_path / rule
        assert sorted(p.name for p in run.iterdir()) == [
            "checkpoint.pt", "config.yaml", "metrics.jsonl", "status.json"]


DETECT_WORKER = textwrap.dedent("""
    import os, sys, torch
    from biograd.config import DetectConfig, resolve
    from biograd.detection import model as detection_model
    from biograd.engine import detect

    torch.set_num_threads(1)
    out, rank = sys.argv[1], int(os.environ["RANK"])
    torch.manual_seed(1000 + rank)
    models = []
    convert = detection_model.convert
    detection_model.convert = lambda *a, **k: models.append(convert(*a, **k)) or models[-1]
    cfg = resolve(None, DetectConfig, data=f"{out}/shapes", rule="wm", epochs=1, steps_per_epoch=2,
                  batch_size=2, min_size=64, max_size=64, fpn_channels=32, angle_batch=2,
                  out=f"{out}/run", progress="none", tensorboard=False)
    detect.train(cfg)
    torch.save(models[-1].state_dict(), f"{out}/rank{rank}.pt")
    torch.distributed.destroy_process_group()
""")


def test_two_ranks_detect_and_evaluate_together(tmp_path):
    """RetinaNet under torchrun: identical weights and feedback on both ranks, and COCOeval
    over the validation images of both ranks, written by rank 0 alone."""
    import json

    from biograd.detection.shapes import make_shapes

    make_shapes(tmp_path / "shapes", train=8, val=6, image_size=64)
    torchrun(tmp_path, DETECT_WORKER)
    assert_same_on_both_ranks(tmp_path / "rank0.pt", tmp_path / "rank1.pt")
    (line,) = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert "AP" in line and "AP50" in line and line["weight_angles"]
