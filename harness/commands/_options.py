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
