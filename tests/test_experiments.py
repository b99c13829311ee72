"""experiments/results.py: RESULTS.md, its numbers and its verdicts, from run folders alone.

The run folders are written by the test (what the engine writes: config.yaml, metrics.jsonl,
status.json), with errors and angles chosen so that each verdict is known beforehand.
"""

import importlib.util
import json
import re
import shlex
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["conv1", "layer1.0.conv1", "layer2.0.conv1", "layer3.0.conv1", "fc"]


@pytest.fixture(scope="module")
def results():
    spec = importlib.util.spec_from_file_location("results", ROOT / "experiments" / "results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_run(folder: Path, rule: str, seed: int, error: float, layer_angles: list[float],
              start_angles: list[float] | None = None, epoch_seconds: float = 30.0,
              **config_changes):
    """A finished 2-epoch run whose final test error is `error` and whose final weight angles
    are `layer_angles` (the classifier, on bp, at 0); with `start_angles`, an angles.jsonl
    with those at step 0 and the final ones at the last step."""
    folder.mkdir(parents=True)
    config = {"rule": rule, "seed": seed, "epochs": 2, "last_rule": "bp", "model": "resnet_small",
              "model_options": {"width": 32}, "batch_size": 128, "optimizer": "sgd", "lr": 0.1,
              "schedule": "cosine", "momentum": 0.9, "weight_decay": 5e-4, **config_changes}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    angles = dict(zip(LAYERS, [*layer_angles, 0.0], strict=True))
    lines = [{"epoch": e, "rule": rule, "seed": seed, "val_top1": 100 - error - (2 - e),
              "epoch_seconds": epoch_seconds, "elapsed_seconds": epoch_seconds * e,
              "weight_angles": angles,
              "gradient_angles": dict(zip(LAYERS[:-1], GRADIENT_ANGLES.get(rule, [0.0] * 4),
                                          strict=True)),
              "mean_weight_angle": sum(layer_angles) / len(layer_angles)} for e in (1, 2)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (folder / "status.json").write_text(json.dumps({"status": "finished", "message": ""}))
    if start_angles is not None:
        steps = [{"step": step, "epoch": epoch,
                  "weight_angles": dict(zip(LAYERS, [*a, 0.0], strict=True))}
                 for step, epoch, a in ((0, 0.0, start_angles), (100, 2.0, layer_angles))]
        (folder / "angles.jsonl").write_text("".join(json.dumps(x) + "\n" for x in steps))


def make_runs(out: Path, errors: dict, angles: dict, start: dict | None = None) -> None:
    for data in ("fashion-mnist", "mnist"):
        for rule, error in errors[data].items():
            for seed, wobble in enumerate((-0.1, 0.0, 0.1)):
                write_run(out / data / f"{rule}-seed{seed}", rule, seed, error + wobble,
                          angles[rule], (start or {}).get(rule))


GRADIENT_ANGLES = {"ss": [40.0, 30.0, 20.0, 0.0]}  # the last under the classifier, on bp
ANGLES = {"bp": [0.0] * 4, "ss": [50.0, 45.0, 38.0, 33.0], "fa": [88.0] * 4,
          "kp": [2.0, 3.0, 4.0, 5.0], "wm": [4.0, 5.0, 6.0, 7.0],
          # the alignment family in its fixed points' order: sa < aa < ia
          "sa": [2.0, 3.0, 2.0, 3.0], "aa": [10.0, 20.0, 15.0, 15.0],
          "ia": [60.0, 70.0, 65.0, 65.0],
          "dfa": [88.0] * 4, "drtp": [88.0] * 4, "dfa_blocks": [0.0] * 4}


def verdicts(text: str) -> list[str]:
    return re.findall(r"^- \d[ab]?\. .*?: \*\*(.+?)\*\*", text, flags=re.M)


def test_every_claim_holds_when_the_runs_say_so(results, tmp_path):
    errors = {"fashion-mnist": {"bp": 9.0, "ss": 9.3, "fa": 14.0, "kp": 9.2, "wm": 9.4},
              "mnist": {"bp": 0.9, "ss": 1.0, "fa": 1.6, "kp": 0.9, "wm": 1.0}}
    make_runs(tmp_path / "runs", errors, ANGLES)
    page = results.write_results(tmp_path / "runs", tmp_path / "out" / "RESULTS.md").read_text()
    assert verdicts(page) == ["holds"] * 5
    # mean ± sample std over the three seeds, next to the published number
    assert "| ss | 9.30 ± 0.10 | 3 | 9.69 |" in page
    assert "| kp | 9.20 ± 0.10 | 3 | — |" in page
    assert "SS − BP = +0.30 points" in page and "FA − BP = +5.00 points" in page
    assert "from 33.0° to 50.0°" in page  # the classifier (on bp) left out
    assert "grows from 0.0° under the classifier to 40.0° at the first layer (conv1" in page
    for data in ("fashion-mnist", "mnist"):
        for name in ("angles-per-layer", "angle-over-training", "accuracy"):
            figure = tmp_path / "out" / "figures" / f"{data}-{name}.png"
            assert figure.stat().st_size > 0 and f"figures/{figure.name}" in page


def test_claims_that_the_runs_contradict_do_not_hold(results, tmp_path):
    errors = {"fashion-mnist": {"bp": 9.0, "ss": 10.5, "fa": 9.5, "kp": 9.2, "wm": 9.4},
              "mnist": {"bp": 0.9, "ss": 1.6, "fa": 1.0, "kp": 0.9, "wm": 1.0}}
    angles = {**ANGLES, "ss": [33.0, 38.0, 45.0, 50.0], "kp": [20.0] * 4}
    make_runs(tmp_path / "runs", errors, angles)
    page = results.write_results(tmp_path / "runs", tmp_path / "RESULTS.md").read_text()
    assert verdicts(page) == ["does not hold", "does not hold", "does not hold",
                              "does not hold", "partly holds"]


@pytest.mark.parametrize(("start", "verdict"), [
    ([37.0, 37.0, 37.0, 37.0], "cannot be told at this scale"),  # no layer moved 3°
    ([45.0, 45.0, 45.0, 45.0], "does not hold"),  # they moved, and not into the claimed order
])
def test_ss_depth_order_needs_weights_that_moved(results, tmp_path, start, verdict):
    errors = {"fashion-mnist": {"bp": 9.0, "ss": 9.3, "fa": 14.0, "kp": 9.2, "wm": 9.4},
              "mnist": {"bp": 0.9, "ss": 1.0, "fa": 1.6, "kp": 0.9, "wm": 1.0}}
    angles = {**ANGLES, "ss": [36.5, 37.5, 38.0, 37.0]}  # early third 36.5°, late third 37.0°
    make_runs(tmp_path / "runs", errors, angles, start={"ss": start})
    page = results.write_results(tmp_path / "runs", tmp_path / "RESULTS.md").read_text()
    assert verdicts(page)[3] == verdict
    assert f"the layers started at {start[0]:.1f}° to {start[0]:.1f}°" in page


def test_no_runs_is_a_clear_error(results, tmp_path):
    with pytest.raises(SystemExit, match=r"reproduce\.py"):
        results.write_results(tmp_path, tmp_path / "RESULTS.md")


def study_verdicts(text: str) -> dict[str, str]:
    """{question: verdict} of the studies' bold questions."""
    return dict(re.findall(r"^- \*\*(.+?)\*\* \(.*?\): \*\*(.+?)\*\*", text, flags=re.M))


def test_the_studies_answer_each_question_from_their_runs(results, tmp_path):
    out = tmp_path / "runs"
    errors = {"fashion-mnist": {"bp": 9.0, "ss": 10.0, "fa": 14.0, "dfa": 13.0, "kp": 9.2,
                                "sign_fixed": 11.0},
              "mnist": {"bp": 0.9, "ss": 1.0, "fa": 1.6, "dfa": 1.2}}
    make_runs(out, errors, {**ANGLES, "dfa": [88.0] * 4, "sign_fixed": [38.0] * 4})
    studies = {"long": {"ss": 9.1, "bp": 9.0},  # the gap narrows from 1.0 to 0.1
               "unshared": {"kp": 11.0, "fa": 20.0, "ss": 12.0, "bp": 10.0},
               "dale": {"sign_fixed": 13.0, "fa": 18.0, "ss": 11.0, "bp": 10.0},
               "vit": {"kp": 12.5, "fa": 20.0, "ss": 13.0, "bp": 12.0}}
    for study, rules in studies.items():
        for rule, error in rules.items():
            for seed, wobble in enumerate((-0.1, 0.0, 0.1)):
                write_run(out / study / f"{rule}-seed{seed}", rule, seed, error + wobble,
                          ANGLES.get(rule, [88.0] * 4))
    for seed in range(3):  # dfa on the ViT diverged; at a lower lr (vit_dfa) it trained
        folder = out / "vit" / f"dfa-seed{seed}"
        write_run(folder, "dfa", seed, 50.0, [88.0] * 4)
        (folder / "status.json").write_text(json.dumps(
            {"status": "diverged",
             "message": f"the loss became non-finite at epoch 1, step {200 + seed}"}))
        write_run(out / "vit_dfa" / f"dfa-seed{seed}", "dfa", seed, 15.0 + seed / 10,
                  [88.0] * 4)
    page = results.write_results(out, tmp_path / "out" / "RESULTS.md").read_text()
    answers = study_verdicts(page)
    assert answers == {
        "Does SS's gap to BP narrow with training?": "it narrows",
        "Do early layers' SS angles rise above late ones'?": "yes",  # 50° against 33°
        "Does DFA rank against FA as in biotorch's table?": "yes, on both",
        "Does SS's advantage over FA survive without weight sharing?": "it survives",
        "Does SS still beat FA under Dale's law?": "yes",
        "Is the paper's ordering the same for attention?": "yes",
        # the sections of this round's rules, none of which ran here
        "Does the placement fix DFA on attention, as TinyDFA reports?": "cannot be told yet",
        **{f"Is {rule}'s setting robust from the ResNet to the ViT?": "cannot be told yet"
           for rule in ("sa", "aa", "ia")},
    }
    assert "FA − SS = +8.00 points unshared" in page and "+4.00 with weight sharing" in page
    assert "sign_fixed +2.00" in page  # what Dale's law costs it
    assert "kp +1.80 (±0.20), fa +6.00 (±0.20)" in page  # and unsharing, each rule
    assert "from best to worst: bp 12.00%, kp 12.50%, ss 13.00%, fa 20.00%" in page
    # each seed's own message, not the first seed's for all
    assert "dfa diverged in 3 of 3 seeds at lr 0.1:" in page
    for seed in range(3):
        assert (f"  - seed {seed}: the loss became non-finite at epoch 1, step {200 + seed}"
                in page)
    # dfa at the lower lr: in the placement section's table, and its best over the lrs
    assert "| 0.1 | vit | 12.00 ± 0.10 | diverged (3 of 3 seeds) | — |" in page
    assert "Best dfa: 15.10 ± 0.10% at lr 0.1 (dfa − BP +3.10 points" in page
    vit = page.split("### Attention")[1].split("###")[0]
    assert "Not finished yet" in vit and "dfa_blocks (0 of 3 seeds)" in vit
    assert "## The alignment family (Kunin et al. 2020): sa, aa, ia\n\nNot run yet" in page


def test_unfinished_studies_say_what_is_missing(results, tmp_path):
    out = tmp_path / "runs"
    errors = {"fashion-mnist": {"bp": 9.0, "ss": 9.3, "fa": 14.0}, "mnist": {"bp": 0.9}}
    make_runs(out, errors, ANGLES)
    write_run(out / "unshared" / "ss-seed0", "ss", 0, 12.0, ANGLES["ss"])
    page = results.write_results(out, tmp_path / "out" / "RESULTS.md").read_text()
    assert "Not finished yet" in page and "fa (0 of 3 seeds)" in page
    assert "### Dale's law" in page and "Not run yet." in page


def test_a_studys_report_covers_its_own_rules_only(tmp_path):
    # the report runs `compare --resume` over the folder: any rule it names but the study
    # did not train would be trained then
    spec = importlib.util.spec_from_file_location("reproduce",
                                                  ROOT / "experiments" / "reproduce.py")
    reproduce = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reproduce)
    todo = reproduce.jobs(tmp_path, "0,1,2", ["fashion-mnist"], list(reproduce.STUDIES))
    folders: dict[str, list] = {}
    for folder, _, command in todo:
        folders.setdefault(folder, []).append(command)
    for folder, commands in folders.items():
        report = reproduce.report_command(commands)
        named = report[report.index("--rules") + 1].split(",")
        trained = {c[c.index("--rules") + 1] for c in commands}
        assert set(named) == trained, folder
    assert folders.keys() == {"fashion-mnist", *reproduce.STUDIES}


