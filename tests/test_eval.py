"""Saved models: best.pt, `biograd eval`, --init-checkpoint and --pretrained."""

import json
import pickle
import re
from pathlib import Path

import pytest
import torch

from biograd.cli import main
from biograd.engine import checkpoint

RUN = ["--steps-per-epoch", "3", "--batch-size", "16", "--progress", "none",
       "--tensorboard", "false", "--angle-batch", "0"]


def metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "run"
    assert main(["train", "--rule", "fa", "--epochs", "3", "--lr", "0.2", *RUN,
                 "--out", str(out)]) == 0
    return out


def test_best_pt_holds_the_best_epochs_model(run):
    lines = metrics(run)
    best = max(lines, key=lambda m: m["val_top1"])
    saved = torch.load(run / checkpoint.BEST, weights_only=True)
    assert (saved["epoch"], saved["metric"]) == (best["epoch"], "val_top1")
    assert saved["value"] == pytest.approx(best["val_top1"])


@pytest.mark.parametrize("which", ["best", "last"])
def test_eval_scores_the_saved_model_as_training_did(run, which, capsys):
    assert main(["eval", str(run), "--checkpoint", which]) == 0
    lines = metrics(run)
    expected = max(lines, key=lambda m: m["val_top1"]) if which == "best" else lines[-1]
    written = run / ("eval.json" if which == "best" else "eval-last.json")
    result = json.loads(written.read_text())
    assert result["epoch"] == expected["epoch"] and result["split"] == "val"
    assert result["val_top1"] == pytest.approx(expected["val_top1"], abs=1e-9)
    assert result["val_loss"] == pytest.approx(expected["val_loss"], rel=1e-6)
    out = capsys.readouterr().out
    assert "val_top1" in out and f"written to {written}" in out


def test_no_evaluation_overwrites_another():
    from biograd.engine.evaluate import result_name

    names = {result_name(Path("run") / checkpoint.BEST),
             result_name(Path("run") / checkpoint.NAME),
             result_name(Path("run") / checkpoint.BEST, "fashion-mnist"),
             result_name(Path("run") / checkpoint.NAME, "/data/imagenet/"),
             result_name(Path("run") / checkpoint.BEST, "/data/my shapes"),
             result_name(Path("run") / checkpoint.BEST, "/a/val"),
             result_name(Path("run") / checkpoint.BEST, "/b/val"),
             result_name(Path("run") / "epoch 3.pt")}
    assert names == {"eval.json", "eval-last.json", "eval-fashion-mnist.json",
                     "eval-last-data_imagenet.json", "eval-data_my_shapes.json",
                     "eval-a_val.json", "eval-b_val.json", "eval-epoch_3.json"}


def test_eval_says_what_it_cannot_read(tmp_path, capsys):
    torch.save({"weight": torch.zeros(2)}, tmp_path / "plain.pt")
    assert main(["eval", str(tmp_path / "plain.pt")]) == 2
    assert "not a biograd checkpoint" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "nothing")]) == 2


def test_init_checkpoint_starts_from_plain_weights(run, tmp_path):
    from biograd.models import small_cnn

    plain = small_cnn(num_classes=10, in_channels=1)  # a plain torch model's state dict
    torch.nn.init.constant_(plain[0].weight, 0.01)
    torch.save(plain.state_dict(), tmp_path / "plain.pt")
    out = tmp_path / "tuned"
    assert main(["train", "--rule", "sign_fixed", "--epochs", "1", "--lr", "1e-9", *RUN,
                 "--init-checkpoint", str(tmp_path / "plain.pt"), "--out", str(out)]) == 0
    state = torch.load(out / checkpoint.NAME, weights_only=True)["model"]
    torch.testing.assert_close(state["0.weight"], plain[0].weight.detach(), atol=1e-6, rtol=0)
    # feedback derived from the loaded weights: sign_fixed's B has their signs (all +)
    assert (state["0.feedback"] > 0).all()


@pytest.mark.parametrize(("flags", "seed"), [(["--rule", "ss"], "0"), (["--rule", "fa"], "5"),
                                            (["--rule", "kp", "--dale", "0.8"], "0")])
