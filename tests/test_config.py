"""Every config field is checked for type and range, from a YAML file and from flags alike.

The bad values are generated from the dataclasses themselves (each field's annotation and
bounds), so a field added later is checked by the same tests."""

import argparse
import dataclasses
import types
import typing

import pytest
import yaml

from biograd.cli import build_parser, main
from biograd.config import DetectConfig, TrainConfig, resolve
from biograd.errors import UsageError

CLASSES = {"train": TrainConfig, "detect": DetectConfig}


def _base(kind):
    if isinstance(kind, types.UnionType):
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    return kind


WRONG_TYPE = {  # values of another type than the field's
    int: ["64", 2.5, True, [1]],
    float: ["abc", True, [1]],
    str: [5, [1], {"a": 1}],
    bool: ["maybe", 1, [True]],
    dict: ["abc", [1]],
    list: ["abc", 5, ["a"], [1.5]],
}


def bad_values(cls):
    """(field, value, fits a flag) for every field of `cls`: values of the wrong type, values
    outside its bounds and, for fields with choices, a near miss."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = _base(hints[f.name])
        base = typing.get_origin(kind) or kind
        meta = f.metadata
        if meta.get("choices"):
            yield f.name, meta["choices"][0] + "x", True
            yield f.name, 3, False
            continue
        for value in WRONG_TYPE[base]:
            yield f.name, value, False
        step = 1 if base is int or (base is list) else 0.5
        for key, delta in (("low", -step), ("above", 0), ("below", 0), ("high", step)):
            if meta.get(key) is not None:
                value = meta[key] + delta
                yield f.name, [value] if base is list else value, True


CASES = [(task, name, value, flag) for task, cls in CLASSES.items()
         for name, value, flag in bad_values(cls)]
IDS = [f"{task}-{name}-{value!r}" for task, name, value, _ in CASES]


def test_the_generated_cases_hold_the_reviews_examples():
    train = {(name, repr(value)) for task, name, value, _ in CASES if task == "train"}
    for example in [("epochs", "2.5"), ("momentum", "True"), ("milestones", "'abc'"),
                    ("lr", "'abc'"), ("batch_size", "'64'"), ("weight_decay", "-0.5"),
                    ("rule", "[1]"), ("workers", "-1"), ("momentum", "1")]:
        assert example in train, example
    fields = {name for _, name, _, _ in CASES}
    assert fields == {f.name for cls in CLASSES.values() for f in dataclasses.fields(cls)}


@pytest.mark.parametrize(("task", "name", "value", "flag"), CASES, ids=IDS)
def test_a_bad_value_in_a_config_file_is_refused(tmp_path, task, name, value, flag):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({name: value}))
    with pytest.raises(UsageError, match=rf"^{name}=") as err:
        resolve(argparse.Namespace(config=path), CLASSES[task])
    assert "\n" not in str(err.value)
    assert f"(in {path})" in str(err.value)  # the file that set it, not a flag never given


def test_a_flag_over_a_config_file_value_is_named_as_the_flag(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("epochs: 3\nrule: nope\n")
    args = build_parser().parse_args(["train", "--config", str(path), "--epochs", "0"])
    with pytest.raises(UsageError, match=r"^epochs=0 \(--epochs\)"):
        resolve(args)
    args = build_parser().parse_args(["train", "--config", str(path)])
    with pytest.raises(UsageError, match=rf"^rule='nope' \(in {path}\)"):
        resolve(args)


def test_a_bad_value_in_a_resumed_runs_config_names_that_file(tmp_path):
    (tmp_path / "config.yaml").write_text("epochs: many\n")
    args = build_parser().parse_args(["train", "--out", str(tmp_path), "--resume"])
    with pytest.raises(UsageError, match=rf"^epochs='many' \(in {tmp_path / 'config.yaml'}\)"):
        resolve(args)


@pytest.mark.parametrize(("task", "name", "value", "flag"), [c for c in CASES if c[3]],
                         ids=[i for i, c in zip(IDS, CASES, strict=True) if c[3]])
def test_a_bad_value_in_a_flag_is_refused(task, name, value, flag):
    text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
    argv = [task, f"--{name.replace('_', '-')}", text]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # argparse's own check (a choice, a type)
        assert stop.code == 2
        return
    with pytest.raises(UsageError, match=rf"^{name}="):
        resolve(args, CLASSES[task])


def test_shipped_defaults_pass():
    for cls in CLASSES.values():
        resolve(None, cls)


def test_yaml_numbers_with_an_exponent_are_numbers(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("lr: 1e-3\nweight_decay: 5e-4\nrule_options: {wm: {rate: 2e-3}}\n")
    cfg = resolve(argparse.Namespace(config=path))
    assert cfg.lr == 1e-3 and cfg.weight_decay == 5e-4
    assert cfg.rule_options == {"wm": {"rate": 2e-3}}


def test_the_null_term_can_be_given_unquoted_in_yaml(tmp_path):
    # YAML reads a bare `null` key as null; the alignment family's `null` term is meant
    import biograd

    args = build_parser().parse_args(
        ["train", "--rule", "ia", "--rule-options", "{ia: {null: 2.0e-3, amp: 1e-3}}"])
    cfg = resolve(args)
    assert cfg.rule_options == {"ia": {"null": 2e-3, "amp": 1e-3}}
    assert cfg.rule_for("ia") == biograd.get_rule("ia", null=2e-3, amp=1e-3)


@pytest.mark.parametrize("argv", [
    ["train", "--momentum", "1.5"],
    ["train", "--workers", "-2"],
    ["train", "--rule-options", "{fa: {scale: wieght}}"],
    ["detect", "--parts", "{heads: bp}"],
    ["detect", "--min-size", "96", "--max-size", "64"],
])
def test_the_command_says_what_is_wrong_in_one_line(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("biograd: error: ")


def test_a_bad_model_option_is_one_line(tmp_path, capsys):
    argv = ["train", "--model-options", "{width: -3}", "--out", str(tmp_path / "run"),
            "--progress", "none", "--tensorboard", "false"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "biograd: error: small_cnn: width=-3: use an integer >= 1"


@pytest.mark.parametrize(("model", "options", "says"), [
    ("vit_small", "{heads: 5}", "vit_small: embed_dim must be divisible by num_heads"),
    ("small_cnn", "{dropout: high}", "small_cnn: dropout='high': use a number"),
    ("resnet_small", "{num_classes: 3}", "num_classes comes from the data set"),
])
def test_model_options_that_do_not_fit_are_one_line(tmp_path, capsys, model, options, says):
    argv = ["train", "--model", model, "--model-options", options, "--image-size", "28",
            "--out", str(tmp_path / "run"), "--progress", "none", "--tensorboard", "false"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("biograd: error:") and says in err[-1], err[-1]


@pytest.mark.parametrize("command", ["train", "detect", "compare"])
def test_help_gives_each_default_once_and_the_rule_names(command, capsys):
    import re

    import biograd

    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    text = capsys.readouterr().out
    blocks = re.split(r"\n  (?=-)", text.split("options:", 1)[1])
    assert len(blocks) > 20
    for block in blocks:
        assert block.count("(default") <= 1, block
    rule = next(b for b in blocks if b.startswith("--rule RULE"))
    assert all(name in rule for name in biograd.list_rules())
    assert "the seed's" not in text  # --seed is the run's seed; the paper is "the paper"


@pytest.mark.parametrize("cls", [TrainConfig, DetectConfig])
@pytest.mark.parametrize("given", [{"milestones": [3]}, {"gamma": 0.5}, {"step_size": 7}])
def test_step_options_without_the_step_schedule_are_refused(cls, given):
    with pytest.raises(UsageError, match="add --schedule step"):
        resolve(cls=cls, schedule="cosine", **given)
    assert resolve(cls=cls, schedule="step", **given).schedule == "step"
    assert resolve(cls=cls, schedule="cosine").schedule == "cosine"  # defaults alone pass


@pytest.mark.parametrize("cls", CLASSES.values())
def test_accept_changes_without_resume_is_refused(cls):
    with pytest.raises(UsageError, match="add --resume"):
        resolve(cls=cls, accept_changes=True)
    cfg = resolve(cls=cls, accept_changes=True, resume=True, out="somewhere")
    assert cfg.accept_changes and cfg.resume


def test_a_runs_recipe_holds_only_the_options_of_the_rules_it_uses():
    from biograd.config import comparable

    config = {"rule": "usf", "last_rule": "bp", "lr": 0.1,
              "rule_options": {"ss": {"scale": "weight"}, "kp": {"decay": 0.01},
                               "Kolen-Pollack": {"decay": 0.02}}}
    assert comparable(config) == {**config, "rule_options": {"ss": {"scale": "weight"}}}
    detector = {"rule": "fa", "parts": {"head": "kp"}, "rule_options": {"kp": {}, "wm": {}}}
    assert comparable(detector)["rule_options"] == {"kp": {}}
    assert comparable({"rule": "fa"}) == {"rule": "fa"}  # written before rule_options existed