# --- reproduce.py, with the job runner replaced (nothing trains) ------------------------------

def load_reproduce():
    spec = importlib.util.spec_from_file_location("reproduce",
                                                  ROOT / "experiments" / "reproduce.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def reproduce(tmp_path, monkeypatch):
    """reproduce.py with its committed records (experiments/runs) under tmp_path/records."""
    module = load_reproduce()
    monkeypatch.setattr(module, "RUNS", tmp_path / "records")
    monkeypatch.setattr(module, "run_report", lambda command: 0)
    return module


def fake_jobs(reproduce, monkeypatch, error: float = 10.0) -> list[str]:
    """Replace the job runner by one that writes each run the job names (finished, `error`)
    and records the job as having trained; returns the names of the jobs run."""
    calls = []

    def run_job(name, command, logs, threads):
        calls.append(name)
        folder, rules = reproduce.job_scope(command)
        seeds = [int(s) for s in command[command.index("--seeds") + 1].split(",")]
        for rule in rules or reproduce.default_rules():
            for seed in seeds:
                path = reproduce.run_dir(folder, rule, seed, len(seeds) > 1)
                if not path.exists():
                    write_run(path, rule, seed, error, ANGLES.get(rule, [45.0] * 4))
        return {"name": name, "command": shlex.join(command), "exit": 0, "seconds": 60.0,
                "trained": True}

    monkeypatch.setattr(reproduce, "run_job", run_job)
    return calls


def no_jobs(*args):
    raise AssertionError("a job ran")


def test_a_job_records_whether_it_trained_and_a_failure_says_why(reproduce, tmp_path, capsys):
    folder, logs = tmp_path / "out" / "long", tmp_path / "logs"
    logs.mkdir()
    trains = ("import json, pathlib, sys; run = pathlib.Path(sys.argv[sys.argv.index('--out') "
              "+ 1]) / 'bp-seed0'; run.mkdir(parents=True, exist_ok=True); "
              "(run / 'metrics.jsonl').open('a').write(json.dumps({'epoch': 1}) + '\\n')")
    job = reproduce.run_job("long-bp", [sys.executable, "-c", trains, "--out", str(folder),
                                        "--rules", "bp"], logs, 1)
    assert job["trained"] and (job["epochs_before"], job["epochs_after"]) == (0, 1)
    # a job that finds its runs finished, beside another rule's run that changes meanwhile
    idle = reproduce.run_job("long-ss", [sys.executable, "-c", trains, "--out", str(folder),
                                         "--rules", "ss"], logs, 1)
    assert not idle["trained"] and idle["epochs_before"] == idle["epochs_after"] == 0
    assert "long-ss: exit 0" in capsys.readouterr().out
    # a job that fails: the console gets its log's last line, where the reason is
    fails = ("import sys; print('starting'); sys.exit('biograd: error: Fashion-MNIST not found:"
             " install it: `apt install dataset-fashion-mnist` (Debian)')")
    job = reproduce.run_job("long-fa", [sys.executable, "-c", fails, "--out", str(folder),
                                        "--rules", "fa"], logs, 1)
    line = capsys.readouterr().out.strip()
    assert job["exit"] == 1 and line.startswith("long-fa: exit 1 after")
    assert "`apt install dataset-fashion-mnist`" in line and str(logs / "long-fa.log") in line


def test_a_stopped_session_keeps_its_wall_time_up_to_its_last_finished_job(
        reproduce, monkeypatch, tmp_path):
    calls = []

    def run_job(name, command, logs, threads):
        calls.append(name)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C during the second job
        return {"name": name, "command": shlex.join(command), "exit": 0, "seconds": 1.0,
                "trained": True}

    monkeypatch.setattr(reproduce, "run_job", run_job)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        reproduce.main(["--fresh", "--jobs", "1", "--data", "digits", "--studies", "long",
                        "--out", str(out), "--results", str(tmp_path / "RESULTS.md")])
    session = json.loads((out / "experiment.json").read_text())["sessions"][-1]
    assert [job["name"] for job in session["runs"]] == ["digits"]
    assert session["wall_seconds"] > 0 and "finished" not in session


def test_report_only_trains_nothing_and_names_the_missing_runs(reproduce, monkeypatch,
                                                               tmp_path, capsys):
    for rule in reproduce.default_rules():
        for seed in (0, 1):
            if (rule, seed) != ("bp", 1):  # a run the digits report would train
                write_run(reproduce.RUNS / "digits" / f"{rule}-seed{seed}", rule, seed, 1.0,
                          ANGLES.get(rule, [45.0] * 4))
    for rule in ("ss", "bp"):
        for seed in (0, 1):
            write_run(reproduce.RUNS / "long" / f"{rule}-seed{seed}", rule, seed, 9.0,
                      ANGLES[rule])
    reports = []
    monkeypatch.setattr(reproduce, "run_report", lambda command: reports.append(command) or 0)
    monkeypatch.setattr(reproduce, "run_job", no_jobs)
    out = tmp_path / "out"
    assert reproduce.main(["--report-only", "--data", "digits", "--studies", "long", "--seeds",
                           "0,1", "--out", str(out), "--results",
                           str(tmp_path / "RESULTS.md")]) == 0
    runs = 2 * len(reproduce.default_rules())
    assert f"digits: no report: 1 of {runs} runs missing or not finished (bp-seed1)" \
        in capsys.readouterr().out
    assert [c[c.index("--out") + 1] for c in reports] == [str(out / "long")]
    assert not (out / "digits" / "bp-seed1").exists()


def test_fresh_replaces_only_the_folders_it_trained(reproduce, monkeypatch, tmp_path):
    records = reproduce.RUNS
    for rule in ("ss", "bp"):
        for seed in (0, 1):
            write_run(records / "long" / f"{rule}-seed{seed}", rule, seed, 9.0, ANGLES[rule])
            write_run(records / "digits" / f"{rule}-seed{seed}", rule, seed, 5.0, ANGLES[rule])
    old = {"started": "2026-01-01 00:00:00 UTC", "jobs": 2, "threads": 1,
           "machine": {"cpu": "CPU", "cores": 2, "python": "3", "torch": "2"},
           "script": "python experiments/reproduce.py", "wall_seconds": 600.0,
           "finished": "2026-01-01 00:10:00 UTC", "runs": [
               {"name": "long-bp", "command": "python -m biograd compare --out /r/long "
                "--rules bp --seeds 0,1", "exit": 0, "seconds": 600.0},
               {"name": "digits", "command": "python -m biograd compare --out /r/digits "
                "--seeds 0,1", "exit": 0, "seconds": 600.0}]}
    (records / "experiment.json").write_text(json.dumps(
        {"sessions": [old], "report_commands": {"long": "the long report"}, "notes": "kept"}))
    fake_jobs(reproduce, monkeypatch, error=2.0)
    reproduce.main(["--fresh", "--data", "digits", "--studies", "none", "--seeds", "0,1",
                    "--out", str(tmp_path / "out"), "--results", str(tmp_path / "RESULTS.md")])
    assert sorted(p.name for p in (records / "long").iterdir()) == [
        "bp-seed0", "bp-seed1", "ss-seed0", "ss-seed1"]  # not trained: kept as it was
    digits = sorted(p.name for p in (records / "digits").iterdir())
    assert len(digits) == 2 * len(reproduce.default_rules())  # trained: this session's runs
    assert not list((records / "digits").rglob("*.pt"))  # records only, no checkpoints
    record = json.loads((records / "experiment.json").read_text())
    assert record["sessions"][0] == old and len(record["sessions"]) == 2
    assert record["report_commands"]["long"] == "the long report"
    assert "--out" in record["report_commands"]["digits"] and record["notes"] == "kept"
    page = (tmp_path / "RESULTS.md").read_text()  # from the records: both folders
    assert "## digits (sklearn)" in page and "### Longer training" in page
    # the digits runs now are session 2's alone; long's still session 1's
    digits, long = page.split("## digits (sklearn)")[1], page.split("### Longer training")[1]
    assert "Trained in session 2.\n" in digits and "Trained in session 1: bp;" in long


@pytest.mark.parametrize(("existing", "seeds", "advice"), [
    (["bp-seed0", "bp-seed1"], "0", "give two seeds or more"),  # bp would be a third seed
    (["bp"], "0,1", "give one seed"),
])
def test_seeds_that_would_mix_run_names_are_refused(reproduce, monkeypatch, tmp_path, capsys,
                                                    existing, seeds, advice):
    for name in existing:
        write_run(reproduce.RUNS / "long" / name, "bp", 0, 9.0, ANGLES["bp"])
    monkeypatch.setattr(reproduce, "run_job", no_jobs)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as stop:
        reproduce.main(["--data", "none", "--studies", "long", "--seeds", seeds, "--out",
                        str(out), "--results", str(tmp_path / "RESULTS.md")])
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert stop.value.code == 2 and advice in message and str(reproduce.RUNS / "long") in message
    assert not out.exists()  # refused before anything was written


@pytest.mark.parametrize(("data", "studies", "message"), [
    ("fashion_mnist", "none", "unknown data sets fashion_mnist: choose from fashion-mnist, "
     "mnist, digits"),
    ("none", "none", "nothing to run"),
])
def test_unknown_data_sets_are_refused(reproduce, monkeypatch, tmp_path, capsys, data,
                                       studies, message):
    monkeypatch.setattr(reproduce, "run_job", no_jobs)
    with pytest.raises(SystemExit) as stop:
        reproduce.main(["--data", data, "--studies", studies, "--out", str(tmp_path / "out"),
                        "--results", str(tmp_path / "RESULTS.md")])
    assert stop.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "RESULTS.md").exists()


