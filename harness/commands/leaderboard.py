"""Show the leaderboard generated from a result store: one row per configuration, class-mean
metrics (mean ± std over seeds), efficiency columns, the paper's reported numbers beside ours where
the paper reports that cell, and failed or missing cells marked as such.

Formats: terminal (default, a table), md (Markdown), html (one self-contained file with plots and
an anomaly-map gallery), csv (per configuration and per class, values in percent, like every view).

Examples:
  harness leaderboard                      # ./results, all sweeps, in the terminal
  harness leaderboard results --sweep routing --per-class
  harness leaderboard results --sweep routing --format html --output report.html
  harness leaderboard results --format csv > leaderboard.csv
  harness leaderboard results --sweep routing --pixel-bootstrap 200   # intervals on pixel metrics too

Every image-metric cell carries a 95% bootstrap interval over the test images (--bootstrap N
resamples, default 1000, stratified by class and label, --bootstrap-seed), and rows the paired
test cannot tell from the best on the sort metric rank "≈1". Pixel metrics are resampled only
with --pixel-bootstrap N: it reads every run's maps and the dataset's masks (about 1.5 to 3 s per
run per 100 resamples on 2 cores), so it is off by default.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

NAME = "leaderboard"
HELP = "print or write the leaderboard generated from a result store"
FORMATS = ("terminal", "md", "html", "csv")
_SUFFIX = {"md": "md", "html": "html", "csv": "csv"}


def add_arguments(parser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the examples on their own lines
    parser.add_argument("results", nargs="?", default="./results", metavar="RESULTS", help="result store directory (default ./results)")
    parser.add_argument("--sweep", default=None, metavar="NAME", help="only this sweep (default: every run in the store)")
    parser.add_argument("--format", choices=FORMATS, default="terminal", help="output format (default terminal)")
    parser.add_argument(
        "--output",
        default=None,
        metavar="PATH",
        help="write to this file (md/csv default to stdout; html defaults to RESULTS/reports/leaderboard[-SWEEP].html)",
    )
    parser.add_argument("--per-class", action="store_true", help="terminal: add per-class drill-down tables")
    parser.add_argument(
        "--sort",
        default="i_auroc",
        metavar="METRIC",
        help="metric to rank by, as its key or its table title in any case (i_auroc, P-AUROC, aupro; default i_auroc)",
    )
    _add_bootstrap_arguments(parser)


def _count(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}")
        return value

    return parse


def _add_bootstrap_arguments(parser) -> None:
    parser.add_argument("--bootstrap", type=_count(1), default=1000, metavar="N",
                        help="bootstrap resamples of the test images for image-metric intervals and ties (default 1000)")
    parser.add_argument("--no-bootstrap", action="store_true", help="no intervals and no tie test (mean ± std only)")
    parser.add_argument("--bootstrap-seed", type=_count(0), default=0, metavar="S", help="seed of the resamples (default 0)")
    parser.add_argument("--pixel-bootstrap", type=_count(0), default=0, metavar="N",
                        help="also resample pixel metrics N times from the stored maps and the dataset's masks (default 0: off)")


def _bootstrap_settings(args):
    from harness.report.uncertainty import BootstrapSettings

    if args.no_bootstrap:
        return None
    return BootstrapSettings(resamples=args.bootstrap, seed=args.bootstrap_seed, pixel_resamples=args.pixel_bootstrap)


def run(args) -> int:
    from rich.console import Console

    from harness.report.leaderboard import METRIC_ORDER, build_leaderboard, metric_key
    from harness.results.store import ResultStore

    errors = Console(stderr=True)
    store = ResultStore(args.results)
    if not store.root.is_dir() or store.is_empty():
        errors.print(
            f"No results in {store.root}. Produce some with `harness sweep sweeps/routing.yaml "
            f"--results {args.results}` (or point RESULTS at an existing result store).",
            markup=False,
            highlight=False,
        )
        return 1
    board = build_leaderboard(store, sweep=args.sweep, bootstrap=None)  # its metric names, for --sort
    bootstrap = _bootstrap_settings(args)
    sort_metric = metric_key(args.sort, (*METRIC_ORDER, *board.metrics))
    if sort_metric is None:
        valid = ", ".join(dict.fromkeys((*METRIC_ORDER, *board.metrics)))
        errors.print(f"--sort {args.sort!r} is not a metric; use one of: {valid}.", markup=False, highlight=False, soft_wrap=True)
        return 2
    if sort_metric != board.sort_metric or bootstrap is not None:
        board = build_leaderboard(store, sweep=args.sweep, sort_metric=sort_metric, bootstrap=bootstrap)
    problems = store.problems()
    for problem in problems:
        errors.print(f"warning: left out {problem}", markup=False, highlight=False, soft_wrap=True)
    if board.empty and problems and not store.runs().num_rows:
        errors.print(
            f"Nothing usable is left in {store.root}: every runs file is damaged or foreign (above).",
            markup=False, soft_wrap=True,
        )
        return 1
    if board.empty:
        known = ", ".join(store.sweeps()) or "none"
        errors.print(f"No runs of sweep {args.sweep!r} in {store.root}; sweeps in this store: {known}.", markup=False)
        return 1

    if args.format == "terminal":
        from harness.report.terminal import render_terminal

        console = Console()
        if not console.is_terminal:  # piped or captured: do not squeeze the table into 80 columns
            console = Console(width=200)
        render_terminal(board, console, per_class=args.per_class)
        return 0
    if args.format == "html":
        from harness.report.final import default_html_path
        from harness.report.html import write_html

        path = write_html(board, store, Path(args.output) if args.output else default_html_path(store, args.sweep))
        Console().print(f"HTML report: {path.resolve()}", markup=False, highlight=False)
        return 0
    if args.format == "md":
        from harness.report.markdown import render_markdown

        text = render_markdown(board)
    else:
        from harness.report.csv_table import render_csv

        text = render_csv(board)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text, encoding="utf-8")
        Console(stderr=True).print(f"wrote {Path(args.output).resolve()}", markup=False, highlight=False)
    else:
        sys.stdout.write(text)
    return 0