def test_init_checkpoint_takes_the_weights_and_derives_the_rest(run, tmp_path, flags, seed):
    # weights only, whatever rule or Dale signs the file's run had; feedback from the new
    # run's seed and the loaded weights; under --dale the run's signs on the loaded magnitudes
    out = tmp_path / "tuned"
    assert main(["train", *flags, "--seed", seed, "--epochs", "1", "--lr", "1e-30", *RUN,
                 "--init-checkpoint", str(run / checkpoint.BEST), "--out", str(out)]) == 0
    start = torch.load(run / checkpoint.BEST, weights_only=True)["model"]
    state = torch.load(out / checkpoint.NAME, weights_only=True)["model"]
    weights = [k for k in start if k.endswith((".weight", ".bias"))]
    signs = {k.removesuffix(".dale_sign"): v for k, v in state.items() if k.endswith("dale_sign")}
    assert weights and (signs or "--dale" not in flags)
    for key in weights:
        owner = key.rsplit(".", 1)[0]
        if key.endswith(".weight") and owner in signs:  # Dale: |W| kept, signs the unit's
            w = state[key]
            unit = signs[owner].view(1, -1, *[1] * (w.dim() - 2)).expand_as(w)
            assert torch.equal(w.sign(), unit), key
            torch.testing.assert_close(w.abs(), start[key].abs().clamp(min=1e-10))
        else:
            assert torch.equal(state[key], start[key]), key
    if flags[1] == "fa":  # B drawn from the run's seed, not the file's B
        assert not torch.equal(state["0.feedback"], start["0.feedback"])


def test_init_checkpoint_that_does_not_fit_is_one_line(tmp_path, capsys):
    torch.save({"something": torch.zeros(3)}, tmp_path / "other.pt")
    assert main(["train", *RUN, "--init-checkpoint", str(tmp_path / "other.pt"),
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("biograd: error: --init-checkpoint:")
    # every key named whole, the first few of each kind, and how many more
    assert "1 unexpected key(s): something)" in err[-1]
    assert re.search(r"\d+ missing key\(s\): (\S+, ){3}\S+ and \d+ more;", err[-1]), err[-1]


@pytest.mark.parametrize("contents", [b"not a checkpoint at all\n", pickle.dumps({"a": {1, 2}})])
def test_a_file_that_is_no_checkpoint_is_one_line_without_torchs_advice(
        tmp_path, capsys, contents):
    (tmp_path / "file.pt").write_bytes(contents)
    for argv in (["eval", str(tmp_path / "file.pt")],
                 ["train", *RUN, "--init-checkpoint", str(tmp_path / "file.pt"),
                  "--out", str(tmp_path / "run")]):
        assert main(argv) == 2
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert "not a file of tensors that torch.load reads with weights_only=True" in last
        assert "weights_only` set to `False`" not in last


def test_pretrained_reads_the_local_cache_and_never_downloads(tmp_path, monkeypatch, capsys):
    import torchvision

    from biograd.config import resolve
    from biograd.engine import classify, distributed

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    argv = ["train", "--model", "resnet18", "--data", "fake", "--image-size", "32",
            "--pretrained", *RUN, "--out", str(tmp_path / "run")]
    assert main(argv) == 2  # nothing in the cache, and nothing is fetched
    err = capsys.readouterr().err.strip().splitlines()
    assert "not in the local cache" in err[-1] and "resnet18-f37072fd.pth" in err[-1]

    cached = torchvision.models.resnet18()  # stands in for the downloaded file
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(cached.state_dict(), folder / "resnet18-f37072fd.pth")
    cfg = resolve(model="resnet18", data="fake", image_size=32, pretrained=True, rule="ss",
                  out=str(tmp_path / "run"))
    task = classify.build(cfg, distributed.Dist(), torch.device("cpu"))
    assert torch.equal(task.model.conv1.weight, cached.conv1.weight)
    assert task.model.fc.weight.shape == (10, 512)  # its own classifier, not the cache's

    # the run's checkpoints hold every weight: eval and resume need no cache
    argv[argv.index("--steps-per-epoch") + 1] = "1"
    assert main(argv) == 0
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "elsewhere"))
    assert main(["eval", str(tmp_path / "run")]) == 0
    assert main(["train", "--out", str(tmp_path / "run"), "--resume", "--epochs", "2",
                 "--accept-changes"]) == 0


def test_an_fp16_run_is_refused_on_the_cpu_its_device_resolves_to(tmp_path, capsys):
    # --device auto finds no GPU here: the refusal reads the device the run would use
    assert main(["train", "--amp", "fp16", *RUN, "--out", str(tmp_path / "run")]) == 2
    assert "this run's device is the CPU" in capsys.readouterr().err
