"""biograd.results: run folders in, report.md / results.csv / figures out.

The run folders are fakes written here; every expected number is computed from the fake
metrics, never typed in.
"""

import csv
import json
import math
import random
import statistics

import pytest
import yaml
from PIL import Image

from biograd.results import Run, figures, load_run, plot_run, write_report

LAYERS = ["features.0", "features.3", "features.6", "classifier.1", "classifier.4"]
EPOCHS = 4
# (rule, seed, epochs written, status.json or None)
RUNS = [
    ("bp", 0, EPOCHS, {"status": "finished", "message": ""}),
    ("ss", 0, EPOCHS, {"status": "finished", "message": ""}),
    ("ss", 1, EPOCHS, None),  # no status.json: inferred
    ("fa", 0, 2, {"status": "diverged", "message": "train loss is NaN at epoch 2"}),
    ("kp", 3, EPOCHS, {"status": "finished", "message": ""}),
]
FIGURES = ["accuracy.png", "angles_per_layer.png", "angle_over_training.png"]


def fake_metrics(rule: str, seed: int, epochs: int) -> list[dict]:
    rng = random.Random(f"{rule}/{seed}")
    lines, elapsed = [], 0.0
    for epoch in range(1, epochs + 1):
        angles = {name: 0.0 if rule == "bp" or name == LAYERS[-1] else rng.uniform(10, 80)
                  for name in LAYERS}
        if rule == "kp" and epoch == epochs:
            angles["features.3"] = math.nan  # a layer whose angle could not be measured
        on_rule = [v for name, v in angles.items() if name != LAYERS[-1] and rule != "bp"]
        finite = [v for v in on_rule if math.isfinite(v)]
        seconds = rng.uniform(1, 2)
        elapsed += seconds
        line = {
            "epoch": epoch, "rule": rule, "seed": seed,
            "train_loss": rng.uniform(0.1, 2), "train_top1": rng.uniform(10, 99),
            "val_loss": rng.uniform(0.1, 2), "val_top1": rng.uniform(10, 99),
            "val_top5": rng.uniform(50, 100), "lr": 0.1,
            "weight_angles": angles,
            "gradient_angles": {} if rule == "bp" else {n: rng.uniform(0, 90) for n in LAYERS[:-1]},
            "mean_weight_angle": sum(finite) / len(finite) if finite else None,
            "mean_gradient_angle": None if rule == "bp" else rng.uniform(0, 90),
            "epoch_seconds": seconds, "images_per_second": 1000.0, "elapsed_seconds": elapsed,
        }
        if rule == "fa" and epoch == epochs:
            line["train_loss"] = math.nan  # diverged
        if rule == "ss" and seed == 1 and epoch == epochs:
            del line["val_top5"]  # a failed evaluation: the key is missing
        lines.append(line)
    return lines


def write_run(folder, rule, seed, epochs, status):
    folder.mkdir(parents=True)
    config = {"rule": rule, "seed": seed, "epochs": EPOCHS, "lr": 0.1,
              "model": {"name": "small_cnn", "width": 16}, "data": "digits"}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    metrics = fake_metrics(rule, seed, epochs)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    if status is not None:
        (folder / "status.json").write_text(json.dumps(status))
    return metrics


def best(metrics, key):
    return max(m[key] for m in metrics if m.get(key) is not None and math.isfinite(m[key]))


def final(metrics, key):
    return [m[key] for m in metrics if m.get(key) is not None][-1]


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    metrics = {}
    for rule, seed, epochs, status in RUNS:
        metrics[rule, seed] = write_run(root / f"{rule}-{seed}", rule, seed, epochs, status)
    runs = [load_run(root / f"{rule}-{seed}") for rule, seed, _, _ in RUNS]
    written = write_report(runs, root / "compare")
    return root, runs, metrics, written


def table_rows(report: str) -> dict[str, list[str]]:
    rows = {}
    for line in report.splitlines():
        if line.startswith("| `"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0].strip("`")] = cells
    return rows