# --- RESULTS.md from the record of the sessions ------------------------------------------------

def session(started: str, jobs: list[dict], wall: float | None = None) -> dict:
    record = {"started": started, "jobs": 2, "threads": 1, "script": "python reproduce.py",
              "machine": {"cpu": "CPU", "cores": 2, "python": "3", "torch": "2"}, "runs": jobs}
    if wall is not None:
        record.update(wall_seconds=wall, finished="later")
    return record


def job(folder: str, rule: str, seconds: float, **flag) -> dict:
    return {"name": f"{folder}-{rule}", "exit": 0, "seconds": seconds, **flag,
            "command": f"python -m biograd compare --rules {rule} --out /o/{folder}"}


MAIN = {"fashion-mnist": {"bp": 9.0, "ss": 9.3, "fa": 14.0, "kp": 9.2, "wm": 9.4},
        "mnist": {"bp": 0.9, "ss": 1.0, "fa": 1.6, "kp": 0.9, "wm": 1.0}}


def write_study(out: Path, study: str, rules: list[str], **options):
    for rule in rules:
        for seed in range(3):
            write_run(out / study / f"{rule}-seed{seed}", rule, seed, 10.0, ANGLES[rule],
                      **options)


def test_wall_time_counts_the_sessions_that_trained_and_estimates_an_interrupted_one(
        results, tmp_path):
    out = tmp_path / "runs"
    make_runs(out, MAIN, ANGLES)
    write_study(out, "long", ["ss", "bp"])
    write_study(out, "vit_dfa_slow", ["fa"])
    write_study(out, "unshared", ["bp"], unshare=True)
    main_jobs = [job(d, r, 600.0) for d in MAIN for r in MAIN[d]]
    sessions = [
        session("2026-01-01 00:00:00 UTC", main_jobs, wall=3600.0),
        # interrupted: no wall time; 2 jobs of 15 minutes, 2 at a time
        session("2026-01-02 00:00:00 UTC", [job("long", "ss", 900.0), job("long", "bp", 900.0)]),
        # found everything finished (before jobs said whether they trained: 2 s each)
        session("2026-01-02 00:20:00 UTC", [*(job(d, r, 2.0) for d in MAIN for r in MAIN[d]),
                                            job("vit_dfa_slow", "fa", 2.0)], wall=30.0),
        # a job that says it trained nothing, however long it ran
        session("2026-01-03 00:00:00 UTC", [job("unshared", "bp", 100.0, trained=False)],
                wall=110.0),
    ]
    (out / "experiment.json").write_text(json.dumps({"sessions": sessions}))
    page = results.write_results(out, tmp_path / "out" / "RESULTS.md").read_text()
    # 60 minutes measured + 15 estimated; README quotes this sentence (tests/test_docs.py)
    assert re.search(r"Wall time: 75 minutes in 2 sessions? ", page)
    assert ("session 2 (started 2026-01-02 00:00:00 UTC) was interrupted and recorded no wall "
            "time: about 15 minutes, an estimate" in page)
    assert "the next session started 20 minutes after it" in page
    assert "Session 3 (started 2026-01-02 00:20:00 UTC) is not counted" in page
    assert "Session 4 (started 2026-01-03 00:00:00 UTC) is not counted" in page
    assert ("The 3 runs of vit_dfa_slow (fa) were trained outside the recorded sessions: the "
            "recorded jobs for them trained nothing, finding them finished (session 3: 2 s)"
            in page)
    assert "The 3 runs of unshared (bp) were trained outside the recorded sessions" in page
    assert "The 3 runs of long" not in page


