"""The command line's way to the paper's open problems: --unshare, --dale and attention models,
in `biograd train` and `biograd compare`, with one-line errors for what does not fit."""

import json

import pytest
import torch

from biograd.cli import main

QUICK = ["--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "8", "--progress", "none",
         "--tensorboard", "false", "--angle-batch", "8"]

pytestmark = pytest.mark.usefixtures("one_thread")


def saved(out):
    return torch.load(out / "checkpoint.pt", weights_only=True)


def one_line(capsys, argv, *expected):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("biograd: error: ") and "Traceback" not in "\n".join(err)
    for text in expected:
        assert text in err[-1], err[-1]


def test_unshare_trains_locally_connected_layers_and_resumes(tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--unshare", "--rule", "fa", *QUICK, "--out", str(out)]
    assert main(argv) == 0
    state = saved(out)["model"]
    plain = saved_plain(tmp_path)
    convs = [k[: -len(".weight")] for k, v in plain.items() if k.endswith(".weight")
             and v.dim() == 4]
    assert convs  # small_cnn has convolutions, and every one is unshared
    for name in convs:
        w = state[f"{name}.weight"]
        assert w.dim() == 3  # (positions, C_out, C_in·k·k): a kernel per position
        assert state[f"{name}.feedback"].shape == w.shape  # fa's B, per position too
    assert main([*argv[:-2], "--epochs", "2", "--accept-changes", "--resume", "--out",
                 str(out)]) == 0
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


def saved_plain(tmp_path):
    out = tmp_path / "plain"
    assert main(["train", "--rule", "bp", *QUICK, "--out", str(out)]) == 0
    return saved(out)["model"]


def test_dale_holds_every_units_sign_through_training(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--dale", "0.8", "--dale-balance", "--rule", "ss", *QUICK,
                 "--out", str(out)]) == 0
    state = saved(out)["model"]
    signs = {k[: -len(".dale_sign")]: v for k, v in state.items() if k.endswith(".dale_sign")}
    assert len(signs) >= 2  # every layer but the stem
    for name, sign in signs.items():
        w = state[f"{name}.weight"]  # Linear (out, in) or Conv (C_out, C_in, k, k)
        view = sign.view(1, -1, *([1] * (w.dim() - 2)))
        assert torch.equal(torch.sign(w), view.expand_as(w)), name
    assert 0 < float(torch.cat(list(signs.values())).eq(1).float().mean()) < 1


def test_a_torchvision_vit_by_name_learns_its_attention_through_the_rule(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--model", "vit_b_16", "--data", "fake", "--image-size", "32",
                 "--rule", "fa", *QUICK[:4], "--batch-size", "2", *QUICK[6:],
                 "--angle-batch", "0", "--out", str(out)]) == 0
    state = saved(out)["model"]
    attention = "encoder.layers.encoder_layer_0.self_attention"
    assert state[f"{attention}.feedback"].shape == state[f"{attention}.in_proj_weight"].shape
    assert f"{attention}.out_proj.feedback" in state
    log = (out / "train.log").read_text()
    assert "MultiheadAttention" not in log.split("still learning through weight transport")[1]


def test_compare_takes_the_same_flags(tmp_path):
    out = tmp_path / "cmp"
    assert main(["compare", "--rules", "bp,ss", "--unshare", "--dale", "0.9", *QUICK,
                 "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "| `bp` |" in report and "| `ss` |" in report
    for rule in ("bp", "ss"):
        assert any(k.endswith(".dale_sign") for k in saved(out / rule)["model"])


@pytest.mark.parametrize(("argv", "expected"), [
    (["--dale", "1.5"], ["dale", "1.5"]),
    (["--dale", "0"], ["dale"]),
    (["--dale-balance"], ["--dale-balance", "--dale 0.8"]),
    (["--unshare", "--model", "mobilenet_v3_small", "--data", "fake", "--image-size", "32"],
     ["--unshare", "groups", "exclude"]),
])
def test_bad_combinations_are_one_line_errors(capsys, tmp_path, argv, expected):
    one_line(capsys, ["train", *argv, *QUICK, "--out", str(tmp_path / "run")], *expected)