def test_load_run(compared):
    _, runs, metrics, _ = compared
    by = {(run.rule, run.seed): run for run in runs}
    assert by["fa", 0].status == "diverged"
    assert by["fa", 0].message == "train loss is NaN at epoch 2"
    assert len(by["fa", 0].metrics) == 2
    assert by["ss", 1].status == "finished"  # inferred: all configured epochs, finite losses
    assert by["ss", 1].final("val_top5") == metrics["ss", 1][-2]["val_top5"]
    assert list(by["kp", 3].final_layers()) == LAYERS  # network order kept
    assert math.isnan(by["bp", 0].final("mean_weight_angle"))  # written as null


def test_write_report_files(compared):
    root, _, _, written = compared
    out = root / "compare"
    assert set(written) == {"report.md", "results.csv", *FIGURES}
    assert all(path.parent == out and path.is_file() for path in written.values())
    for name in FIGURES:
        with Image.open(out / name) as image:
            image.verify()
        with Image.open(out / name) as image:
            width, height = image.size
            assert image.format == "PNG"
            assert 500 <= width <= 2500 and 300 <= height <= 1500, (name, image.size)
            assert 100 <= round(image.info["dpi"][0]) <= 150
    report = written["report.md"].read_text()
    for name in FIGURES:
        assert f"]({name})" in report  # embedded with a relative link


def test_report_table(compared):
    _, _, metrics, written = compared
    report = written["report.md"].read_text()
    assert report.startswith("# ")
    assert "small_cnn" in report and "digits" in report and f"{EPOCHS} epochs" in report
    rows = table_rows(report)
    assert list(rows) == ["bp", "ss", "fa", "kp"]  # the order given
    for rule, seed in [("bp", 0), ("fa", 0), ("kp", 3)]:
        row, m = rows[rule], metrics[rule, seed]
        assert row[2:6] == [f"{best(m, 'val_top1'):.2f}", f"{final(m, 'val_top1'):.2f}",
                            f"{best(m, 'val_top5'):.2f}", f"{final(m, 'val_top5'):.2f}"]
        assert row[8] == f"{final(m, 'elapsed_seconds'):.1f}"
    assert rows["bp"][6] == rows["bp"][7] == "–"  # no layer on the rule: no mean angles
    assert rows["kp"][6] == f"{final(metrics['kp', 3], 'mean_weight_angle'):.1f}"
    assert rows["kp"][7] == f"{final(metrics['kp', 3], 'mean_gradient_angle'):.1f}"
    assert "angle to bp's gradient" in report
    assert rows["fa"][9] == "diverged" and "train loss is NaN at epoch 2" in report
    # two seeds: mean ± sample std, with n noted
    ss = [metrics["ss", 0], metrics["ss", 1]]
    assert rows["ss"][1] == "2 (0, 1)"
    for column, (pick, key) in zip([2, 3, 5], [(best, "val_top1"), (final, "val_top1"),
                                               (final, "val_top5")], strict=True):
        values = [pick(m, key) for m in ss]
        expected = f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"
        assert rows["ss"][column] == expected
    assert "sample standard deviation" in report


def test_results_csv(compared):
    _, _, metrics, written = compared
    with written["results.csv"].open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["rule"], int(r["seed"])) for r in rows] == [(r, s) for r, s, _, _ in RUNS]
    for row in rows:
        m = metrics[row["rule"], int(row["seed"])]
        assert float(row["best_val_top1"]) == best(m, "val_top1")
        assert float(row["final_val_top5"]) == final(m, "val_top5")
        assert float(row["seconds"]) == final(m, "elapsed_seconds")
        assert "±" not in "".join(row.values())
    fa = next(r for r in rows if r["rule"] == "fa")
    assert fa["status"] == "diverged" and fa["epochs_done"] == "2"
    assert math.isnan(float(next(r for r in rows if r["rule"] == "bp")["final_mean_weight_angle"]))


def test_plot_run(compared, tmp_path):
    root, runs, _, _ = compared
    paths = plot_run(root / "kp-3")  # into the run folder by default
    assert [p.parent for p in paths] == [root / "kp-3"] * len(paths)
    names = {p.name for p in paths}
    assert {"accuracy.png", "loss.png", "angles_per_layer.png"} <= names
    paths = plot_run(runs[3], tmp_path / "figures")  # a Run, the diverged one, elsewhere
    for path in paths:
        assert path.parent == tmp_path / "figures"
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size[0] >= 500


