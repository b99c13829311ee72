"""`biograd train` under torchrun: two gloo ranks on loopback end with identical weights and
feedback, and only rank 0 writes the run folder."""

import json
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

RULES = ["fa", "brsf", "kp", "wm"]

WORKER = textwrap.dedent("""
    import dataclasses, os, sys, torch, biograd
    import torch.distributed as torch_dist
    import torch.nn.functional as F
    from torch.utils.data import Subset
    from biograd import data as biograd_data
    from biograd.config import resolve
    from biograd.engine import classify

    torch.set_num_threads(1)
    out, rank = sys.argv[1], int(os.environ["RANK"])
    torch.manual_seed(1000 + rank)  # feedback must not come from the per-rank stream
    models = []
    convert = biograd.convert
    biograd.convert = lambda *a, **k: models.append(convert(*a, **k)) or models[-1]

    real_data = biograd_data.build_data
    def odd_val(*args, **kwargs):  # 359 validation images: not divisible by the 2 ranks
        bundle = real_data(*args, **kwargs)
        return dataclasses.replace(bundle, val=Subset(bundle.val, range(len(bundle.val) - 1)))
    biograd_data.build_data = odd_val

    sent = set()  # every tensor DDP broadcasts, by storage
    real_broadcast = torch_dist._broadcast_coalesced
    def recording(group, tensors, *args):
        sent.update(t.data_ptr() for t in tensors)
        return real_broadcast(group, tensors, *args)
    torch_dist._broadcast_coalesced = recording

    common = dict(data="digits", model="small_cnn", model_options={"dropout": 0.5},
                  batch_size=16, steps_per_epoch=3, progress="none", tensorboard=False,
                  angle_batch=8)
    for rule in sys.argv[2:]:
        sent.clear()
        classify.train(resolve(rule=rule, epochs=2, out=f"{out}/{rule}", **common))
        model = models[-1]
        feedback = set(biograd.feedback_buffers(model))
        ptrs = {n: b.data_ptr() for n, b in model.named_buffers()}
        record = {"state": model.state_dict(), "rng": torch.get_rng_state(),
                  "feedback": sorted(feedback),
                  "sent_feedback": sorted(n for n in feedback if ptrs[n] in sent),
                  "sent_stats": sorted(n for n in ptrs if n.endswith("running_mean")
                                       and ptrs[n] in sent)}
        if rank == 0:  # the whole validation set scored in one process, by rank 0's model
            val = odd_val("digits").val
            x = torch.stack([val[i][0] for i in range(len(val))])
            y = torch.tensor([int(val[i][1]) for i in range(len(val))])
            model.eval()
            with torch.no_grad():
                logits = model(x)
            record["val_top1"] = 100 * (logits.argmax(1) == y).sum().item() / len(y)
            record["val_loss"] = F.cross_entropy(logits, y).item()
        torch.save(record, f"{out}/{rule}-rank{rank}.pt")

    # exact resume on two ranks: 2 epochs at once, or 1 and then 1 more
    for name, epochs, resume in (("whole", 2, False), ("parts", 1, False), ("parts", 2, True)):
        classify.train(resolve(rule="brsf", epochs=epochs, schedule="constant",
                               out=f"{out}/{name}", resume=resume, accept_changes=resume,
                               **common))
        torch.save(models[-1].state_dict(), f"{out}/{name}-rank{rank}.pt")
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


def assert_same_state(a: dict, b: dict, label: str) -> None:
    """Two ranks' state dicts agree on everything but BatchNorm statistics (each rank's last
    training forward updates its own)."""
    assert a.keys() == b.keys()
    for key in a:
        if key.endswith(("running_mean", "running_var")):
            continue
        assert torch.equal(a[key], b[key]), (label, key)


def assert_same_on_both_ranks(path0: Path, path1: Path) -> dict:
    """The two ranks' saved state dicts agree (see assert_same_state); returns rank 0's."""
    a, b = (torch.load(p, weights_only=True) for p in (path0, path1))
    assert_same_state(a, b, path0.name)
    return a


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """The worker's runs on two gloo ranks: each rule, then an exact-resume pair."""
    tmp_path = tmp_path_factory.mktemp("ddp")
    torchrun(tmp_path, WORKER, *RULES)
    return tmp_path


def test_two_ranks_end_identical(two_ranks):
    for rule in RULES:
        a, b = (torch.load(two_ranks / f"{rule}-rank{r}.pt", weights_only=True)["state"]
                for r in (0, 1))
        assert_same_state(a, b, rule)
        assert any(k.endswith("feedback") or k.endswith("feedback_pool") for k in a), rule
        run = two_ranks / rule
        assert sorted(p.name for p in run.iterdir()) == [  # rank 0's alone
            "best.pt", "checkpoint.pt", "config.yaml", "environment.jsonl", "metrics.jsonl",
            "status.json", "train.log"]
        (start,) = [json.loads(line) for line in (run / "environment.jsonl").open()]
        assert start["world_size"] == 2 and start["device"] == "cpu"


