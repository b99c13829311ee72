"""experiments/results.py: RESULTS.md, its numbers and its verdicts, from run folders alone.

The run folders are written by the test (what the engine writes: config.yaml, metrics.jsonl,
status.json), with errors and angles chosen so that each verdict is known beforehand.
"""

import importlib.util
import json
import re
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
              start_angles: list[float] | None = None):
    """A finished 2-epoch run whose final test error is `error` and whose final weight angles
    are `layer_angles` (the classifier, on bp, at 0); with `start_angles`, an angles.jsonl
    with those at step 0 and the final ones at the last step."""
    folder.mkdir(parents=True)
    config = {"rule": rule, "seed": seed, "epochs": 2, "last_rule": "bp", "model": "resnet_small",
              "model_options": {"width": 32}, "batch_size": 128, "optimizer": "sgd", "lr": 0.1,
              "schedule": "cosine", "momentum": 0.9, "weight_decay": 5e-4}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    angles = dict(zip(LAYERS, [*layer_angles, 0.0], strict=True))
    lines = [{"epoch": e, "rule": rule, "seed": seed, "val_top1": 100 - error - (2 - e),
              "epoch_seconds": 30.0, "elapsed_seconds": 30.0 * e, "weight_angles": angles,
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
          "kp": [2.0, 3.0, 4.0, 5.0], "wm": [4.0, 5.0, 6.0, 7.0]}


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
            {"status": "diverged", "message": "the loss became non-finite at epoch 1"}))
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
    }
    assert "FA − SS = +8.00 points unshared" in page and "+4.00 with weight sharing" in page
    assert "sign_fixed +2.00" in page  # what Dale's law costs it
    assert "kp +1.80 (±0.20), fa +6.00 (±0.20)" in page  # and unsharing, each rule
    assert "from best to worst: bp 12.00%, kp 12.50%, ss 13.00%, fa 20.00%" in page
    assert "dfa diverged in 3 of 3 seeds at lr 0.1 (the loss became non-finite" in page
    assert "dfa at lr 0.1: 15.10 ± 0.10% over 3 seeds (dfa − BP +3.10 points" in page
    assert "dfa − FA -4.90" in page and "Not finished yet" not in page


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