def test_not_a_run_folder(tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        load_run(tmp_path / "missing")
    with pytest.raises(ValueError, match=r"no config\.yaml") as err:
        load_run(tmp_path)
    assert "\n" not in str(err.value)
    (tmp_path / "config.yaml").write_text("rule: ss\nseed: 0\n")
    with pytest.raises(ValueError, match=r"no metrics\.jsonl"):
        load_run(tmp_path)
    (tmp_path / "config.yaml").write_text("rule: [ss\n")
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_run(tmp_path)
    (tmp_path / "config.yaml").write_text("- a list\n")
    with pytest.raises(ValueError, match="not a mapping"):
        load_run(tmp_path)
    (tmp_path / "config.yaml").write_text("rule: ss\nseed: 0\nepochs: 3\n")
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\nnot json\n{"epoch": 3}\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2: not a JSON object"):
        load_run(tmp_path)


def test_partial_run(tmp_path):
    """A run cut short: the last line half written, an epoch repeated after a resume."""
    (tmp_path / "config.yaml").write_text("rule: ss\nseed: 0\nepochs: 5\n")
    lines = [{"epoch": 1, "val_top1": 10.0}, {"epoch": 2, "val_top1": 20.0},
             {"epoch": 2, "val_top1": 25.0}]
    (tmp_path / "metrics.jsonl").write_text(
        "".join(json.dumps(m) + "\n" for m in lines) + '{"epoch": 3, "val_')
    run = load_run(tmp_path)
    assert isinstance(run, Run)
    assert [m["epoch"] for m in run.metrics] == [1, 2]
    assert run.final("val_top1") == 25.0 and math.isnan(run.final("val_top5"))
    assert run.status == "incomplete"
    written = write_report([run], tmp_path / "compare")
    assert "| `ss` | 0 | 25.00 | 25.00 | – | – | – | – | incomplete |" in (
        written["report.md"].read_text())


def test_run_without_epochs(tmp_path):
    """A run that diverged inside its first epoch: a status, no metrics line."""
    run_dir = tmp_path / "wm-0"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("rule: wm\nseed: 0\nepochs: 3\n")
    (run_dir / "status.json").write_text('{"status": "diverged", "message": "NaN at step 7"}')
    run = load_run(run_dir)
    assert run.metrics == [] and run.status == "diverged" and math.isnan(run.seconds)
    assert len(plot_run(run)) == 4
    other = tmp_path / "bp-0"
    write_run(other, "bp", 0, 1, None)  # and one with a single epoch
    written = write_report([load_run(other), run], tmp_path / "compare")
    rows = table_rows(written["report.md"].read_text())
    assert rows["wm"][2:] == ["–"] * 6 + ["diverged"]
    assert "NaN at step 7" in written["report.md"].read_text()


def test_angles_logged_every_few_steps(tmp_path):
    """angles.jsonl (--angle-every) gives the angle-over-training curve its points."""
    folder = tmp_path / "kp"
    write_run(folder, "kp", 0, 2, {"status": "finished", "message": ""})
    steps = [{"step": s, "epoch": s / 4, "mean_weight_angle": 90.0 - 10 * s,
              "weight_angles": {"conv": 90.0 - 10 * s}} for s in range(9)]
    text = "".join(json.dumps(r) + "\n" for r in steps)
    (folder / "angles.jsonl").write_text(text + json.dumps(steps[3]) + "\n" + '{"step": 9, "ep')
    run = load_run(folder)
    assert [r["step"] for r in run.steps] == list(range(9))  # a repeat kept once, a cut line not
    assert run.angle_series() == ([s / 4 for s in range(9)], [90.0 - 10 * s for s in range(9)])
    plain = tmp_path / "bp"
    write_run(plain, "bp", 0, 2, None)
    assert load_run(plain).steps == []
    assert load_run(plain).angle_series() == load_run(plain).series("mean_weight_angle")
    written = write_report([run], tmp_path / "compare")
    assert written["angle_over_training.png"].stat().st_size > 0


def test_the_angle_figure_draws_the_step_records_and_a_single_point(tmp_path, monkeypatch):
    # training.md: angles.jsonl, "which the angle-over-training figures then use"
    from biograd.results import figures

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"rule": "fa", "epochs": 1, "seed": 0}))
    (run / "metrics.jsonl").write_text(json.dumps(
        {"epoch": 1, "val_top1": 50.0, "train_loss": 1.0, "mean_weight_angle": 80.0,
         "mean_gradient_angle": 60.0, "weight_angles": {"0": 80.0}}) + "\n")
    (run / "angles.jsonl").write_text("".join(json.dumps(
        {"step": s, "epoch": s / 4, "mean_weight_angle": 90.0 - s,
         "weight_angles": {"0": 90.0 - s}}) + "\n" for s in range(5)))
    drawn = {}

    def keep(fig, path):
        drawn[path.name] = [(list(line.get_xdata()), line.get_marker())
                            for line in fig.axes[0].lines if len(line.get_xdata())]
        return path

    monkeypatch.setattr(figures, "_save", keep)
    plot_run(run, tmp_path / "figures")
    lines = drawn["angle_over_training.png"]
    assert ([0.0, 0.25, 0.5, 0.75, 1.0], "None") in lines  # the layer and the mean, by step
    assert ([1], "o") in lines  # the gradient angle's one epoch: a visible point