def test_sessions_side_by_side_count_their_overlap_once(results, tmp_path):
    """Sessions started while another ran share the cores: the wall time is their union. A
    session stopped before any job finished counts nothing and says so."""
    out = tmp_path / "runs"
    make_runs(out, MAIN, ANGLES)
    write_study(out, "long", ["ss", "bp"])
    write_study(out, "unshared", ["bp"], unshare=True)
    main_jobs = [job(d, r, 600.0) for d in MAIN for r in MAIN[d]]
    stopped = session("2026-01-01 00:00:00 UTC", [])
    stopped.update(wall_seconds=0.0)  # recorded as it went, no job finished, no "finished"
    sessions = [
        stopped,
        session("2026-01-01 00:10:00 UTC", main_jobs, wall=3600.0),  # 00:10 to 01:10
        session("2026-01-01 00:40:00 UTC", [job("long", "ss", 900.0)], wall=3600.0),  # to 01:40
        session("2026-01-01 01:20:00 UTC", [job("unshared", "bp", 900.0)], wall=600.0),  # to 01:30
    ]
    (out / "experiment.json").write_text(json.dumps({"sessions": sessions}))
    page = results.write_results(out, tmp_path / "out" / "RESULTS.md").read_text()
    assert re.search(r"Wall time: 90 minutes in 3 sessions ", page)  # 00:10 to 01:40
    assert ("Sessions 2, 3, 4 ran side by side on the same cores: their 40 minutes of overlap "
            "are counted once.") in page
    assert ("Session 1 (started 2026-01-01 00:00:00 UTC) is not counted: it was stopped before "
            "any job finished, and a later session continued its runs.") in page
    assert results.side_by_side(sessions, [2, 4]) == ([], 4200.0)  # apart: nothing shared


