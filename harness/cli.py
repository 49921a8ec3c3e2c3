"""`harness` command line: one subcommand per module in harness.commands."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import harness.commands


def _command_modules():
    for info in sorted(pkgutil.iter_modules(harness.commands.__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            yield importlib.import_module(f"harness.commands.{info.name}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harness",
        description="Benchmark harness for multi-class unsupervised visual anomaly detection.",
    )
    parser.add_argument("--version", action="version", version=f"harness {harness.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _command_modules():
        command = sub.add_parser(module.NAME, help=module.HELP, description=module.__doc__)
        module.add_arguments(command)
        command.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "_run"):
        parser.print_help()
        return 2
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