def test_runs_of_one_rule_with_other_recipes_are_not_averaged(tmp_path):
    runs = []
    for folder, seed, dale in (("a", 0, None), ("b", 1, None), ("c", 0, 0.8)):
        write_run(tmp_path / folder, "ss", seed, EPOCHS, None)
        config = yaml.safe_load((tmp_path / folder / "config.yaml").read_text())
        config.update(dale=dale, out=str(tmp_path / folder), workers=seed)  # settings differ too
        (tmp_path / folder / "config.yaml").write_text(yaml.safe_dump(config))
        runs.append(load_run(tmp_path / folder))
    report = write_report(runs, tmp_path / "compare")["report.md"].read_text()
    rows = table_rows(report)
    assert set(rows) == {"ss, dale=none", "ss, dale=0.8"}
    assert rows["ss, dale=none"][1] == "2 (0, 1)" and rows["ss, dale=0.8"][1] == "0"


def test_a_compare_folder_names_the_run_folders_it_holds(compared):
    root = compared[0]
    with pytest.raises(ValueError, match=r"holds the run folders .*kp-3.*give one of them"):
        load_run(root)


def test_a_long_title_is_wrapped_inside_the_figure():
    fig, ax = figures._figure(7.5, 4.8)
    ax.plot([1, 2], [1, 2])
    figures._finish(ax, "Angles during training, ss, seed 0: " + "a long task summary " * 8,
                    "epoch", "angle")
    fig.canvas.draw()
    box = ax.title.get_window_extent()
    assert len(ax.title.get_text().splitlines()) > 1
    assert box.x0 >= 0 and box.x1 <= fig.bbox.width


def test_the_accuracy_figure_says_validation_once(compared, tmp_path, monkeypatch):
    titles = []
    finish = figures._finish
    monkeypatch.setattr(figures, "_finish", lambda ax, title, x, y, **kw: (
        titles.append((title, y)), finish(ax, title, x, y, **kw))[-1])
    figures.accuracy_figure({"ss": compared[1][1:3]}, tmp_path / "accuracy.png")
    assert titles == [("Validation top-1 per epoch", "validation top-1 (%)")]


def test_a_key_a_runs_config_lacks_counts_as_its_default(tmp_path):
    runs = []
    for folder, seed, extra in (("a", 0, {"dale_balance": False}), ("b", 1, {})):
        write_run(tmp_path / folder, "ss", seed, EPOCHS, None)
        config = yaml.safe_load((tmp_path / folder / "config.yaml").read_text())
        config.update(extra, rule_options={"wm": {"samples": 8, "rate": 0.1}} if seed else
                      {"wm": {"rate": 0.1, "samples": 8}},  # one mapping, two key orders
                      lr=1 if seed else 1.0)  # one number, two notations
        (tmp_path / folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        runs.append(load_run(tmp_path / folder))
    report = write_report(runs, tmp_path / "compare")["report.md"].read_text()
    assert table_rows(report)["ss"][1] == "2 (0, 1)"  # one row: the seeds of one recipe
