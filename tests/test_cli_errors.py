"""Bad input gets one line that says what was wrong and what to do, exit code 2, and no
traceback; a diverged run exits non-zero with its own line."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from biograd.cli import main

QUICK = ["--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "8", "--progress", "none",
         "--tensorboard", "false", "--angle-batch", "0"]


def one_line_error(capsys, argv, *expected):
    code = main(argv)
    if code is None:
        pytest.fail("expected an error")
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert code == 2, err
    assert last.startswith("biograd: error: "), err
    assert "Traceback" not in err
    for text in expected:
        assert text in last, last
    return last


def run_main(argv):
    try:
        return main(argv)
    except SystemExit as exit_info:  # argparse errors
        return exit_info.code


@pytest.fixture
def out(tmp_path):
    return ["--out", str(tmp_path / "run")]


def test_unknown_rule_lists_valid_ones(capsys, out):
    one_line_error(capsys, ["train", "--rule", "nope", *out], "unknown rule 'nope'", "bp, fa")


def test_unknown_model_lists_valid_ones(capsys, out):
    one_line_error(capsys, ["train", "--model", "resnet1B", *QUICK, *out], "resnet1B",
                   "small_cnn")


def test_a_torchvision_model_too_deep_for_the_images_names_a_size_it_takes(capsys, out):
    # alexnet pools 28x28 maps to nothing: torch's traceback at the first step, before
    last = one_line_error(capsys, ["train", "--model", "alexnet", "--data", "fake",
                                   "--image-size", "28", *QUICK, *out],
                          "alexnet cannot take 28x28 images", "Output size is too small")
    side = int(last.split("--image-size ")[1].rstrip(")"))
    assert main(["train", "--model", "alexnet", "--data", "fake", "--image-size", str(side),
                 *QUICK, *out]) == 0


def test_missing_data_folder(capsys, tmp_path, out):
    one_line_error(capsys, ["train", "--data", str(tmp_path / "nowhere"), *QUICK, *out],
                   "nowhere")


def test_empty_data_folder(capsys, tmp_path, out):
    for split in ("train", "val"):
        (tmp_path / "images" / split).mkdir(parents=True)
    one_line_error(capsys, ["train", "--data", str(tmp_path / "images"), *QUICK, *out])


def test_corrupt_image_names_the_file(capsys, tmp_path, out):
    root = tmp_path / "images"
    for split in ("train", "val"):
        for label in ("a", "b"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (12, 12), (40 * i, 80, 120)).save(folder / f"{i}.png")
    (root / "train" / "a" / "0.png").write_bytes(b"\x89PNG not really an image")
    one_line_error(capsys, ["train", "--data", str(root), "--image-size", "8", "--model",
                            "small_cnn", "--epochs", "1", "--batch-size", "8", "--progress",
                            "none", "--tensorboard", "false", "--angle-batch", "0", *out],
                   "0.png")


def test_bad_model_options(capsys, out):
    one_line_error(capsys, ["train", "--model", "resnet_small", "--model-options", "{depth: 3}",
                            *QUICK, *out], "resnet_small", "depth")
    one_line_error(capsys, ["train", "--model", "resnet_small", "--model-options",
                            "{width: 0}", *QUICK, *out], "resnet_small", "width=0", ">= 1")


def test_bad_rule_and_logging_options(capsys, out):
    one_line_error(capsys, ["train", "--rule-options", "{kp: {decay: -1}}", *out], "decay")
    one_line_error(capsys, ["train", "--angle-every", "0", *out], "--angle-every")


def test_contradictory_options(capsys, out):
    one_line_error(capsys, ["train", "--manhattan", "--optimizer", "adam", *out],
                   "--optimizer sgd")
    one_line_error(capsys, ["train", "--amp", "fp16", "--device", "cpu", *out], "bf16")


def test_an_existing_run_is_never_overwritten(capsys, out):
    assert main(["train", *QUICK, *out]) == 0
    capsys.readouterr()
    one_line_error(capsys, ["train", *QUICK, *out], "--resume")


def test_resume_without_a_checkpoint(capsys, out):
    one_line_error(capsys, ["train", "--resume", *QUICK, *out], "no checkpoint")


def test_resume_with_changed_recipe(capsys, out):
    assert main(["train", *QUICK, *out]) == 0
    capsys.readouterr()
    lines = (Path(out[1]) / "train.log").read_text().splitlines()
    last = one_line_error(capsys, ["train", "--resume", "--rule", "fa", *QUICK, *out],
                          "rule='ss'")
    added = (Path(out[1]) / "train.log").read_text().splitlines()[len(lines):]
    # the refused start's set-up lines are followed by why it went no further
    assert added[-1].endswith(f"ERROR stopped: {last.removeprefix('biograd: error: ')}")


def test_bad_config_files(capsys, tmp_path, out):
    bad = tmp_path / "bad.yaml"
    bad.write_text("rule: [unclosed\n")
    one_line_error(capsys, ["train", "--config", str(bad), *out], "not valid YAML")
    bad.write_text("rule: fa\nlearning_rate: 0.1\n")
    one_line_error(capsys, ["train", "--config", str(bad), *out], "learning_rate")


def test_flag_errors_are_one_line(capsys):
    assert run_main(["train", "--epochs", "many"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--epochs" in err


def test_the_installed_command_prints_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "biograd.cli", "train", "--rule", "nope",
                             "--out", str(tmp_path / "run")], capture_output=True, text=True)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]


@pytest.mark.parametrize("command", [["train"], ["compare", "--rules", "bp"], ["make-shapes"]])
@pytest.mark.parametrize("where", ["afile", "afile/run"])
def test_an_out_that_is_or_lies_under_a_file_is_one_line(capsys, tmp_path, command, where):
    (tmp_path / "afile").write_text("x")
    target = str(tmp_path / where)
    argv = [*command, target] if command == ["make-shapes"] else [*command, *QUICK, "--out",
                                                                  target]
    one_line_error(capsys, argv, f"{tmp_path / 'afile'} is a file, not a folder")


def test_an_out_that_cannot_be_made_is_one_line(capsys, tmp_path):
    (tmp_path / "locked").mkdir(mode=0o500)
    if os.access(tmp_path / "locked", os.W_OK):  # root writes anyway: use a path in /proc
        target = "/proc/biograd-cannot-be-here"
    else:
        target = str(tmp_path / "locked" / "run")
    for command in (["train"], ["compare", "--rules", "bp"]):
        one_line_error(capsys, [*command, *QUICK, "--out", target], "the folder cannot be made")


@pytest.mark.parametrize(("argv", "says"), [
    (["--rules", "fa,fa"], "--rules names fa more than once"),
    (["--rules", "bp", "--seeds", "0,0"], "--seeds names 0 more than once"),
    (["--rule", "fa"], "use --rules fa"),
])
def test_compare_refuses_a_repeated_run_or_train_s_rule_flag_before_training(
        capsys, tmp_path, argv, says):
    out = tmp_path / "cmp"
    one_line_error(capsys, ["compare", *argv, *QUICK, "--out", str(out)], says)
    assert not out.exists()  # nothing trained


def test_compare_refuses_a_folder_holding_a_run_before_training_any(capsys, tmp_path):
    out = tmp_path / "cmp"
    assert main(["train", "--rule", "bp", *QUICK, "--out", str(out / "bp")]) == 0
    capsys.readouterr()
    one_line_error(capsys, ["compare", "--rules", "kp,bp", *QUICK, "--out", str(out)],
                   f"{out / 'bp'} already holds a run")
    assert sorted(p.name for p in out.iterdir()) == ["bp"]  # kp was not trained first


def test_compare_with_no_rule_is_one_line(capsys):
    assert run_main(["compare", "--rules", ","]) == 2
    assert "give one rule or more" in capsys.readouterr().err