def test_times_are_compared_within_a_session_only(results, tmp_path):
    out = tmp_path / "runs"
    make_runs(out, {**MAIN, "fashion-mnist": {**MAIN["fashion-mnist"], "dfa": 12.0}},
              {**ANGLES, "dfa": [88.0] * 4})
    write_study(out, "long", ["ss", "bp"], epoch_seconds=10.0)
    write_study(out, "unshared", ["kp", "fa", "ss", "bp"], epoch_seconds=70.0, unshare=True)
    write_study(out, "vit", ["fa", "ss", "bp"], epoch_seconds=12.0, model="vit_small")
    sessions = [
        session("2026-01-01 00:00:00 UTC", [job(d, r, 600.0) for d in MAIN for r in MAIN[d]],
                wall=3600.0),
        session("2026-01-02 00:00:00 UTC", [
            job("fashion-mnist", "dfa", 600.0), job("long", "ss", 600.0),
            job("long", "bp", 600.0),
            *(job("unshared", r, 900.0) for r in ("kp", "fa", "ss", "bp"))], wall=3000.0),
        session("2026-01-03 00:00:00 UTC", [job("vit", r, 600.0) for r in ("fa", "ss", "bp")],
                wall=1000.0),
    ]
    (out / "experiment.json").write_text(json.dumps({"sessions": sessions}))
    page = results.write_results(out, tmp_path / "out" / "RESULTS.md").read_text()
    assert ("The same recipe's bp epoch took a median 30.0 s in session 1 (fashion-mnist), "
            "10.0 s in session 2 (long)." in page)
    # unshared and long in one session: a ratio; the ViT's has no session in common
    assert ("`unshared` keeps 3 epochs (5.7 M weights); an epoch of it took 7.0 times the "
            "ResNet's (bp's epochs in session 2: a median 70.0 s against 10.0 s in long)"
            in page)
    assert ("bp's epoch took a median 12.0 s here in session 3, the ResNet's 30.0 s in session "
            "1 (fashion-mnist): different sessions" in page)
    assert "three times as long" not in page and "a third of the ResNet's" not in page
    assert ("Trained in session 1: bp, fa, ss, kp, wm; session 2: dfa. Minutes per run from "
            "different sessions are not comparable" in page)
    assert page.count("Trained in session 1.\n") == 1  # MNIST's table: one session


