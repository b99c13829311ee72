"""The `biograd` command. Each subcommand is thin: it parses, then calls the library."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import biograd
from biograd.errors import Diverged, UsageError

log = logging.getLogger("biograd")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit code 2, no usage dump
        self.exit(2, f"biograd: error: {message} (see 'biograd {self.prog.split()[-1]} --help')\n")


def _rules(text: str) -> list[str]:
    names = [n for n in text.split(",") if n]
    try:
        return [biograd.rules.rule_class(n).name for n in names]
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds are integers like 0,1,2, not {text!r}") from None


def cmd_rules(args: argparse.Namespace) -> int:
    print(biograd.rules.rules_table())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from biograd.demo import format_table, train_rule

    results = []
    for rule in args.rules:
        result = train_rule(rule, epochs=args.epochs, seed=args.seed)
        print(f"{rule}: {result.accuracy:.1f}% in {result.seconds:.1f}s", file=sys.stderr)
        results.append(result)
    print(format_table(results))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from biograd.config import resolve
    from biograd.engine.classify import train

    cfg = resolve(args)
    train(cfg)
    log.info("done: %s", Path(cfg.out) / "metrics.jsonl")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from biograd.compare import compare
    from biograd.config import resolve

    rules, seeds = args.__dict__.pop("rules"), args.__dict__.pop("seeds")
    if "out" not in args:
        args.out = "runs/compare"
    base = resolve(args)
    paths = compare(base, rules, seeds)
    print(f"report: {paths['report.md']}")
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


def build_parser() -> argparse.ArgumentParser:
    from biograd.config import add_arguments

    parser = _Parser(prog="biograd", description=biograd.__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=biograd.__version__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("rules", help="list the learning rules")
    p.set_defaults(func=cmd_rules)

    p = sub.add_parser("train", help="train one model under one rule",
                       description="Train an image classifier under a learning rule.")
    add_arguments(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("compare", help="train several rules alike and report side by side",
                       description="Train each rule (and seed) with the same data and recipe, "
                       "then write report.md, results.csv and figures into --out "
                       "(default runs/compare).")
    p.add_argument("--rules", type=_rules, default=biograd.list_rules(),
                   help="comma-separated rule names (default: all)")
    p.add_argument("--seeds", type=_seeds, default=None,
                   help="comma-separated seeds to repeat each rule with (default: --seed)")
    add_arguments(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("plot", help="redraw the figures of a run folder")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--out", type=Path, default=None, help="where (default: the run folder)")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("demo", help="a quick table of every rule on the bundled digits")
    p.add_argument("--rules", type=_rules, default=biograd.list_rules(),
                   help="comma-separated rule names (default: all)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        return args.func(args)
    except UsageError as err:  # DataError and ModelError included
        print(f"biograd: error: {err}", file=sys.stderr)
        return 2
    except Diverged as err:
        print(f"biograd: stopped: {err}", file=sys.stderr)
        return Diverged.exit_code
    except KeyboardInterrupt:
        print("biograd: interrupted; the last checkpoint is kept: continue with --resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
