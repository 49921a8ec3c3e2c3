"""Command-line options that several commands share."""

from __future__ import annotations


def add_method_set_option(parser, dest: str = "overrides", example: str = "routing=top1") -> None:
    """--set KEY=VALUE (repeatable): one method config key, its value read as YAML."""
    parser.add_argument(
        "--set",
        dest=dest,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a method config key (YAML value), e.g. --set {example}",
    )


def method_overrides(pairs: list[str]) -> dict:
    from harness.config import parse_assignment

    return dict(parse_assignment(text) for text in pairs)


_OPTIONS = {"method": "--method", "preset": "--preset", "dataset": "--dataset", "data_root": "--data-root",
            "classes": "--classes", "expect": "--expect", "seed": "--seed"}


def option_name(key: str) -> str:
    """The command-line option that sets a trial config key: ``method_config.epochs`` -> ``--set epochs``."""
    if key.startswith("method_config."):
        return f"--set {key.split('.', 1)[1]}"
    return _OPTIONS.get(key, key)


def comma_list(text: str | None) -> list[str] | None:
    """``"a, b"`` -> ``["a", "b"]``; None stays None."""
    return [part.strip() for part in text.split(",") if part.strip()] if text else None