def test_a_data_folder_without_runs_is_reported_not_a_crash(results, tmp_path):
    out = tmp_path / "runs"
    make_runs(out, {"fashion-mnist": {}, "mnist": MAIN["mnist"]}, ANGLES)
    (out / "fashion-mnist" / "bp").mkdir(parents=True)  # a job that failed before its config
    (out / "fashion-mnist" / "bp" / "train.log").write_text("ERROR Fashion-MNIST not found\n")
    page = results.write_results(out, tmp_path / "out" / "RESULTS.md").read_text()
    assert "## Fashion-MNIST\n\nNo runs in fashion-mnist/ yet" in page
    assert "## MNIST" in page


# --- this round's rules: the alignment family, DRTP, DFA between blocks -------------------------

def write_seeds(folder: Path, rule: str, error: float, angles: list[float] | None = None,
                diverged: int = 0, seeds: int = 3, **config_changes):
    """`seeds` runs of `rule` in `folder` (errors error - 0.1, error, error + 0.1: mean
    `error`, std 0.1), the first `diverged` of them diverged."""
    for seed, wobble in list(enumerate((-0.1, 0.0, 0.1)))[:seeds]:
        run = folder / f"{rule}-seed{seed}"
        write_run(run, rule, seed, error + wobble, angles or ANGLES[rule], **config_changes)
        if seed < diverged:
            (run / "status.json").write_text(json.dumps(
                {"status": "diverged", "message": f"non-finite at step {20 + seed}"}))


FAMILY_ERRORS = {"fashion-mnist": {"bp": 9.0, "fa": 14.0, "kp": 9.2, "wm": 9.4, "sa": 9.4,
                                   "aa": 9.6, "ia": 11.0},
                 "mnist": {"bp": 0.9, "fa": 1.6, "kp": 0.9, "wm": 1.0, "sa": 1.0, "aa": 1.0,
                           "ia": 1.2}}
FAMILY_QUESTION = "Does the alignment family keep the paper-style ordering?"


def family_page(results, tmp_path, errors=FAMILY_ERRORS, angles=ANGLES, broken=()) -> str:
    """RESULTS.md of a main comparison with the family; `broken`: (data set, rule, seeds that
    diverged)."""
    out = tmp_path / "runs"
    for data, rules in errors.items():
        for rule, error in rules.items():
            diverged = next((n for d, r, n in broken if (d, r) == (data, rule)), 0)
            write_seeds(out / data, rule, error, angles[rule], diverged=diverged)
    return results.write_results(out, tmp_path / "out" / "RESULTS.md").read_text()


def test_the_family_keeps_the_ordering_when_the_runs_say_so(results, tmp_path):
    page = family_page(results, tmp_path)
    assert study_verdicts(page)[FAMILY_QUESTION] == "holds"
    assert ("- Fashion-MNIST: **kept**. sa − BP +0.40 points (±0.20), final mean angle "
            "2.5° ± 0.0; aa − BP +0.60 points (±0.20), final mean angle 15.0° ± 0.0; ia − BP "
            "+2.00 points (±0.20), final mean angle 65.0° ± 0.0; FA − BP +5.00. Within claim "
            "1's 0.5 points of BP: sa." in page)
    # the main table: the family's angles; the per-layer table: the learned feedback, the
    # classifier (on bp) left out
    assert "| sa | 9.40 ± 0.10 | 3 | — | 2.5 ± 0.0 |" in page
    assert "| layer | kp | wm | sa | aa | ia |" in page
    assert "| conv1 | 2.0 | 4.0 | 2.0 | 10.0 | 60.0 |" in page
    assert "| fc |" not in page
    assert "| final mean angle | 3.5 ± 0.0 | 5.5 ± 0.0 | 2.5 ± 0.0 | 15.0 ± 0.0 | 65.0 ± 0.0 |" \
        in page


