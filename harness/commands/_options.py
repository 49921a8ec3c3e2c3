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


def assigned_values(pairs: list[str]) -> dict:
    """``KEY=VALUE`` strings (--set, --dataset-option) as a mapping, each value read as YAML."""
    from harness.config import parse_assignment

    return dict(parse_assignment(text) for text in pairs)


method_overrides = assigned_values  # the --set pairs: method config keys


def add_dataset_option(parser, dest: str = "dataset_options") -> None:
    """--dataset-option KEY=VALUE (repeatable): one option of the dataset's layout, its value read as YAML."""
    parser.add_argument(
        "--dataset-option",
        dest=dest,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of the dataset's layout (YAML value), e.g. --dataset-option views=C1,C2 "
        "--dataset-option json_dir=realiad_jsons_sv (Real-IAD: views, json_dir, image_dir)",
    )


_OPTIONS = {"method": "--method", "preset": "--preset", "dataset": "--dataset", "data_root": "--data-root",
            "classes": "--classes", "expect": "--expect", "seed": "--seed", "dataset_options": "--dataset-option"}
_DOTTED_OPTIONS = {"method_config": "--set", "dataset_options": "--dataset-option"}


def option_name(key: str) -> str:
    """The command-line option that sets a trial config key: ``method_config.epochs`` -> ``--set epochs``,
    ``dataset_options.views`` -> ``--dataset-option views``."""
    top, dot, rest = key.partition(".")
    if dot and top in _DOTTED_OPTIONS:
        return f"{_DOTTED_OPTIONS[top]} {rest}"
    return _OPTIONS.get(key, key)


def comma_list(text: str | None) -> list[str] | None:
    """``"a, b"`` -> ``["a", "b"]``; None stays None."""
    return [part.strip() for part in text.split(",") if part.strip()] if text else None
