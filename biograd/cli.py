"""The `biograd` command. Each subcommand is thin: it parses, then calls the library."""

from __future__ import annotations

import argparse
import sys

import biograd


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit code 2, no usage dump
        self.exit(2, f"biograd: error: {message} (see 'biograd --help')\n")


def _rules(text: str) -> list[str]:
    names = [n for n in text.split(",") if n]
    for name in names:
        try:
            biograd.rules.rule_class(name)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    return [biograd.rules.rule_class(n).name for n in names]


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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="biograd", description=biograd.__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=biograd.__version__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("rules", help="list the learning rules")
    p.set_defaults(func=cmd_rules)
    p = sub.add_parser("demo", help="train every rule on the bundled digits and compare")
    p.add_argument("--rules", type=_rules, default=biograd.list_rules(),
                   help="comma-separated rule names (default: all)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