@pytest.mark.parametrize(("errors", "angles", "verdict", "why"), [
    # ia no better than FA on MNIST, beyond the noise
    ({**FAMILY_ERRORS, "mnist": {**FAMILY_ERRORS["mnist"], "ia": 1.5}}, ANGLES,
     "holds on one data set only", "ia not below FA beyond the noise (FA − ia +0.10)"),
    # aa's and ia's angles the wrong way round, on both
    (FAMILY_ERRORS, {**ANGLES, "aa": ANGLES["ia"], "ia": ANGLES["aa"]}, "does not hold",
     "the angles not in the order sa < aa < ia"),
    # sa does not align
    (FAMILY_ERRORS, {**ANGLES, "sa": [12.0] * 4}, "does not hold", "sa's angle not under 10°"),
])
def test_the_family_ordering_breaks_where_the_runs_break_it(results, tmp_path, errors, angles,
                                                            verdict, why):
    page = family_page(results, tmp_path, errors, angles)
    assert study_verdicts(page)[FAMILY_QUESTION] == verdict
    assert "**not kept**" in page and f"Not kept: {why}." in page


def test_the_family_ordering_with_runs_diverged_or_missing(results, tmp_path):
    errors = {**FAMILY_ERRORS, "mnist": {r: e for r, e in FAMILY_ERRORS["mnist"].items()
                                         if r != "ia"}}
    page = family_page(results, tmp_path, errors, broken=[("fashion-mnist", "ia", 1)])
    assert study_verdicts(page)[FAMILY_QUESTION] == \
        "does not hold so far (MNIST not finished yet)"
    assert "ia diverged in 1 of 3 seeds" in page and "Not kept: ia diverged." in page
    assert "- MNIST: not finished yet (bp, fa, sa, aa and ia needed)." in page


def test_drtp_is_measured_as_dfa_is(results, tmp_path):
    errors = {data: {**rules, "dfa": 12.0, "drtp": 13.0} for data, rules in MAIN.items()}
    out = tmp_path / "runs"
    make_runs(out, errors, ANGLES)
    page = results.write_results(out, tmp_path / "out" / "RESULTS.md").read_text()
    assert "| drtp | 13.00 ± 0.10 | 3 | — | — (B is not W's shape) |" in page
    assert ("- Fashion-MNIST: DRTP (the one-hot targets in place of DFA's output error) 13.00 ± "
            "0.10% (DRTP − BP +4.00 points, ±0.20; DRTP − DFA +1.00, ±0.20). The angle of "
            "DRTP's weight updates to backprop's, layer by layer: conv1 0.0°" in page)


# --- Kunin et al.'s robustness: one setting on the ResNet and the ViT ---------------------------

ROBUST = "Is {}'s setting robust from the ResNet to the ViT?"


def test_robustness_both_ways_and_with_runs_missing(results, tmp_path):
    out = tmp_path / "runs"
    make_runs(out, {**MAIN, "fashion-mnist": {**MAIN["fashion-mnist"], "sa": 9.5, "aa": 9.6,
                                              "ia": 11.0}}, ANGLES)
    vit = out / "vit"
    write_seeds(vit, "bp", 12.0)
    write_seeds(vit, "sa", 13.4)  # the gap 0.5 -> 1.4: within 1 point more
    write_seeds(vit, "aa", 15.0)  # 0.6 -> 3.0: grows by 2.4
    write_seeds(vit, "ia", 50.0, diverged=1)
    page = results.write_results(out, tmp_path / "out" / "RESULTS.md").read_text()
    answers = study_verdicts(page)
    assert answers[ROBUST.format("sa")] == "robust at this scale"
    assert answers[ROBUST.format("aa")] == "not robust: its gap to bp grows by 2.40 points"
    assert answers[ROBUST.format("ia")] == "not robust: diverged on the ViT (1 of 3 seeds)"
    assert ("| sa | 9.50 ± 0.10 | +0.50 (±0.20) | 2.5 ± 0.0 | 13.40 ± 0.10 | +1.40 (±0.20) | "
            "2.5 ± 0.0 |" in page)
    assert "| ia | 11.00 ± 0.10 | +2.00 (±0.20) | 65.0 ± 0.0 | diverged (1 of 3 seeds) |" in page

    # one seed of sa on the ViT: too few to tell, and said so
    for seed in (1, 2):
        for file in (vit / f"sa-seed{seed}").iterdir():
            file.unlink()
        (vit / f"sa-seed{seed}").rmdir()
    page = results.write_results(out, tmp_path / "out" / "RESULTS.md").read_text()
    assert study_verdicts(page)[ROBUST.format("sa")] == "cannot be told yet"
    assert "- In study vit: not finished yet" in page and "sa (1 of 3 seeds)" in page
    assert "13.30 ± 0.00 (1 of 3 seeds)" in page  # seed 0 alone


KUNIN = "Did {} need the recipe's scaled setting?"


