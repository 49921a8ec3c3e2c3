"""The end of a sweep: the leaderboard in the terminal and the HTML report written beside the store."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from harness.report.html import write_html
from harness.report.leaderboard import build_leaderboard
from harness.report.terminal import render_terminal
from harness.results.store import ResultStore


def default_html_path(store: ResultStore, sweep: str | None) -> Path:
    return store.root / "reports" / f"leaderboard{'-' + sweep if sweep else ''}.html"


def show_leaderboard_and_write_html(store: ResultStore, sweep: str | None, console: Console | None = None) -> Path | None:
    """Print the sweep's leaderboard and write its HTML report; returns the report's path (None if no runs)."""
    console = console or Console()
    board = build_leaderboard(store, sweep=sweep)
    if board.empty:
        console.print(f"No runs of sweep {sweep!r} in {store.root}.", markup=False)
        return None
    render_terminal(board, console)
    path = write_html(board, store, default_html_path(store, sweep))
    console.print(f"HTML report: {path}", markup=False, highlight=False)
    return path
