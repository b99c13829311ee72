"""benchmarks/step_time.py runs the variant it names (a tiny ResNet-18 step on the CPU)."""

import importlib.util
import math
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def load_step_time():
    spec = importlib.util.spec_from_file_location("step_time", ROOT / "benchmarks/step_time.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bf16_channels_last_variant_trains_in_that_format(one_thread):
    step_time = load_step_time()
    v = step_time.Variant("ss", torch.device("cpu"), amp="bf16", channels_last=True)
    conv = v.model.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert not conv.is_contiguous()
    x, y = step_time.batch(32, 2, torch.device("cpu"), channels_last=True)
    assert x.is_contiguous(memory_format=torch.channels_last)
    with v.autocast():
        assert v.runner(x).dtype == torch.bfloat16
    before = v.model.layer1[0].conv1.weight.detach().clone()
    v.step(x, y)
    assert not torch.equal(v.model.layer1[0].conv1.weight, before)
    assert v.model.layer1[0].conv1.weight.dtype == torch.float32  # master weights stay fp32


def test_main_records_the_variant_and_times_every_rule(one_thread, capsys):
    step_time = load_step_time()
    args = step_time.get_args_parser().parse_args(
        ["--sizes", "32", "--batch", "2", "--repeats", "1", "--warmup", "0",
         "--rules", "ss", "kp", "--amp", "bf16", "--channels-last"])
    result = step_time.main(args)
    assert (result["amp"], result["channels_last"], result["compile"]) == ("bf16", True, False)
    timed = result["sizes"][32]
    assert set(timed) == {"native", "ss", "kp"}
    for rule in ("ss", "kp"):
        ratio = timed[rule]["wall"]["ratio"]
        assert math.isfinite(ratio) and ratio > 0
    assert "autocast bf16, channels_last True" in capsys.readouterr().out


def test_overhead_times_every_rule_that_forms_a_b_by_default(one_thread, capsys):
    """benchmarks/overhead.py with its default rules: every rule but dfa, which forms no B
    (its `make` is None) and is refused when named."""
    spec = importlib.util.spec_from_file_location("overhead", ROOT / "benchmarks/overhead.py")
    overhead = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(overhead)
    import biograd

    parser = overhead.get_args_parser()
    overhead.main(parser.parse_args(["--size", "32", "--batch", "2", "--repeats", "1"]))
    rows = [line.split("|")[1].strip() for line in capsys.readouterr().out.splitlines()
            if line.startswith("| ")][2:]  # below the header and its "| --- |" line
    assert rows == [r for r in biograd.list_rules() if r != "dfa"]
    with pytest.raises(SystemExit, match="dfa forms no B"):
        overhead.main(parser.parse_args(["--size", "32", "--batch", "2", "--rules", "dfa"]))


def test_ddp_benchmark_counts_gradients_only(capsys):
    """benchmarks/ddp.py on 1 and 2 gloo ranks: DDP all-reduces the gradients (kp's B's
    too) and broadcasts BatchNorm statistics, never feedback."""
    spec = importlib.util.spec_from_file_location("ddp_bench", ROOT / "benchmarks/ddp.py")
    ddp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ddp)
    args = ddp.get_args_parser().parse_args(
        ["--rules", "fa", "kp", "--size", "16", "--batch", "2", "--steps", "1", "--rounds", "1"])
    args.rules = ["fa", "kp"]
    result = ddp.launch(args, 2)
    import torchvision

    model = torchvision.models.resnet18(num_classes=10)
    grads = sum(p.numel() * 4 for p in model.parameters())
    stats = sum(b.numel() * b.element_size() for b in model.buffers())
    assert result["native"]["allreduce"] == result["fa"]["allreduce"] == grads
    import biograd

    kp = biograd.convert(torchvision.models.resnet18(num_classes=10), "kp")
    with_b = sum(p.numel() * 4 for p in kp.parameters())  # B's gradient, W's own, goes too
    assert result["kp"]["allreduce"] == with_b > 1.9 * grads
    assert result["native"]["broadcast"] == result["fa"]["broadcast"] == stats
