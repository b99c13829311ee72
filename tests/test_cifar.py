"""CIFAR-10/100 from files the test writes in CIFAR's own format, read by torchvision's
loaders; --val-split; biotorch's benchmark models and recipes."""

import json
import pickle

import numpy as np
import pytest
import torch

from biograd.cli import main
from biograd.data import build_data

PER_BATCH = 6  # images in each of the five training batches and in the test batch


def write_cifar(root, name: str) -> None:
    """CIFAR's python layout: pickled dicts of uint8 rows (N, 3072) and their labels (the
    keys str, as Python 2 wrote them and latin-1 reads them back)."""
    folder, label_key, classes, meta = {
        "cifar10": ("cifar-10-batches-py", "labels", 10, ("batches.meta", "label_names")),
        "cifar100": ("cifar-100-python", "fine_labels", 100, ("meta", "fine_label_names")),
    }[name]
    out = root / folder
    out.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batches = (["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
                "data_batch_5", "test_batch"] if name == "cifar10" else ["train", "test"])
    for batch in batches:
        n = PER_BATCH if name == "cifar10" or batch == "test" else 5 * PER_BATCH
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, classes, n)]
        with open(out / batch, "wb") as fh:
            pickle.dump({"data": data, label_key: labels}, fh, protocol=2)
    with open(out / meta[0], "wb") as fh:
        pickle.dump({meta[1]: [f"class{i}" for i in range(classes)]}, fh)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_cifar(root, "cifar10")
    write_cifar(root, "cifar100")
    return root


@pytest.mark.parametrize(("name", "classes"), [("cifar10", 10), ("cifar100", 100)])
def test_cifar_reads_its_own_format_through_torchvision(root, name, classes):
    import torchvision

    bundle = build_data(name, root=str(root))
    assert isinstance(bundle.train, torchvision.datasets.CIFAR10)  # CIFAR100 subclasses it
    assert (len(bundle.train), len(bundle.val), bundle.num_classes) == (5 * PER_BATCH,
                                                                        PER_BATCH, classes)
    x, y = bundle.val[0]
    assert x.shape == (3, 32, 32) and 0 <= y < classes
    # the training split augments (random crop and flip), the plain one does not
    torch.manual_seed(0)
    a = torch.stack([bundle.train[0][0] for _ in range(4)])
    assert not all(torch.equal(a[0], a[i]) for i in range(1, 4))
    assert torch.equal(bundle.train_plain[0][0], bundle.train_plain[0][0])


def test_cifar_missing_is_one_line(tmp_path, capsys):
    argv = ["train", "--data", "cifar10", "--data-root", str(tmp_path), "--out",
            str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "CIFAR-10 not found" in err[-1] and "--download" in err[-1]


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_a_damaged_or_missing_batch_is_one_line_naming_it(root, tmp_path, capsys, damage):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    batch = copy / "cifar-10-batches-py" / "data_batch_3"
    if damage == "truncated":
        batch.write_bytes(batch.read_bytes()[:300])
    else:
        batch.unlink()
    assert main(["train", "--data", "cifar10", "--data-root", str(copy), "--out",
                 str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("biograd: error: CIFAR-10")
    assert ("not a CIFAR batch" if damage == "truncated" else "missing: data_batch_3") in err[-1]


def test_a_download_that_fails_is_one_line(tmp_path, capsys, monkeypatch):
    import urllib.error

    from torchvision.datasets import utils

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(utils, "download_url", offline)
    monkeypatch.setattr(utils, "download_and_extract_archive", offline)
    from torchvision.datasets import cifar

    monkeypatch.setattr(cifar, "download_and_extract_archive", offline)
    assert main(["train", "--data", "cifar10", "--data-root", str(tmp_path), "--download",
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("biograd: error: CIFAR-10") and "--download" in err[-1]


def test_val_split_holds_training_images_out_and_scores_the_test_split(root, tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--data", "cifar10", "--data-root", str(root), "--model", "lenet",
            "--val-split", "10", "--epochs", "2", "--batch-size", "8", "--angle-batch", "0",
            "--progress", "none", "--tensorboard", "false", "--out", str(out)]
    assert main(argv) == 0
    test = json.loads((out / "test.json").read_text())
    best = torch.load(out / "best.pt", weights_only=True)
    assert test["split"] == "test" and test["epoch"] == best["epoch"]
    assert 0 <= test["test_top1"] <= 100
    from biograd.data.base import hold_out

    bundle = hold_out(build_data("cifar10", root=str(root)), 10)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (20, 10, PER_BATCH)
    held = set(bundle.val.indices)
    assert not held & set(bundle.train.indices)  # no image in both
    again = hold_out(build_data("cifar10", root=str(root)), 10)
    assert set(again.val.indices) == held  # the same images, run after run


def test_report_names_the_splits(root, tmp_path):
    out = tmp_path / "cmp"
    argv = ["compare", "--rules", "bp,ss", "--data", "cifar10", "--data-root", str(root),
            "--model", "lenet", "--val-split", "10", "--epochs", "1", "--batch-size", "8",
            "--angle-batch", "0", "--progress", "none", "--tensorboard", "false",
            "--out", str(out)]
    assert main(argv) == 0
    report = (out / "report.md").read_text()
    assert "10 images held out of the training split" in report
    assert "test top-1 (%), best val epoch" in report


@pytest.mark.parametrize(("model", "params"), [("resnet20", 0.27e6), ("resnet56", 0.85e6),
                                               ("lenet_mnist", 61_706), ("lenet", 128_842)])
def test_biotorch_models_have_their_published_sizes(model, params):
    from biograd.models import build_model

    channels = 1 if model == "lenet_mnist" else 3
    net = build_model(model, num_classes=10, in_channels=channels, image_size=32)
    count = sum(p.numel() for p in net.parameters())
    assert count == pytest.approx(params, rel=0.02)
    if model.startswith("resnet"):  # option A: no weights on the shortcuts
        assert not any("downsample" in n for n, _ in net.named_parameters())


BIOTORCH = sorted(__import__("pathlib").Path(__file__).parents[1].glob(
    "biograd/configs/biotorch/*.yaml"))


def test_biotorch_recipes_cover_every_model_optimiser_and_rule():
    import argparse

    from biograd.config import resolve

    assert len(BIOTORCH) == 3 * 2 * 6
    for path in BIOTORCH:
        cfg = resolve(argparse.Namespace(config=path))
        data, model, optimiser, rule = path.stem.split("-")
        assert (cfg.data, cfg.model, cfg.optimizer, cfg.rule) == (data, model, optimiser, rule)
        assert cfg.last_rule == cfg.rule  # biotorch converts the classifier too
        assert (cfg.val_split, cfg.epochs, cfg.batch_size, cfg.milestones) == (
            5000, 250, 128, [100, 150, 200])
        assert "published top-1 test error" in path.read_text()


@pytest.mark.parametrize("name", ["cifar10-lenet-sgd-ss", "cifar10-resnet20-adam-fa",
                                  "cifar10-resnet56-sgd-brsf", "cifar10-resnet20-sgd-dfa"])
def test_a_biotorch_recipe_trains(root, tmp_path, name):
    out = tmp_path / "run"
    argv = ["train", "--config", f"biotorch/{name}", "--data-root", str(root), "--epochs", "1",
            "--steps-per-epoch", "1", "--batch-size", "4", "--val-split", "10",
            "--angle-batch", "0", "--progress", "none", "--tensorboard", "false",
            "--out", str(out)]
    assert main(argv) == 0
    assert json.loads((out / "test.json").read_text())["split"] == "test"
