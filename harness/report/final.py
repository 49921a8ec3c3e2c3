"""The end of a sweep: the leaderboard in the terminal and the HTML report written beside the store."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from harness.report.html import write_html
from harness.report.leaderboard import build_leaderboard, datasets_to_show
from harness.report.terminal import render_terminal
from harness.results.store import ResultStore


def default_html_path(store: ResultStore, sweep: str | None) -> Path:
    return store.root / "reports" / f"leaderboard{'-' + sweep if sweep else ''}.html"


def for_dataset(path: Path, dataset: str | None) -> Path:
    """The report path of one dataset's board when a store is shown as one board per dataset."""
    return path if dataset is None else path.with_name(f"{path.stem}-{dataset}{path.suffix}")


def show_leaderboard_and_write_html(store: ResultStore, sweep: str | None, console: Console | None = None) -> Path | None:
    """Print the sweep's leaderboard and write its HTML report, one of each per dataset when its cells
    span several; returns the (last) report's path (None if no runs)."""
    console = console or Console()
    path = None
    for dataset in datasets_to_show(store, sweep):
        board = build_leaderboard(store, sweep=sweep, dataset=dataset)
        if board.empty:
            continue
        render_terminal(board, console)
        path = write_html(board, store, for_dataset(default_html_path(store, sweep), dataset))
        console.print(f"HTML report: {path}", markup=False, highlight=False)
    if path is None:
        console.print(f"No runs of sweep {sweep!r} in {store.root}.", markup=False)
    return path
