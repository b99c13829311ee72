"""`biograd compare`: the same task under several rules (and seeds), then one report.

Every run gets the same data, model initialisation, data order and recipe; only the rule
(and, with several seeds, the seed) differs. Runs go into OUT/RULE (OUT/RULE-seedN with
several seeds); report.md, results.csv and the figures into OUT. A run that diverges is
reported as such and the comparison goes on. With --resume, finished runs are kept as they
are and unfinished ones continue from their checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

from biograd.config import DetectConfig, RunConfig, validate
from biograd.engine.checkpoint import NAME as CHECKPOINT
from biograd.errors import Diverged, UsageError

log = logging.getLogger("biograd")


def _check_kept(path: Path, cfg: RunConfig) -> None:
    """Refuse to keep a finished run of another recipe beside the new ones in one report."""
    from biograd.config import RESUMABLE, comparable, saved_config

    saved = comparable(saved_config(path, type(cfg)))
    now = comparable(cfg.to_dict())
    changed = sorted(k for k in now if k not in RESUMABLE and k in saved and saved[k] != now[k])
    if changed:
        diffs = ", ".join(f"{k}={saved[k]!r} (now {now[k]!r})" for k in changed)
        raise UsageError(f"compare --resume: {path} was run with {diffs}: give the options "
                         f"it was run with, or another --out")


def run_dir(out: Path, rule: str, seed: int, several_seeds: bool) -> Path:
    return out / (f"{rule}-seed{seed}" if several_seeds else rule)


def _record(out: Path, base: RunConfig, rules: list[str], seeds: list[int]) -> None:
    """Write OUT/compare.yaml (atomically): the task, rules, seeds and shared config."""
    import yaml

    from biograd.config import COMPARE

    shared = {k: v for k, v in base.to_dict().items()
              if k not in ("out", "resume", "accept_changes", "rule", "seed")}
    record = {"task": "detection" if isinstance(base, DetectConfig) else "classification",
              "rules": list(rules), "seeds": list(seeds), "config": shared}
    tmp = out / f".{COMPARE}.tmp-{os.getpid()}"
    tmp.write_text(yaml.safe_dump(record, sort_keys=False))
    os.replace(tmp, out / COMPARE)


def _status(path: Path) -> str | None:
    try:
        return json.loads((path / "status.json").read_text())["status"]
    except (OSError, ValueError, KeyError):
        return None


def compare(base: RunConfig, rules: list[str] | None = None, seeds: list[int] | None = None,
            command: list[str] | None = None) -> dict[str, Path]:
    """Train every (rule, seed) of `base` into base.out, then write the report there; returns
    its paths (under torchrun, on rank 0; the other ranks write nothing and get {}).

    The task follows the config: a DetectConfig trains detectors (`biograd detect`), a
    TrainConfig classifiers (`biograd train`). rules=None: every registered rule that the
    task and the model can take (a rule not every model can take, dfa_blocks, is tried on the
    model first); the others are left out, with a log line. A rule given that they cannot
    take is refused before any run trains.
    """
    from biograd.engine.folders import check_folder, check_out, make_folder
    from biograd.results import load_run, write_report
    from biograd.rules import compared_rules, rule_class

    check = None
    if isinstance(base, DetectConfig):
        from biograd.engine.detect import train
    else:
        from biograd.engine.classify import check, train

    def takes(rule: str) -> None:
        """A UsageError where the task or the model cannot take `rule` (the model is built
        for the rules not every model can take)."""
        validate(dataclasses.replace(base, rule=rule))  # detection: no dfa, drtp, dfa_blocks
        if check is not None and not rule_class(rule).every_model:
            check(dataclasses.replace(base, rule=rule))

    given = rules is not None
    if rules is None:
        rules = []
        for rule in compared_rules():
            try:
                takes(rule)
            except UsageError as err:
                log.info("compare: %s left out: %s", rule, err)
                continue
            rules.append(rule)
    out = Path(base.out)
    seeds = seeds or [base.seed]
    several = len(seeds) > 1
    for flag, values in (("--rules", rules), ("--seeds", seeds)):
        twice = sorted({str(v) for v in values if values.count(v) > 1})
        if twice:
            raise UsageError(f"{flag} names {', '.join(twice)} more than once: each run is "
                             f"trained once, name each once")
    check_folder(out)
    for seed in seeds:  # every run checked before any trains
        for rule in rules:
            validate(dataclasses.replace(base, rule=rule, seed=seed))
            if given and seed == seeds[0]:
                takes(rule)
            path = run_dir(out, rule, seed, several)
            status = _status(path)
            if base.resume and status in ("finished", "diverged"):
                _check_kept(path, dataclasses.replace(base, rule=rule, seed=seed))
            elif not base.resume or not (path / CHECKPOINT).exists():
                check_out(dataclasses.replace(base, resume=False), path)
    if os.environ.get("RANK", "0") == "0":  # what `compare --out OUT --resume` alone reads
        make_folder(out)
        _record(out, base, rules, seeds)
    paths = []
    for seed in seeds:
        for rule in rules:
            path = run_dir(out, rule, seed, several)
            paths.append(path)
            status = _status(path)
            if base.resume and status in ("finished", "diverged"):
                log.info("%s: %s already, kept", path, status)
                continue
            resume = base.resume and (path / CHECKPOINT).exists()  # else a new run
            cfg = dataclasses.replace(base, rule=rule, seed=seed, out=str(path), resume=resume,
                                      accept_changes=base.accept_changes and resume)
            validate(cfg)
            log.info("== %s, seed %d -> %s", rule, seed, path)
            if cfg.compile:
                # each run compiles afresh: dynamo tries a shared code object's newest entry
                # first, and one of a run whose graph broke at its layers (dfa) guards only
                # what precedes the break, so the next run's model would match it and run in
                # pieces (docs/performance.md)
                import torch._dynamo

                torch._dynamo.reset()
            try:
                train(cfg, command)
            except Diverged as err:
                log.warning("%s: %s", rule, err)
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 alone writes the report
        return {}
    return write_report([load_run(p) for p in paths], out)