def test_feedback_agrees_by_its_seed_alone(two_ranks):
    for rule in RULES:
        record = torch.load(two_ranks / f"{rule}-rank1.pt", weights_only=True)
        assert record["sent_stats"], "the recorder saw no BatchNorm statistics sent"
        assert record["sent_feedback"] == [], f"{rule}: DDP sent {record['sent_feedback']}"
        assert bool(record["feedback"]) == (rule != "kp"), rule  # kp's B is a Parameter


def test_dropout_and_data_draw_differently_on_each_rank(two_ranks):
    for rule in RULES:
        a, b = (torch.load(two_ranks / f"{rule}-rank{r}.pt", weights_only=True)
                for r in (0, 1))
        assert not torch.equal(a["rng"], b["rng"]), rule


def test_validation_counts_every_image_once(two_ranks):
    import json

    for rule in RULES:
        record = torch.load(two_ranks / f"{rule}-rank0.pt", weights_only=True)
        lines = (two_ranks / rule / "metrics.jsonl").read_text().splitlines()
        last = json.loads(lines[-1])
        assert last["val_top1"] == pytest.approx(record["val_top1"], abs=1e-9), rule
        assert last["val_loss"] == pytest.approx(record["val_loss"], rel=1e-5), rule


def test_two_ranks_resume_exactly(two_ranks):
    for rank in (0, 1):
        whole, parts = (torch.load(two_ranks / f"{name}-rank{rank}.pt", weights_only=True)
                        for name in ("whole", "parts"))
        for key, value in whole.items():
            assert torch.equal(value, parts[key]), (rank, key)


