"""Parameter and FLOP profiles of a method, as the papers count them and as they really are.

Builds the method from a preset (with a randomly initialised backbone: no weight files needed)
and prints parameters (trainable; with the frozen backbone; the reconstruction module alone;
thop-style) and FLOPs at the preset's image size, as MACs and 2 x MACs, with and without the
backbone, in two conventions: "common counter" (fvcore/calflops, which miss the masked
attention's QK^T product) and "true" (which includes it). Paper-reported sizes are shown beside
ours. --bottlenecks 16,32 profiles that UniLEAD bottleneck set; --table4 prints all ten rows of
UniLEAD's Table 4.

Examples:
  harness profile --method unilead --preset paper
  harness profile --method uniad --preset paper --json
  harness profile --method unilead --bottlenecks 16,32
  harness profile --table4
  harness profile --list
"""

from __future__ import annotations

import json
import sys

from harness.commands._options import add_method_set_option, method_overrides, option_name

NAME = "profile"
HELP = "parameter and FLOP counts of a method (common-counter and true conventions)"


def add_arguments(parser) -> None:
    parser.add_argument("--method", help="method name (see --list)")
    parser.add_argument("--preset", default="paper", help="named preset: paper (default) or cpu")
    add_method_set_option(parser)
    parser.add_argument("--bottlenecks", help="UniLEAD adapter bottleneck widths, comma-separated, e.g. 16,32 (a Table 4 row)")
    parser.add_argument("--table4", action="store_true", help="UniLEAD's Table 4: all ten bottleneck sets, ours beside the paper's")
    parser.add_argument("--no-backbone", action="store_true", help="skip building and counting the backbone (faster)")
    parser.add_argument("--no-macs", action="store_true", help="count parameters only (a paper-size forward on a CPU can take a minute)")
    parser.add_argument("--list", action="store_true", help="list the methods, their presets, and any that cannot be imported (as `harness methods`)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")


def _overrides(args) -> dict:
    """--set and --bottlenecks as method config overrides, checked against the method's schema."""
    from harness.config import ConfigError, ConfigProblems, renamed
    from harness.training.trial_config import method_issues

    overrides = method_overrides(args.overrides)
    if args.bottlenecks:
        try:
            overrides["bottlenecks"] = [int(w) for w in args.bottlenecks.split(",") if w.strip()]
        except ValueError:
            raise ConfigError(f"--bottlenecks expects comma-separated integers such as 16,32; got {args.bottlenecks!r}") from None
    issues = method_issues(args.method, args.preset, overrides)
    if issues:
        raise ConfigProblems("harness profile", renamed(issues, option_name))
    return overrides


