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


# Errors that mean the input is wrong (not the harness): one message and exit 2, no traceback.
USER_ERRORS = (
    ("harness.config", "ConfigError"),
    ("methods", "MethodError"),
    ("harness.data.registry", "DatasetError"),
    ("harness.data.cards", "CardError"),
    ("harness.data.images", "ImageReadError"),
    ("harness.backbones", "MissingWeightsError"),
)


def is_user_error(error: BaseException) -> bool:
    """True for the USER_ERRORS classes of modules already imported (an error can only come from those)."""
    classes = tuple(getattr(sys.modules[module], name) for module, name in USER_ERRORS if module in sys.modules)
    return isinstance(error, classes)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "_run"):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except Exception as error:
        if not is_user_error(error):
            raise
        from harness.config import ConfigProblems

        # ConfigProblems begin with their source (the file or the command); the rest get a prefix
        print(error if isinstance(error, ConfigProblems) else f"harness {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