def test_resume_on_another_world_size_says_what_changed(two_ranks):
    from biograd.config import resolve
    from biograd.engine import classify
    from biograd.errors import UsageError

    run = dict(data="digits", model="small_cnn", model_options={"dropout": 0.5},
               batch_size=16, steps_per_epoch=3, progress="none", tensorboard=False,
               angle_batch=8, rule="brsf", schedule="constant", out=str(two_ranks / "parts"),
               resume=True)
    with pytest.raises(UsageError, match=r"2 processes × batch 16, a global batch of 32 "
                       r"\(now 1 × 16, 16\)"):
        classify.train(resolve(epochs=2, **run))
    # one process goes on, at the same global batch
    classify.train(resolve(epochs=3, accept_changes=True, **{**run, "batch_size": 32}))
    state = torch.load(two_ranks / "parts" / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 3 and state["world_size"] == 1 and state["global_batch"] == 32


SPIKING_WORKER = textwrap.dedent("""
    import os, sys, torch, biograd
    from biograd.config import resolve
    from biograd.engine import classify

    torch.set_num_threads(1)
    out, rank = sys.argv[1], int(os.environ["RANK"])
    models = []
    convert = biograd.convert
    biograd.convert = lambda *a, **k: models.append(convert(*a, **k)) or models[-1]
    common = dict(data="digits", model="spiking_cnn", rule="dfa", batch_size=16,
                  model_options={"width": 4, "steps": 2, "encoding": "poisson"},
                  steps_per_epoch=3, schedule="constant", progress="none", tensorboard=False,
                  angle_batch=8)
    for name, epochs, resume in (("whole", 2, False), ("parts", 1, False), ("parts", 2, True)):
        classify.train(resolve(epochs=epochs, out=f"{out}/{name}", resume=resume,
                               accept_changes=resume, **common))
        torch.save(models[-1].state_dict(), f"{out}/{name}-rank{rank}.pt")
    torch.distributed.destroy_process_group()
""")


def test_spiking_cnn_on_two_ranks_agrees_and_resumes_exactly(tmp_path):
    """spiking_cnn with Poisson spikes (each rank its own draws, from its own stream) on dfa:
    both ranks end with the same weights, and 1 + 1 epochs end where 2 did, on each rank."""
    pytest.importorskip("spikingjelly.activation_based", reason="spiking_cnn needs "
                        "biograd[spiking]")
    torchrun(tmp_path, SPIKING_WORKER)
    for name in ("whole", "parts"):
        assert_same_on_both_ranks(tmp_path / f"{name}-rank0.pt", tmp_path / f"{name}-rank1.pt")
    for rank in (0, 1):
        whole, parts = (torch.load(tmp_path / f"{name}-rank{rank}.pt", weights_only=True)
                        for name in ("whole", "parts"))
        assert whole.keys() == parts.keys()
        for key, value in whole.items():
            assert torch.equal(value, parts[key]), (rank, key)
    # the spike rates of both ranks' validation shards, summed: one record, every LIF layer
    logged = json.loads((tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()[-1])
    assert len(logged["val_spike_rates"]) == 4
    assert all(0 <= rate < 1 for rate in logged["val_spike_rates"].values())
    checkpoint = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)
    ranks = checkpoint["rng_ranks"]  # the streams the spikes are drawn from, one per rank
    assert len(ranks) == 2 and not torch.equal(ranks[0]["torch"], ranks[1]["torch"])


LSTM_WORKER = SPIKING_WORKER.replace('model="spiking_cnn", rule="dfa"', 'model="lstm", rule="kp"'
                                     ).replace('"width": 4, "steps": 2, "encoding": "poisson"',
                                               '"hidden": 8')


def test_lstm_on_two_ranks_agrees_and_resumes_exactly(tmp_path):
    """The zoo's lstm on kp (its loop over the rows in Python, each weight's B learnt through
    DDP's all-reduce): both ranks end with the same weights and feedback, and 1 + 1 epochs
    end where 2 did, on each rank."""
    assert 'model="lstm", rule="kp"' in LSTM_WORKER and '"hidden": 8' in LSTM_WORKER
    torchrun(tmp_path, LSTM_WORKER)
    for name in ("whole", "parts"):
        assert_same_on_both_ranks(tmp_path / f"{name}-rank0.pt", tmp_path / f"{name}-rank1.pt")
    for rank in (0, 1):
        whole, parts = (torch.load(tmp_path / f"{name}-rank{rank}.pt", weights_only=True)
                        for name in ("whole", "parts"))
        assert any(k.endswith("weight_hh_l0.feedback") for k in whole)  # kp's B_hh
        assert whole.keys() == parts.keys()
        for key, value in whole.items():
            assert torch.equal(value, parts[key]), (rank, key)


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


NODE = textwrap.dedent("""
    import os, sys, torch, biograd
    from biograd.cli import main

    models = []
    convert = biograd.convert
    biograd.convert = lambda *a, **k: models.append(convert(*a, **k)) or models[-1]
    code = main(sys.argv[2:])  # the command line, as the README's two-node command runs it
    torch.save(models[-1].state_dict(), f"{sys.argv[1]}/node-rank{os.environ['RANK']}.pt")
    sys.exit(code)
""")


def test_two_nodes_of_one_process_each(tmp_path):
    """The README's multi-node command: torchrun --nnodes 2 with c10d rendezvous, here two
    "nodes" on loopback, one process each."""
    node = tmp_path / "node.py"
    node.write_text(NODE)
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    port = free_port()
    runs = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node",
         "1", "--node_rank", str(rank), "--rdzv_backend", "c10d", "--rdzv_endpoint",
         f"127.0.0.1:{port}", "--rdzv_id", "biograd-test", str(node), str(tmp_path),
         "train", "--rule", "wm", "--model", "small_cnn", "--epochs", "1",
         "--steps-per-epoch", "3", "--batch-size", "16", "--progress", "none",
         "--tensorboard", "false", "--out", str(tmp_path / "run")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for rank in (0, 1)]
    outputs = []
    for run in runs:
        output, _ = run.communicate(timeout=300)
        assert run.returncode == 0, output[-3000:]
        outputs.append(output)
    # rank 0 alone prints: the conversion report once, though both ranks convert
    assert sum(o.count("layers converted") for o in outputs) == 1
    state = assert_same_on_both_ranks(tmp_path / "node-rank0.pt", tmp_path / "node-rank1.pt")
    assert any(k.endswith(".feedback") for k in state)
    assert (tmp_path / "run" / "checkpoint.pt").exists()


def torchrun_cli(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node 2 -m biograd.cli ARGV` on loopback, from tmp_path."""
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
           "-m", "biograd.cli", *argv]
    return subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)


TINY = ["--model", "small_cnn", "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "8",
        "--progress", "none", "--tensorboard", "false", "--angle-batch", "0"]


def test_compare_under_torchrun_reports_once_and_errors_are_one_line_on_rank_0(tmp_path):
    out = tmp_path / "cmp"
    done = torchrun_cli(tmp_path, "compare", "--rules", "fa,kp", *TINY, "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("| `kp` |") == 1 and "finished" in done.stdout
    assert "| `fa` |" in (out / "report.md").read_text()
    for argv, says in ((["train", *TINY, "--out", str(out / "fa")], "already holds a run"),
                       (["train", *TINY], "under torchrun give --out")):
        refused = torchrun_cli(tmp_path, *argv)  # every rank stops; rank 0 alone says why
        assert refused.returncode != 0
        assert refused.stderr.count("biograd: error:") == 1 and says in refused.stderr
        assert "Connection closed" not in refused.stderr
