"""experiments/time_study.py: RESULTS.md's section on time, its verdicts computed from run
folders written here (what the engine writes), with errors and angles chosen so that each
verdict is known beforehand, and e-prop's memory read from the benchmark's record."""

import json
import re
from pathlib import Path

import pytest
import yaml
from checks import experiments_importable

ROOT = Path(__file__).resolve().parents[1]
IH, HH = "encoder.rnn.per_weight.weight_ih_l0", "encoder.rnn.per_weight.weight_hh_l0"


@pytest.fixture(scope="module")
def study():
    with experiments_importable():
        import time_study
        yield time_study


def write_run(folder: Path, rule: str, seed: int, error: float, angles: dict[str, float],
              **config) -> None:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(
        {"rule": rule, "seed": seed, "epochs": 2, "last_rule": "bp", "data": "fashion-mnist",
         **config}))
    lines = [{"epoch": e, "rule": rule, "seed": seed, "val_top1": 100 - error - (2 - e),
              "epoch_seconds": 30.0, "elapsed_seconds": 30.0 * e,
              "weight_angles": {**angles, "fc": 0.0},
              "gradient_angles": {name: value / 2 for name, value in angles.items()}}
             for e in (1, 2)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (folder / "status.json").write_text(json.dumps({"status": "finished", "message": ""}))


def make(out: Path, lstm: dict[str, float], rlif: dict[str, float]) -> None:
    angles = {"bp": (0.0, 0.0), "ss": (40.0, 50.0), "fa": (80.0, 86.0), "kp": (10.0, 20.0)}
    for seed, wobble in enumerate((-0.1, 0.0, 0.1)):
        for rule, error in lstm.items():
            ih, hh = angles[rule]
            write_run(out / "lstm" / f"{rule}-seed{seed}", rule, seed, error + wobble,
                      {IH: ih, HH: hh}, model="lstm", model_options={})
        for folder, error in rlif.items():
            rule = {"rlif_random": "fa", "rlif_adaptive": "kp"}.get(folder, "bp")
            write_run(out / folder / f"{rule}-seed{seed}", rule, seed, error + wobble,
                      {"lif.input": 0.0, "lif.recurrent": 0.0}, model="rlif")


def section(study, out: Path) -> str:
    from biograd.results import load_run

    def load(name):
        found = {}
        for path in sorted((out / name).glob("*-seed*")):
            run = load_run(path)
            found.setdefault(run.rule, []).append(run)
        return found

    return "\n".join(study.section(load))


def verdicts(text: str) -> dict[str, str]:
    return dict(re.findall(r"^- \*\*(.+?)\*\* \(.*?\): \*\*(.+?)\*\*", text, flags=re.M))


def test_time_verdicts_read_from_the_runs(study, tmp_path):
    make(tmp_path, {"bp": 12.0, "ss": 12.2, "fa": 14.0, "kp": 12.5},
         {"rlif_bptt": 15.0, "rlif_symmetric": 15.5, "rlif_random": 18.0,
          "rlif_adaptive": 15.6})
    text = section(study, tmp_path)
    assert verdicts(text) == {"Does SS stay near BP in time?": "yes",
                              "Does FA fall far behind in time?": "yes",
                              "Does e-prop with symmetric feedback come near BPTT?": "yes",
                              "Does random feedback cost e-prop accuracy?": "yes"}
    # each weight's angle, input and recurrent apart, and its update's to bp's (half, here)
    assert "| ss | 12.20 ± 0.10 | 3 of 3 | +0.20 (±0.20) | 40.0 ± 0.0 | 50.0 ± 0.0 | " \
           "20.0 ± 0.0 | 25.0 ± 0.0 |" in text
    assert "| e-prop, random (readout on fa) | 18.00 ± 0.10 | 3 of 3 | +3.00 (±0.20) |" in text


def test_time_verdicts_the_other_way(study, tmp_path):
    make(tmp_path, {"bp": 12.0, "ss": 13.5, "fa": 12.4, "kp": 12.5},
         {"rlif_bptt": 15.0, "rlif_symmetric": 19.0, "rlif_random": 19.1})
    text = section(study, tmp_path)
    assert verdicts(text) == {"Does SS stay near BP in time?": "no",
                              "Does FA fall far behind in time?": "no",
                              "Does e-prop with symmetric feedback come near BPTT?": "no",
                              "Does random feedback cost e-prop accuracy?": "no"}
    assert "| e-prop, adaptive (readout on kp) | — | 0 of 0 | — | — |" in text


def test_memory_is_the_benchmarks_record(study):
    record = json.loads((ROOT / "benchmarks" / "results_eprop_cost.json").read_text())
    line = study.memory_line()
    for mode in ("eprop", "bptt"):
        assert f"{record['rows']['28'][mode]['saved_bytes'] / 2**20:.2f} MiB" in line
    assert (record["rows"]["448"]["eprop"]["saved_bytes"]
            == record["rows"]["28"]["eprop"]["saved_bytes"])  # flat, as the line says


def test_not_run_says_how(study):
    text = "\n".join(study.section(lambda name: {}))
    assert "--studies lstm" in text and "--studies rlif_bptt,rlif_symmetric" in text


def test_reproduce_trains_what_the_section_reads(study):
    import reproduce

    assert set(study.RLIF) | {"lstm"} <= set(reproduce.STUDIES)
    assert reproduce.STUDIES["rlif_bptt"][2][-1] == "{learning: bptt}"
    for folder, last in (("rlif_symmetric", "bp"), ("rlif_random", "fa"),
                         ("rlif_adaptive", "kp")):
        flags = reproduce.STUDIES[folder][2]
        assert "{learning: eprop}" in flags and flags[flags.index("--last-rule") + 1] == last
        assert reproduce.STUDIES[folder][1] == (last,)  # the folder's rule is its readout's
