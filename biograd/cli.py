"""The `biograd` command. Each subcommand is thin: it parses, then calls the library."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import biograd
from biograd.errors import Diverged, UsageError

log = logging.getLogger("biograd")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit code 2, no usage dump
        command = " ".join(self.prog.split()[1:])  # "" for biograd itself
        where = f"biograd {command} --help" if command else "biograd --help"
        self.exit(2, f"biograd: error: {message} (see '{where}')\n")


def _rules(text: str) -> list[str]:
    names = [n for n in text.split(",") if n]
    if not names:
        raise argparse.ArgumentTypeError(f"give one rule or more, like bp,fa,ss, not {text!r}")
    try:
        return [biograd.rules.rule_class(n).name for n in names]
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s]
    except ValueError:
        seeds = [-1]
    if not seeds or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"seeds are integers >= 0 like 0,1,2, not {text!r}")
    return seeds


def cmd_rules(args: argparse.Namespace) -> int:
    print(biograd.rules.rules_table())
    return 0


def _with_out(cfg, command: str):
    """A new run folder unless --out (or the config file) names one: runs never collide."""
    if cfg.out is None:
        if cfg.resume:
            raise UsageError("--resume needs --out: the run folder to continue")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise UsageError("under torchrun give --out: each process would name a run folder "
                             "of its own from its clock")
        cfg.out = f"runs/{command}-{time.strftime('%Y%m%d-%H%M%S')}"
    return cfg


def cmd_train(args: argparse.Namespace) -> int:
    from biograd.config import resolve
    from biograd.engine.classify import train

    cfg = _with_out(resolve(args), "train")
    train(cfg, args.command_line)
    log.info("done: %s", Path(cfg.out) / "metrics.jsonl")
    return 0


def cmd_detect(args: argparse.Namespace) -> int:
    from biograd.config import DetectConfig, resolve
    from biograd.engine.detect import train

    cfg = _with_out(resolve(args, DetectConfig), "detect")
    train(cfg, args.command_line)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 alone writes
        from biograd.engine.detect import coco_table

        table = coco_table(cfg.out)
        (Path(cfg.out) / "coco.md").write_text(table)
        log.info("%s\ndone: %s", table, Path(cfg.out) / "metrics.jsonl")
    return 0


def cmd_make_shapes(args: argparse.Namespace) -> int:
    from biograd.detection import make_shapes
    from biograd.engine.folders import check_folder

    check_folder(Path(args.out).expanduser(), "make-shapes")
    out = make_shapes(args.out, train=args.train, val=args.val, image_size=args.size,
                      seed=args.seed, min_side=args.min_side)
    print(out)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from biograd.config import resolve
    from biograd.engine.compare import compare

    if "rule" in args:  # given on the command line (flags left out are absent)
        raise UsageError(f"compare trains each rule of --rules on every layer: --rule is "
                         f"train's; use --rules {args.rule}")
    rules, seeds = args.__dict__.pop("rules"), args.__dict__.pop("seeds")
    from biograd.config import DetectConfig, TrainConfig

    cls = DetectConfig if args.__dict__.pop("task") == "detection" else TrainConfig
    base = _with_out(resolve(args, cls), "compare")
    saved = _saved_compare(base)
    rules = rules or saved.get("rules")  # None: every rule the model can take
    seeds = seeds or saved.get("seeds")
    paths = compare(base, rules, seeds, args.command_line)
    if paths:  # rank 0's (under torchrun the others write nothing)
        print(paths["report.md"].read_text().split("\n\n![")[0].strip())
        print(f"\nreport, figures and runs: {paths['report.md'].parent}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from biograd.engine.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(args.target, which=args.checkpoint, data=args.data,
                                 data_root=args.data_root, device=args.device)
    written = result.pop("written")
    width = max(len(k) for k in result)
    for key, value in result.items():
        shown = (f"{value:.2f}" if isinstance(value, float) else
                 ", ".join(f"{k} {v:.4f}" for k, v in value.items())
                 if isinstance(value, dict) else value)
        print(f"{key:<{width}}  {shown}")
    print(f"written to {written}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from biograd.results import load_run, plot_run

    try:
        run = load_run(args.run_dir)
    except ValueError as err:
        raise UsageError(str(err)) from None
    for path in plot_run(run, args.out):
        print(path)
    return 0


TASKS = ("classification", "detection")


def _flag(argv: list[str], flag: str) -> str | None:
    """The value of `flag` in `argv` ("--flag VALUE" or "--flag=VALUE"), or None."""
    for i, word in enumerate(argv):
        if word == flag and i + 1 < len(argv):
            return argv[i + 1]
        if word.startswith(f"{flag}="):
            return word.split("=", 1)[1]
    return None


def _task_of(argv: list[str]) -> str:
    """The --task of a compare command line, read before the flags that depend on it: on
    `compare --out OUT --resume`, the compare's own (OUT/compare.yaml) unless given."""
    value = _flag(argv, "--task")
    if value in TASKS:
        return value
    out = _flag(argv, "--out")
    if argv[:1] == ["compare"] and "--resume" in argv and out is not None:
        try:
            task = _compare_record(Path(out)).get("task")
        except UsageError:  # not valid YAML: said in one line when the options are read
            task = None
        if task in TASKS:
            return task
    return "classification"


