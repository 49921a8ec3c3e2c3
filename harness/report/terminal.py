"""The leaderboard in the terminal: a rich table, problems underneath, optional per-class tables."""

from __future__ import annotations

from dataclasses import replace

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from harness.report.leaderboard import Leaderboard
from harness.report.table import (
    TERMINAL_CHECK_COLUMNS,
    TextTable,
    interval_table,
    leaderboard_table,
    metric_title,
    per_class_table,
    reference_check_table,
    reported_elsewhere_table,
)

_ROW_STYLES = {"complete": "", "partial": "yellow", "failed": "red", "missing": "dim"}
# The terminal shows the headline metrics; Markdown, HTML and CSV carry all of them.
TERMINAL_METRICS = ["i_auroc", "p_auroc", "aupro"]
WIDE_ENOUGH = 130  # columns needed for metrics and efficiency in one table
TERMINAL_EFFICIENCY = ("params_trainable", "flops_reconstruction_g", "wall_time_train_s", "infer_throughput_img_s")


def _rich_table(table: TextTable, title: str | None = None) -> Table:
    view = Table(title=title, title_justify="left", header_style="bold")
    for i, header in enumerate(table.headers):
        left = header in ("Class", "Status", "Configuration", "Method", "Dataset")
        # fold, never an ellipsis: a long name (mvtec_loco in a narrow column) goes on over lines, not cut
        view.add_column(header, justify="left" if left else "right", no_wrap=header in ("Configuration", "Class"), overflow="fold")
    for cells, status in zip(table.rows, table.row_status):
        view.add_row(*cells, style=_ROW_STYLES.get(status, ""))
    return view


def render_terminal(board: Leaderboard, console: Console | None = None, per_class: bool = False) -> None:
    console = console or Console()
    title = board.title
    if console.width >= WIDE_ENOUGH:
        table = leaderboard_table(board, TERMINAL_METRICS, TERMINAL_EFFICIENCY)
        console.print(_rich_table(table, f"{title}  ({board.store_root})"))
    else:  # a narrow terminal: metrics, their intervals and efficiency as tables of their own, not truncated cells
        table = leaderboard_table(board, TERMINAL_METRICS, (), intervals=False)
        console.print(_rich_table(table, f"{title}  ({board.store_root})"))
        intervals = interval_table(board, TERMINAL_METRICS)
        if intervals.rows:
            console.print(_rich_table(intervals, "Bootstrap intervals (class mean)"))
        efficiency = _without(leaderboard_table(board, [], TERMINAL_EFFICIENCY), "Seeds", "Status")  # both shown above
        console.print(_rich_table(efficiency, "Efficiency"))
    for note in table.footnotes:
        console.print(f"  {note}", style="dim" if note.startswith("*") else "yellow", markup=False, highlight=False)
    for note in table.legend:
        console.print(f"  {note}", style="dim", markup=False, highlight=False)
    elsewhere = reported_elsewhere_table(board)
    if elsewhere.rows:
        console.print(_rich_table(elsewhere, "Reported by the papers on other datasets"))
        console.print(f"  {elsewhere.footnotes[0]}", style="dim", markup=False, highlight=False)
    _print_reference_checks(board, console)
    if per_class:
        for metric in [m for m in TERMINAL_METRICS if m in board.metrics]:
            console.print(_rich_table(per_class_table(board, metric), f"Per class: {metric_title(metric)}"))


def _without(table: TextTable, *headers: str) -> TextTable:
    keep = [i for i, header in enumerate(table.headers) if header not in headers]
    return replace(table, headers=[table.headers[i] for i in keep], rows=[[row[i] for i in keep] for row in table.rows])


def _print_reference_checks(board: Leaderboard, console: Console) -> None:
    """The widest layout of the checks that fits the console without wrapping a cell."""
    for columns in TERMINAL_CHECK_COLUMNS:
        checks = reference_check_table(board, columns)
        view = _rich_table(checks, "Reference check")
        if Measurement.get(console, console.options.update(max_width=10_000), view).maximum <= console.width:
            break
    if not checks.rows:
        return
    console.print(view)
    for note in checks.footnotes + checks.legend:
        console.print(f"  {note}", style="dim", markup=False, highlight=False)
