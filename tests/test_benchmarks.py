"""benchmarks/step_time.py runs the variant it names (a tiny ResNet-18 step on the CPU)."""

import importlib.util
import json
import math
import re
from pathlib import Path

import pytest
import torch
from checks import load_benchmark

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
    """benchmarks/overhead.py with its default rules: every rule but those that read the
    model's output (dfa, drtp: no B, their `make` is None; dfa_blocks: torch's op in its
    layers), which are refused when named."""
    spec = importlib.util.spec_from_file_location("overhead", ROOT / "benchmarks/overhead.py")
    overhead = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(overhead)
    import biograd

    parser = overhead.get_args_parser()
    overhead.main(parser.parse_args(["--size", "32", "--batch", "2", "--repeats", "1"]))
    rows = [line.split("|")[1].strip() for line in capsys.readouterr().out.splitlines()
            if line.startswith("| ")][2:]  # below the header and its "| --- |" line
    assert rows == [r for r in biograd.list_rules() if not biograd.get_rule(r).reads_output]
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


@pytest.mark.parametrize("argv", [["--rules", "foo"], ["--repeats", "0"], ["--group", "0"],
                                  ["--sizes", "0"], ["--warmup", "-1"]])
def test_step_time_refuses_a_bad_argument_in_one_line(argv, capsys):
    """An unknown rule was a ValueError's traceback and --repeats 0 an empty median's: both
    are argparse's one-line error now, before anything is built."""
    with pytest.raises(SystemExit) as stop:
        load_step_time().get_args_parser().parse_args(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and f": error: argument {argv[0]}" in err[-1]


def test_gpu_check_says_how_many_files_it_writes():
    script = (ROOT / "benchmarks" / "gpu_check.sh").read_text()
    stated = int(re.search(r"as it finishes: (\d+) files", script).group(1))
    rules = re.search(r"for rule in ([\w ]+); do", script).group(1).split()
    written = set(re.findall(r'"\$out/([^"]+)"', script))
    expanded = {n.replace("$rule", r) for n in written for r in rules}
    assert stated == len(expanded) == 9
    for name in expanded:
        assert name in script.split("\n#\n")[0]  # each named in the header


def bold_ratios(text: str, heading: str) -> dict[str, str]:
    """{rule: bold wall ratio} of the table that follows the line starting with `heading`."""
    rows = text.split(heading, 1)[1].split("\n\n", 2)[1]
    return dict(re.findall(r"^\| (\w+) \| \*\*([\d.]+)\*\*", rows, flags=re.M))


def test_performance_doc_quotes_the_records():
    """docs/performance.md's reading of bp in single runs is the range of the two headline
    runs' JSON, and it quotes every 30-round run benchmarks/RESULTS.md lists for fa, ss, brsf."""
    doc = (ROOT / "docs" / "performance.md").read_text()
    bp = [size["bp"]["wall"]["ratio"] for n in (1, 2) for size in json.loads(
        (ROOT / "benchmarks" / f"results_run{n}.json").read_text())["sizes"].values()]
    low, high = re.search(r"it reads ([\d.]+) to ([\d.]+)\s+in single runs", doc).groups()
    assert (low, high) == (f"{min(bp):.3f}", f"{max(bp):.3f}")
    results = (ROOT / "benchmarks" / "RESULTS.md").read_text()
    long_runs = [bold_ratios(results, "`--sizes 64 --batch 32 --repeats 30 --threads 1 --rules "
                                      "bp fa ss kp brsf`"),
                 bold_ratios(results, "`--sizes 64 --batch 32 --repeats 30 --threads 1 --rules "
                                      "fa ss brsf --group 1`")]
    quoted = " ".join(doc.split())
    for rule in ("fa", "ss", "brsf"):
        first, second = (run[rule] for run in long_runs)
        assert f"{rule} {first} and {second}" in quoted, rule


def test_performance_doc_quotes_the_round_three_record():
    """docs/performance.md's ratios of the rules added in round three are the CPU-time ratios
    of benchmarks/results_round3_rules.json."""
    doc = " ".join((ROOT / "docs" / "performance.md").read_text().split())
    (size,) = json.loads((ROOT / "benchmarks" / "results_round3_rules.json").read_text()
                         )["sizes"].values()
    quoted = dict(re.findall(r"(sa|aa|ia|drtp|dfa_blocks|dfa) ([\d.]+)(?=[, ]| times)",
                             doc.split("The rules added since")[1].split("On a GPU")[0]))
    assert set(quoted) == {"sa", "aa", "ia", "drtp", "dfa", "dfa_blocks"}
    for rule, ratio in quoted.items():
        assert ratio == f"{size[rule]['cpu']['ratio']:.{len(ratio.split('.')[1])}f}", rule


def test_performance_doc_quotes_the_host_bound_record():
    """docs/performance.md's ResNet-18 ratios at batch 2 and 32² are the CPU-time ratios of
    benchmarks/results_host_bound_torch_op.json, and those it gives for the round before
    benchmarks/results_host_bound.json's."""
    doc = " ".join((ROOT / "docs" / "performance.md").read_text().split())

    def ratios(name: str) -> dict:
        (size,) = json.loads((ROOT / "benchmarks" / name).read_text())["sizes"].values()
        return {rule: f"{v['cpu']['ratio']:.2f}" for rule, v in size.items()}

    now = ratios("results_host_bound_torch_op.json")
    part = doc.split("a GPU's bandwidth makes small: ")[1].split(". ")[0]
    quoted = dict(re.findall(r"([a-z_]+|minimal Function) (\d\.\d\d)", part))
    assert quoted == {rule: r for rule, r in now.items() if rule != "native"}
    before = ratios("results_host_bound.json")
    part = doc.split("`benchmarks/results_host_bound.json`: ")[1].split(".)")[0]
    for rule in ("ss", "sign_fixed", "kp", "wm"):
        assert f"{rule} {before[rule]}" in part, rule
    assert f"fa and dfa {before['fa']}" in part and before["fa"] == before["dfa"]


def test_beyond_doc_quotes_the_lstm_cost_record():
    """docs/beyond.md's table of the lstm model's step per rule (its CPU ms and ratios to
    torch's fused nn.LSTM) and the ranges the text draws from it are
    benchmarks/results_sequence_cost.json's."""
    doc = (ROOT / "docs" / "beyond.md").read_text()
    part = doc.split("**What it costs.** The products in Python")[1].split("## ")[0]
    rules = json.loads((ROOT / "benchmarks" / "results_sequence_cost.json").read_text()
                       )["rules"]
    rows = re.findall(r"^\| (nn\.LSTM[^|]*|biograd (\w+)[^|]*) \| (\d+) \| ([\d.]+) \|$", part,
                      re.MULTILINE)
    names = [rule or ("native" if "oneDNN off" not in label else "native, oneDNN off")
             for label, rule, _, _ in rows]
    assert names == list(rules)  # every variant the record has, in its order
    for name, (_, _, ms, ratio) in zip(names, rows, strict=True):
        assert ms == f"{rules[name]['cpu']['median_s'] * 1e3:.0f}", name
        assert ratio == f"{rules[name]['cpu']['ratio']:.2f}", name
    text = " ".join(part.split())
    unfused = rules["native, oneDNN off"]["cpu"]["ratio"]
    through_b = [rules[r]["cpu"]["ratio"] for r in rules
                 if r not in {"native", "native, oneDNN off", "bp", "dfa_blocks", "dfa", "drtp",
                              "aa", "ia"}]
    assert (f"through B_hh costs {min(through_b):.1f} to {max(through_b):.1f} times torch's "
            f"fused step, and {min(through_b) / unfused:.1f} to {max(through_b) / unfused:.1f} "
            f"times torch's own unfused loop (oneDNN off, {unfused:.2f})") in text


def test_host_breakdown_parts_add_up_to_each_rules_extra(one_thread, capsys):
    """benchmarks/host_breakdown.py: in every round, a rule's parts sum to its layer's extra
    over native (so the medians the page quotes split that extra, no part left out)."""
    breakdown = load_benchmark("host_breakdown")
    record = breakdown.main(["--rules", "ss", "dfa", "--rounds", "1", "--calls", "3"])
    assert "| dfa |" in capsys.readouterr().out
    for name, parts in record["parts_us"].items():
        assert set(parts) == {"ss", "dfa"}
        for rule, p in parts.items():
            total = sum(p[k] or 0.0 for k in breakdown.PARTS)
            assert math.isclose(total, p["extra"], rel_tol=1e-9, abs_tol=1e-9), (name, rule)
        assert parts["ss"]["direct"] is None and parts["dfa"]["make"] is None


def test_performance_doc_quotes_the_host_breakdown_record():
    """docs/performance.md's tables of where a layer's extra µs go are host_breakdown.py's own
    tables of benchmarks/results_host_breakdown.json, row for row."""
    breakdown = load_benchmark("host_breakdown")
    record = json.loads((ROOT / "benchmarks" / "results_host_breakdown.json").read_text())
    doc = (ROOT / "docs" / "performance.md").read_text()
    rows = [line for line in breakdown.table(record).splitlines() if line.startswith("| ")]
    assert len(rows) == 2 * (2 + len(record["parts_us"]["Linear 8→8, 2×8 input"]))
    for row in rows:
        assert row in doc, row


def test_compiled_cpu_record_is_quoted_where_the_docs_say():
    """benchmarks/RESULTS.md holds compile_cpu.py's table of
    benchmarks/results_compile_cpu.json, and docs/performance.md's compiled and eager ratios
    per rule are that record's."""
    compile_cpu = load_benchmark("compile_cpu")
    record = json.loads((ROOT / "benchmarks" / "results_compile_cpu.json").read_text())
    results = (ROOT / "benchmarks" / "RESULTS.md").read_text()
    for row in compile_cpu.table(record).splitlines():
        if row.startswith("| "):
            assert row in results, row
    doc = " ".join((ROOT / "docs" / "performance.md").read_text().split())
    section = doc.split("## Compiled on the CPU")[1].split("## ")[0]
    for mode in ("compiled", "eager"):
        quoted = dict(re.findall(r"(\w+) ([\d.]+)",
                                 section.split(f"{mode} step over its own native step: ")[1]
                                 .split(";")[0]))
        assert set(quoted) == set(record["rules"]), mode
        for rule, ratio in quoted.items():
            assert ratio == f"{record['rules'][rule][mode][rule]['ratio']:.2f}", (mode, rule)


@pytest.mark.parametrize("rule", ["dfa", "drtp", "dfa_blocks"])
def test_step_time_compiles_a_graph_breaking_rule_only_alone(rule):
    """Compiled beside another converted model, a rule that breaks the graph at each layer
    slows it (docs/performance.md): step_time.py --compile refuses the mix, before building."""
    step_time = load_benchmark("step_time")
    refusal = rf"--compile: {rule} breaks the graph .*\(--rules {rule}\)"
    with pytest.raises(SystemExit, match=refusal):
        step_time.main(step_time.get_args_parser().parse_args(
            ["--compile", "--rules", "fa", rule, "--sizes", "32"]))


def test_layer_cost_times_each_layer_alone_and_in_a_stack(one_thread, capsys):
    """benchmarks/layer_cost.py: every rule named, both floors (a minimal Function, and one
    with a learned B), alone and per layer of a stack, each extra over native with its ratio
    to the minimal Function's; kp's ratio to the learned-B floor is printed."""
    layer_cost = load_benchmark("layer_cost")
    record = layer_cost.main(["--rules", "fa", "kp", "--rounds", "1", "--calls", "4",
                              "--depth", "2"])
    out = capsys.readouterr().out
    assert "kp over the minimal Function with a learned B" in out
    for kinds in record["layers"].values():
        for kind in ("alone", "stack"):
            rows = kinds[kind]
            assert set(rows) == {"native", layer_cost.MINIMAL, layer_cost.LEARNED, "fa", "kp"}
            assert rows[layer_cost.MINIMAL]["of_minimal"] == 1.0
            assert rows[layer_cost.LEARNED]["of_learned"] == 1.0
            assert all(math.isfinite(r["extra_us"]) for r in rows.values())


def test_step_time_floor_and_narrow_resnet(one_thread):
    """step_time.py --model resnet18-narrow: ResNet-18's 21 convolutions and classifier at
    1/8 of its widths; --floor adds native under a minimal autograd Function, layer by layer,
    timed beside the rules."""
    step_time = load_step_time()
    net = step_time.build("native", model="resnet18-narrow")
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 20 and max(c.out_channels for c in convs) == 8 * step_time.NARROW
    floor = step_time.build(step_time.FLOOR, model="resnet18-narrow")
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(floor(x), net(x))  # the same forward, through the Function
    assert not any(isinstance(m, torch.nn.Conv2d) and type(m) is torch.nn.Conv2d
                   and m in set(floor.modules()) - {c.module for c in floor.modules()
                                                   if hasattr(c, "module")}
                   for m in floor.modules())
    args = step_time.get_args_parser().parse_args(
        ["--model", "resnet18-narrow", "--sizes", "16", "--batch", "2", "--repeats", "1",
         "--warmup", "0", "--rules", "fa", "--floor"])
    timed = step_time.main(args)["sizes"][16]
    assert set(timed) == {"native", "fa", step_time.FLOOR}


def test_performance_doc_quotes_the_layer_cost_record():
    """docs/performance.md and benchmarks/RESULTS.md hold layer_cost.py's tables of
    benchmarks/results_layer_cost.json, row for row."""
    layer_cost = load_benchmark("layer_cost")
    record = json.loads((ROOT / "benchmarks" / "results_layer_cost.json").read_text())
    doc = (ROOT / "docs" / "performance.md").read_text()
    results = (ROOT / "benchmarks" / "RESULTS.md").read_text()
    rows = [line for line in layer_cost.table(record).splitlines()
            if line.startswith("| ") or line.startswith("kp over")]
    assert len(rows) == 2 * (2 + len(record["layers"]["Linear 8→8, 2×8 input"]["alone"]))
    for row in rows:
        assert row in doc, row
        assert row in results, row


def test_the_layer_cost_ab_record_is_shown_and_quoted():
    """benchmarks/results_layer_cost_ab.json alternates the code before and after, three runs
    each; benchmarks/RESULTS.md holds its table, and docs/performance.md's dfa ratios alone,
    before and after, are its runs'."""
    layer_cost = load_benchmark("layer_cost")
    record = json.loads((ROOT / "benchmarks" / "results_layer_cost_ab.json").read_text())
    assert [run["code"] for run in record["runs"]] == ["before", "after"] * 3
    assert layer_cost.ab_table(record) in (ROOT / "benchmarks" / "RESULTS.md").read_text()
    doc = " ".join((ROOT / "docs" / "performance.md").read_text().split())
    quoted = re.search(r"dfa alone read ([\d., ]+) before and ([\d., ]+) after on the Conv2d; "
                       r"([\d., ]+) before and ([\d., ]+) after on the Linear", doc).groups()
    expected = [", ".join(f"{run['record']['layers'][name]['alone']['dfa']['of_minimal']:.2f}"
                          for run in record["runs"] if run["code"] == code)
                for name in record["runs"][0]["record"]["layers"] for code in ("before", "after")]
    assert [q.strip(" ,") for q in quoted] == expected


def test_performance_doc_quotes_the_narrow_dfa_ab_record():
    """docs/performance.md's narrow-step ratios of dfa and drtp before and after, and of the
    floor and fa beside them, are benchmarks/results_host_bound_narrow_ab_dfa.json's runs."""
    record = json.loads((ROOT / "benchmarks" / "results_host_bound_narrow_ab_dfa.json")
                        .read_text())
    doc = " ".join((ROOT / "docs" / "performance.md").read_text().split())
    part = doc.split("(`benchmarks/results_host_bound_narrow_ab_dfa.json`")[1].split(". ")[0]

    def ratios(rule, code):
        return [f"{run['ratio'][rule]:.2f}" for run in record["runs"] if run["code"] == code]

    for rule in ("dfa", "drtp"):
        quoted = re.search(rf"{rule} ([\d.]+) and ([\d.]+) before, ([\d.]+) and ([\d.]+) after",
                           part).groups()
        assert list(quoted) == ratios(rule, "before") + ratios(rule, "after"), rule
    for rule in ("minimal Function", "fa"):
        every = sorted(ratios(rule, "before") + ratios(rule, "after"))
        assert f"{rule} {every[0]} to {every[-1]}" in part, rule


@pytest.mark.parametrize("record, phrase", [
    ("results_host_bound_narrow.json", "its step over native's: "),
    ("results_host_bound_narrow_fused.json", "the fused step over native's: "),
    ("results_host_bound_narrow_rerun.json", "the rerun's step over native's: ")])
def test_performance_doc_quotes_the_narrow_host_bound_record(record, phrase):
    """docs/performance.md's ratios of the narrow ResNet-18's step per rule are the CPU-time
    ratios of benchmarks/results_host_bound_narrow.json, with fused SGD of
    results_host_bound_narrow_fused.json, and of its rerun, results_host_bound_narrow_rerun.json."""
    doc = " ".join((ROOT / "docs" / "performance.md").read_text().split())
    result = json.loads((ROOT / "benchmarks" / record).read_text())
    (size,) = result["sizes"].values()
    assert (result.get("optimizer") == "SGD fused") == ("fused" in record)
    part = doc.split(phrase)[1].split(". ")[0]
    quoted = dict(re.findall(r"([a-z_]+|minimal Function) (\d\.\d\d)", part))
    assert set(quoted) == set(size) - {"native"}
    for rule, ratio in quoted.items():
        assert ratio == f"{size[rule]['cpu']['ratio']:.2f}", rule


def test_performance_doc_quotes_the_before_and_after_record():
    """docs/performance.md's before-and-after ranges of the narrow step are the least and
    greatest of the alternate runs of the code before and after in
    benchmarks/results_host_bound_narrow_ab.json (after: the commits it names as quoted for
    the rule), for every rule that record times."""
    doc = " ".join((ROOT / "docs" / "performance.md").read_text().split())
    record = json.loads((ROOT / "benchmarks" / "results_host_bound_narrow_ab.json").read_text())
    quoted = {rule: rest for rule, *rest in re.findall(
        r"([a-z_]+) (\d\.\d\d) to (\d\.\d\d) before, (\d\.\d\d) to (\d\.\d\d) after", doc)}
    assert set(quoted) == {rule for run in record["runs"] for rule in run["ratio"]}
    for rule, got in quoted.items():
        before = [run["ratio"][rule] for run in record["runs"]
                  if run["code"] == "before" and rule in run["ratio"]]
        after = [run["ratio"][rule] for run in record["runs"]  # the code the page quotes
                 if run["code"] == "after" and run["commit"] in record["quoted"][rule]]
        assert len(before) >= 3 and len(after) >= 3, rule
        assert got == [f"{min(before):.2f}", f"{max(before):.2f}",
                       f"{min(after):.2f}", f"{max(after):.2f}"], rule


@pytest.mark.parametrize("name", ["results_host_bound_narrow.json",
                                  "results_host_bound_narrow_fused.json",
                                  "results_host_bound_narrow_rerun.json"])
def test_results_hold_the_narrow_host_bound_record(name):
    """benchmarks/RESULTS.md shows the narrow step's records as step_time.py printed them."""
    record = json.loads((ROOT / "benchmarks" / name).read_text())
    results = (ROOT / "benchmarks" / "RESULTS.md").read_text()
    assert load_step_time().table(record) in results


def test_step_time_fused_steps_every_variant_with_fused_sgd(one_thread):
    """step_time.py --fused: every variant's optimiser is SGD(fused=True), which steps as the
    default SGD does, and the record says which ran."""
    step_time = load_step_time()
    x, y = torch.randn(2, 3, 16, 16), torch.tensor([1, 2])
    variants = {fused: step_time.Variant("kp", torch.device("cpu"), model="resnet18-narrow",
                                         size=16, fused=fused) for fused in (False, True)}
    assert [v.opt.defaults["fused"] for v in variants.values()] == [None, True]
    for v in variants.values():
        v.step(x, y)
    for a, b in zip(variants[False].model.parameters(), variants[True].model.parameters(),
                    strict=True):
        torch.testing.assert_close(a, b)
    args = step_time.get_args_parser().parse_args(
        ["--model", "resnet18-narrow", "--sizes", "16", "--batch", "2", "--repeats", "1",
         "--warmup", "0", "--rules", "kp", "--fused"])
    result = step_time.main(args)
    assert result["optimizer"] == "SGD fused"
    assert "SGD fused" in step_time.table(result)


def test_step_time_each_times_every_rule_in_processes_of_its_own(one_thread):
    """step_time.py --each N: each rule (and the floor) in N processes of its own, the
    process of median ratio reported, every process's ratio kept."""
    step_time = load_step_time()
    args = step_time.get_args_parser().parse_args(
        ["--model", "resnet18-narrow", "--sizes", "16", "--batch", "2", "--repeats", "1",
         "--warmup", "0", "--threads", "1", "--rules", "fa", "--floor", "--each", "2"])
    timed = step_time.main(args)["sizes"][16]
    assert set(timed) == {"native", "fa", step_time.FLOOR}
    for rule in ("fa", step_time.FLOOR):
        ratios = timed[rule]["process_ratios"]
        assert len(ratios) == 2 and timed[rule]["cpu"]["ratio"] == min(ratios)


def load_step_parts():
    spec = importlib.util.spec_from_file_location("step_parts",
                                                  ROOT / "benchmarks/step_parts.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_step_parts_splits_step_times_step(one_thread):
    """step_parts.py times the four parts of step_time.py's step (forward with the loss,
    backward, optimiser, after_step), which together train as that step does."""
    step_parts, step_time = load_step_parts(), load_step_time()
    x, y = torch.randn(2, 3, 16, 16), torch.tensor([1, 2])
    split, whole = (step_time.Variant("sign_fixed", torch.device("cpu"),
                                      model="resnet18-narrow", size=16) for _ in range(2))
    for _ in range(2):
        parts = step_parts.parts_of(split, x, y)
        whole.step(x, y)
        assert len(parts) == len(step_parts.PARTS) and all(t >= 0 for t in parts)
    for a, b in zip(split.model.state_dict().values(), whole.model.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)
    result = step_parts.main(["--repeats", "1", "--warmup", "0", "--rules", "fa", "kp",
                              "--threads", "1"])
    assert list(result["us"]) == ["native", "fa", "kp"]
    assert all(set(parts) == set(step_parts.PARTS) for parts in result["us"].values())
    assert all(t > 0 for t in result["us"]["fa"].values())


def test_performance_doc_holds_the_step_parts_record():
    """docs/performance.md and benchmarks/RESULTS.md show step_parts.py's record as it
    printed it."""
    step_parts = load_step_parts()
    record = json.loads((ROOT / "benchmarks" / "results_step_parts.json").read_text())
    for page in ("docs/performance.md", "benchmarks/RESULTS.md"):
        assert step_parts.table(record) in (ROOT / page).read_text(), page
    # what the page says of the optimiser part on the rules whose optimiser steps no B
    same = [rule for rule in record["us"]
            if rule not in ("native", "kp", "alignment", "sa", "aa", "ia")]
    off = [(record["us"][r]["optimiser"] - record["us"]["native"]["optimiser"]) / 1e3
           for r in same]
    doc = " ".join((ROOT / "docs" / "performance.md").read_text().split())
    assert f"reads {min(off):+.2f} to {max(off):+.2f} ms from native's" in doc