def _compare_record(out: Path) -> dict:
    """What a compare recorded in OUT/compare.yaml (task, rules, seeds, config), or {}."""
    from biograd.config import COMPARE, read_saved

    path = out / COMPARE
    saved = read_saved(path) if path.is_file() else {}
    return saved if isinstance(saved, dict) else {}


def _saved_compare(base) -> dict:
    """A resumed compare's rules and seeds, or {}."""
    saved = _compare_record(Path(base.out)) if base.resume else {}
    return {k: saved[k] for k in ("rules", "seeds") if isinstance(saved.get(k), list)}


def build_parser(task: str = "classification") -> argparse.ArgumentParser:
    from biograd.config import DetectConfig, TrainConfig, add_arguments

    parser = _Parser(prog="biograd", description=biograd.__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=biograd.__version__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("rules", help="list the learning rules",
                       description="List the learning rules: name, aliases, what B is, the "
                       "state each keeps.")
    p.set_defaults(func=cmd_rules)

    p = sub.add_parser("train", help="train one model under one rule",
                       description="Train an image classifier under a learning rule.")
    add_arguments(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("compare", help="train several rules alike and report side by side",
                       description="Train each rule (and seed) with the same data and recipe, "
                       "then write report.md, results.csv and figures into --out (default: "
                       "a new runs/compare-DATE-TIME). With no options: every rule on the "
                       "bundled digits, in a few minutes on a laptop CPU (but dfa_blocks, "
                       "which needs a model with blocks).")
    p.add_argument("--rules", type=_rules, default=None,
                   help="comma-separated rule names (default: every rule the task and model "
                   "can take, dfa_blocks only on a model with blocks, alignment (composed) "
                   "never; on --resume, the compare's own)")
    p.add_argument("--seeds", type=_seeds, default=None,
                   help="comma-separated seeds to repeat each rule with (default: --seed; on "
                   "--resume, the compare's own)")
    p.add_argument("--task", choices=TASKS, default="classification",
                   help="classification (biograd train's options) or detection (biograd "
                   "detect's options)")
    add_arguments(p, DetectConfig if task == "detection" else TrainConfig)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("detect", help="train a RetinaNet detector under one rule",
                       description="Train torchvision's RetinaNet (ResNet-18 FPN, the paper's "
                       "setting) under a learning rule on COCO-format data; COCOeval AP every "
                       "epoch. With no options: the synthetic shapes on the CPU.")
    add_arguments(p, DetectConfig)
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("make-shapes", help="write a synthetic COCO-format detection data set",
                       description="Write the synthetic shapes data set (coloured shapes "
                       "on textured backgrounds) in COCO's format: OUT/train, OUT/val, "
                       "OUT/annotations.")
    p.add_argument("out", type=Path, help="the folder to write it into")
    p.add_argument("--train", type=int, default=1600, help="training images (default 1600)")
    p.add_argument("--val", type=int, default=100, help="validation images (default 100)")
    p.add_argument("--size", type=int, default=64, help="image size in pixels (default 64)")
    p.add_argument("--min-side", type=int, default=12,
                   help="smallest shape side in pixels (default 12)")
    p.add_argument("--seed", type=int, default=0, help="what draws the shapes (default 0)")
    p.set_defaults(func=cmd_make_shapes)

    p = sub.add_parser("eval", help="score a saved model on its validation split",
                       description="Score a run's saved model (best.pt, or checkpoint.pt) "
                       "on the validation split its config names, as training scored it; "
                       "print the numbers and write eval.json (eval-last.json, "
                       "eval-DATA.json) beside the checkpoint.")
    p.add_argument("target", type=Path, help="a run folder, or a checkpoint file in one")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best",
                   help="in a run folder: best.pt (default) or the last epoch's checkpoint.pt")
    p.add_argument("--data", default=None, help="another data set than the run's own")
    p.add_argument("--data-root", default=None, help="where to look for the data")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where to score it (default auto: a GPU if there is one)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("plot", help="draw the figures of a run folder",
                       description="Draw a run's figures (accuracy, loss, angles per layer, "
                       "angles over training) from its metrics.jsonl and angles.jsonl.")
    p.add_argument("run_dir", type=Path, help="a run folder (one rule, one seed)")
    p.add_argument("--out", type=Path, default=None, help="where (default: the run folder)")
    p.set_defaults(func=cmd_plot)

    return parser


#: Modules of the optional extras, and the extra that brings each.
EXTRAS = {"yaml": "train", "sklearn": "train", "matplotlib": "train",
          "tqdm": "train", "tensorboard": "train", "pycocotools": "detect",
          "spikingjelly": "spiking", "snntorch": "spiking"}


def _missing_extra(err: ModuleNotFoundError) -> str | None:
    """The one-line message for a module of an extra that is not installed, else None."""
    root = (err.name or "").split(".")[0]
    if root not in EXTRAS:
        return None
    return (f"biograd: error: this needs {root}, which comes with biograd's {EXTRAS[root]} "
            f"extra: pip install 'biograd[{EXTRAS[root]}]'")


def _check_extras(command: str, task: str | None = None) -> None:
    """Raise ModuleNotFoundError for a module the command's extra brings and that is missing,
    before the command starts: a run must not stop half set up. `rules` needs none, and
    TensorBoard is optional (a run without it writes metrics.jsonl only)."""
    import importlib.util

    detection = command == "detect" or (command == "compare" and task == "detection")
    needed = set() if command == "rules" else {"train", "detect"} if detection else {"train"}
    for module, extra in EXTRAS.items():
        if extra in needed and module != "tensorboard" and importlib.util.find_spec(module) is None:
            raise ModuleNotFoundError(f"No module named {module!r}", name=module)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        return _main(argv)
    except ModuleNotFoundError as err:
        message = _missing_extra(err)
        if message is None:
            raise
        print(message, file=sys.stderr)
        return 2


def _main(argv: list[str]) -> int:
    args = build_parser(_task_of(argv)).parse_args(argv)
    args.command_line = ["biograd", *argv]  # recorded in each run's environment.jsonl
    _check_extras(args.command, getattr(args, "task", None))
    if not logging.getLogger().handlers:  # rank 0 alone prints what is not a warning
        from biograd.engine.runlog import LOG_DATES, LOG_FORMAT

        level = logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING
        logging.basicConfig(level=level, format=LOG_FORMAT, datefmt=LOG_DATES, stream=sys.stderr)
    main = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 alone says why
    try:
        return args.func(args)
    except UsageError as err:  # DataError and ModelError included
        if main:
            print(f"biograd: error: {err}", file=sys.stderr)
        return 2
    except Diverged as err:
        if main:
            print(f"biograd: stopped: {err}", file=sys.stderr)
        return Diverged.exit_code
    except KeyboardInterrupt:
        if main:
            print("biograd: interrupted; a run keeps the checkpoint of its last finished "
                  "epoch, which --resume continues (its status.json says where it stopped)",
                  file=sys.stderr)
        return 130
    finally:  # under torchrun: leave the process group the run joined
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    raise SystemExit(main())
