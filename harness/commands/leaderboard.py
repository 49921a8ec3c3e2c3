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
  harness leaderboard results --sweep presets --dataset validation_a --format md
  harness leaderboard results --sweep routing --pixel-bootstrap 200   # intervals on pixel metrics too

Every image-metric cell carries a 95% bootstrap interval over the test images (--bootstrap N
resamples, default 1000, stratified by class and label, --bootstrap-seed), and rows the paired
test cannot tell from the best on the sort metric rank "≈1". Pixel metrics are resampled only
with --pixel-bootstrap N: it reads every run's maps and the dataset's masks (about 1.5 to 3 s per
run per 100 resamples on 2 cores), so it is off by default.

A store whose cells span several datasets gives one leaderboard per dataset (--dataset picks one);
the HTML format then writes one report per dataset, its name ending in the dataset's.
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
    parser.add_argument(
        "--dataset",
        default=None,
        metavar="NAME",
        help="only this dataset's cells (default: every dataset, one leaderboard per dataset: rows are ranked within a dataset)",
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

    from harness.report.leaderboard import METRIC_ORDER, build_leaderboard, datasets_to_show, leaderboard_datasets, metric_key
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
    datasets = [args.dataset] if args.dataset else datasets_to_show(store, args.sweep)
    bootstrap = _bootstrap_settings(args)
    boards = []
    for dataset in datasets:
        board = build_leaderboard(store, sweep=args.sweep, bootstrap=None, dataset=dataset)  # its metric names, for --sort
        sort_metric = metric_key(args.sort, (*METRIC_ORDER, *board.metrics))
        if sort_metric is None:
            valid = ", ".join(dict.fromkeys((*METRIC_ORDER, *board.metrics)))
            errors.print(f"--sort {args.sort!r} is not a metric; use one of: {valid}.", markup=False, highlight=False, soft_wrap=True)
            return 2
        if sort_metric != board.sort_metric or bootstrap is not None:
            board = build_leaderboard(store, sweep=args.sweep, sort_metric=sort_metric, bootstrap=bootstrap, dataset=dataset)
        boards.append(board)
    board = boards[0]
    problems = store.problems()
    for problem in problems:
        errors.print(f"warning: left out {problem}", markup=False, highlight=False, soft_wrap=True)
    if board.empty and problems and not store.runs().num_rows:
        errors.print(
            f"Nothing usable is left in {store.root}: every runs file is damaged or foreign (above).",
            markup=False, soft_wrap=True,
        )
        return 1
    if all(b.empty for b in boards):
        if args.dataset:
            known = ", ".join(leaderboard_datasets(store, args.sweep)) or "none"
            errors.print(f"No runs on dataset {args.dataset!r} in {store.root}; datasets with runs: {known}.", markup=False, soft_wrap=True)
            return 1
        known = ", ".join(store.sweeps()) or "none"
        errors.print(f"No runs of sweep {args.sweep!r} in {store.root}; sweeps in this store: {known}.", markup=False)
        return 1
    if args.format in ("terminal", "html"):
        for board in boards:
            _show(board, store, args, several=len(boards) > 1)
        return 0
    _write_text([_text(board, args.format) for board in boards], args.format, args.output)
    return 0


def _show(board, store, args, several: bool) -> None:
    """Print one dataset's board in the terminal or write its HTML report (one per dataset when ``several``)."""
    from rich.console import Console

    if args.format == "terminal":
        from harness.report.terminal import render_terminal

        console = Console()
        if not console.is_terminal:  # piped or captured: do not squeeze the table into 80 columns
            console = Console(width=200)
        render_terminal(board, console, per_class=args.per_class)
        return
    from harness.report.final import default_html_path, for_dataset
    from harness.report.html import write_html

    path = Path(args.output) if args.output else default_html_path(store, args.sweep)
    path = write_html(board, store, for_dataset(path, board.dataset if several else None))
    Console().print(f"HTML report: {path.resolve()}", markup=False, highlight=False)


def _text(board, fmt: str) -> str:
    if fmt == "md":
        from harness.report.markdown import render_markdown

        return render_markdown(board)
    from harness.report.csv_table import render_csv

    return render_csv(board)


def _write_text(texts: list[str], fmt: str, output: str | None) -> None:
    """One document from one or more boards: Markdown sections one after another, CSV rows under one header."""
    from rich.console import Console

    if fmt == "csv":
        texts = texts[:1] + [t.split("\n", 1)[1] if "\n" in t else "" for t in texts[1:]]
    text = ("" if fmt == "csv" else "\n").join(texts)
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(text, encoding="utf-8")
        Console(stderr=True).print(f"wrote {Path(output).resolve()}", markup=False, highlight=False)
    else:
        sys.stdout.write(text)