def run(args) -> int:
    from rich.console import Console

    from harness import profiling
    from harness.config import ConfigError

    console = Console()
    if args.list:
        return _list(console, args.json)
    if args.table4:
        rows = profiling.table4_rows(preset=args.preset)
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            console.print(_table4_view(rows))
        return 0
    if not args.method:
        console.print("[red]--method is required[/red] (or use --list / --table4); e.g. harness profile --method unilead")
        return 2
    if args.bottlenecks and args.method != "unilead":
        raise ConfigError("--bottlenecks applies to --method unilead only")
    overrides = _overrides(args)  # user errors reach harness.cli: one message, exit 2
    try:
        profile = profiling.profile_method(args.method, args.preset, overrides, with_backbone=not args.no_backbone, with_macs=not args.no_macs)
    except ValueError as exc:  # a valid config the graph cannot take, e.g. a window as wide as the token grid
        print(f"harness profile: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(profile, indent=2))
    else:
        for view in _profile_views(profile):
            console.print(view)
    return 0


def _list(console, as_json: bool) -> int:
    """The same listing as ``harness methods`` (one place knows what a method declares)."""
    from types import SimpleNamespace

    from harness.commands import methods as methods_command

    return methods_command.run(SimpleNamespace(json=as_json))


def _m(n) -> str:
    return "-" if n is None else f"{n / 1e6:,.3f} M"


def _g(n) -> str:
    return "-" if n is None else f"{n / 1e9:.3f}"


def _profile_views(profile: dict):
    from rich.table import Table

    reported = profile.get("reported", {})
    title = f"{profile['method']} ({profile['preset']} preset, {profile['image_size']} px, backbone {profile['backbone']})"
    if profile["overrides"]:
        title += f" with {profile['overrides']}"
    params = Table(title=f"Parameters: {title}", caption="thop-style: skips attention modules and embeddings, as thop does")
    params.add_column("count")
    params.add_column("ours", justify="right")
    params.add_column("exact", justify="right")
    p = profile["params"]
    for label, key in (
        ("reconstruction module", "reconstruction"),
        ("reconstruction, thop-style", "reconstruction_thop_style"),
        ("trainable", "trainable"),
        ("frozen backbone", "backbone"),
        ("trainable + backbone", "with_backbone"),
    ):
        params.add_row(label, _m(p[key]), "-" if p[key] is None else f"{p[key]:,}")
    for label, count in p.get("apart", {}).items():
        params.add_row(f"reported apart: {label.replace('_', ' ')}", _m(count), f"{count:,}")
    if "params_m" in reported:
        r = reported["params_m"]
        params.add_row(f"[dim]reported ({r['source']})[/dim]", f"[dim]{r['value']:.2f} M[/dim]", "[dim]counting rule unstated[/dim]")
    yield params
    if "memory_bank" in profile:
        yield _bank_view(profile["memory_bank"], title)
        return

    flops = Table(
        title=f"FLOPs (G): {title}",
        caption="common counter = fvcore/calflops (miss the masked QK^T); true includes it; GFLOPs = 2 x GMACs",
    )
    flops.add_column("part")
    for column in ("common GMACs", "common GFLOPs", "true GMACs", "true GFLOPs"):
        flops.add_column(column, justify="right")
    for label, key in (("reconstruction module", "reconstruction"), ("backbone", "backbone"), ("with backbone", "with_backbone")):
        part = profile["macs"].get(key)
        if part is None:
            continue
        flops.add_row(label, _g(part["common"]), _g(2 * part["common"]), _g(part["true"]), _g(2 * part["true"]))
    if "flops_g" in reported:
        r = reported["flops_g"]
        flops.add_row(f"[dim]reported ({r['source']})[/dim]", "", f"[dim]{r['value']:.2f}[/dim]", "", "")
    yield flops


def _bank_view(bank: dict, title: str):
    from rich.table import Table

    view = Table(
        title=f"Memory bank on MVTec AD's training set: {title}",
        caption=f"{bank['patch_grid']}x{bank['patch_grid']} patches per image, {bank['dims']}-d float32; the configured bank is {bank['bank']}",
    )
    for column in ("bank", "vectors", "x dims", "bytes"):
        view.add_column(column, justify="right")
    dims = bank["dims"]
    for label, vectors in (
        ("all patches (before the coreset)", bank["vectors_before_coreset"]),
        ("coreset, one bank per class (total)", bank["vectors_per_class_total"]),
        ("coreset, one bank for all classes", bank["vectors_unified"]),
    ):
        view.add_row(label, f"{vectors:,}", str(dims), f"{vectors * dims * 4 / 1e9:.2f} GB")
    return view


def _table4_view(rows: list[dict]):
    from rich.table import Table

    view = Table(
        title="UniLEAD Table 4 (reconstruction module, 224 px, softmax routing): ours beside the paper's",
        caption="params in M; GFLOPs = 2 x MACs; common = fvcore/calflops convention; paper rule unstated",
    )
    for column in ("bottlenecks", "params true", "params thop-style", "params paper", "GFLOPs common", "GFLOPs true", "GFLOPs paper"):
        view.add_column(column, justify="right")
    for row in rows:
        rep = row["reported"]
        view.add_row(
            "{" + ",".join(str(w) for w in row["bottlenecks"]) + "}",
            f"{row['params_true'] / 1e6:.3f}",
            f"{row['params_thop_style'] / 1e6:.3f}",
            f"{rep['params_m']['value']:.2f}" if "params_m" in rep else "-",
            f"{row['gflops_common']:.3f}",
            f"{row['gflops_true']:.3f}",
            f"{rep['flops_g']['value']:.2f}" if "flops_g" in rep else "-",
        )
    return view