@pytest.mark.parametrize(("sa_error", "sa_angles", "verdict"), [
    (9.5, [40.0] * 4, "yes"),  # at Kunin's coefficients sa has not aligned in 3 epochs
    (10.5, ANGLES["sa"], "yes"),  # aligned, but 1 point worse
    (9.6, [5.0] * 4, "no"),  # within the noise, aligned
])
def test_kunins_own_coefficients(results, tmp_path, sa_error, sa_angles, verdict):
    out = tmp_path / "runs"
    make_runs(out, {**MAIN, "fashion-mnist": {**MAIN["fashion-mnist"], "sa": 9.5,
                                              "ia": 11.0}}, ANGLES)
    write_seeds(out / "kunin", "sa", sa_error, sa_angles, rule_options={})
    write_seeds(out / "kunin", "ia", 80.0, seeds=2, diverged=2, rule_options={})
    page = results.write_results(out, tmp_path / "out" / "RESULTS.md").read_text()
    answers = study_verdicts(page)
    assert answers[KUNIN.format("sa")] == verdict
    # two of ia's seeds diverged: answered before its third ends, which is still named
    assert answers[KUNIN.format("ia")] == "yes"
    assert "At Kunin's coefficients it diverged in 2 of 2 seeds" in page
    assert "  - seed 1: non-finite at step 21" in page
    assert "ia (2 of 3 seeds)" in page.split("### The alignment family at Kunin")[1]


def test_kunins_study_not_run(results, tmp_path):
    out = tmp_path / "runs"
    make_runs(out, MAIN, ANGLES)
    page = results.write_results(out, tmp_path / "out" / "RESULTS.md").read_text()
    section = page.split("### The alignment family at Kunin et al.'s own coefficients")[1]
    assert section.split("## Commands")[0].split("\n### ")[0].strip().endswith("Not run yet.")


# --- DFA's placement on the ViT ------------------------------------------------------------------

PLACEMENT = "Does the placement fix DFA on attention, as TinyDFA reports?"


def placement_page(results, tmp_path, blocks: dict[float, tuple[float, int]],
                   dfa: dict[float, tuple[float, int]]) -> str:
    """RESULTS.md with the ViT's bp at 12% (lr 0.1) and dfa and dfa_blocks at each lr:
    {lr: (error, seeds diverged)}."""
    out = tmp_path / "runs"
    make_runs(out, MAIN, ANGLES)
    folders = {0.1: "vit", 0.02: "vit_dfa", 0.005: "vit_dfa_slow"}
    write_seeds(out / "vit", "bp", 12.0, model="vit_small")
    for rule, by_lr in (("dfa_blocks", blocks), ("dfa", dfa)):
        for lr, (error, diverged) in by_lr.items():
            write_seeds(out / folders[lr], rule, error, diverged=diverged, lr=lr,
                        model="vit_small")
    return results.write_results(out, tmp_path / "out" / "RESULTS.md").read_text()


DFA_ON_VIT = {0.1: (80.0, 3), 0.02: (74.0, 0), 0.005: (53.0, 0)}


@pytest.mark.parametrize(("blocks", "verdict"), [
    # trains where dfa diverged, within 5 points of bp
    ({0.1: (15.0, 0), 0.02: (16.0, 0), 0.005: (17.0, 0)}, "yes"),
    # far better than dfa, still 18 points behind bp (TinyDFA's own pattern)
    ({0.1: (30.0, 0), 0.02: (35.0, 0), 0.005: (40.0, 0)},
     "better than dfa, but not within 5 points of bp"),
    # diverges where dfa does, and worse than dfa's best elsewhere
    ({0.1: (80.0, 1), 0.02: (70.0, 0), 0.005: (60.0, 0)}, "no"),
    # diverges everywhere
    ({0.1: (80.0, 3), 0.02: (80.0, 2), 0.005: (80.0, 1)}, "no"),
])
def test_placement_verdict_both_ways(results, tmp_path, blocks, verdict):
    page = placement_page(results, tmp_path, blocks, DFA_ON_VIT)
    assert study_verdicts(page)[PLACEMENT] == verdict
    assert "| 0.02 | vit_dfa | — | 74.00 ± 0.10 |" in page
    assert "Best dfa: 53.00 ± 0.10% at lr 0.005 (dfa − BP +41.00 points, ±0.20)." in page
    assert '"BP 29.8 against DFA 52.0 (DFA through the blocks) and 93.3 (inside them)"' in page
    assert "check the paper before using it as a target" in page


def test_placement_waits_for_every_learning_rate(results, tmp_path):
    page = placement_page(results, tmp_path, {0.1: (15.0, 0), 0.02: (16.0, 0)}, DFA_ON_VIT)
    assert study_verdicts(page)[PLACEMENT] == "cannot be told yet"
    assert ("- In vit_dfa_slow (lr 0.005): not finished yet (`python experiments/reproduce.py` "
            "continues them): dfa_blocks (0 of 3 seeds)." in page)
    assert "| 0.005 | vit_dfa_slow | — | 53.00 ± 0.10 | — |" in page


def test_the_new_jobs_count_in_the_wall_time(results, tmp_path):
    out = tmp_path / "runs"
    make_runs(out, MAIN, ANGLES)
    write_seeds(out / "kunin", "ia", 80.0, diverged=3, rule_options={})
    write_seeds(out / "vit_dfa", "dfa_blocks", 20.0, lr=0.02)
    kunin = {"name": "kunin-ia", "exit": 0, "seconds": 600.0, "trained": True,
             "command": "python -m biograd compare --rule-options '{}' --rules ia --out /o/kunin"}
    sessions = [
        session("2026-01-01 00:00:00 UTC", [job(d, r, 600.0) for d in MAIN for r in MAIN[d]],
                wall=3600.0),
        session("2026-01-02 00:00:00 UTC", [kunin, job("vit_dfa", "dfa_blocks", 900.0,
                                                       trained=True)], wall=1200.0),
    ]
    (out / "experiment.json").write_text(json.dumps({"sessions": sessions}))
    page = results.write_results(out, tmp_path / "out" / "RESULTS.md").read_text()
    assert "Wall time: 80 minutes in 2 sessions" in page
    assert "trained outside the recorded sessions" not in page
    assert "vit_dfa: Trained in session 2." in page
