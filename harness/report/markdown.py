"""The leaderboard as Markdown: the summary table, problems, and per-class drill-down tables."""

from __future__ import annotations

from harness.report.leaderboard import Leaderboard
from harness.report.table import (
    TextTable,
    leaderboard_table,
    metric_title,
    per_class_table,
    reference_check_table,
    report_heading,
    reported_elsewhere_table,
)


def markdown_table(table: TextTable) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    lines = [line(table.headers), "|" + "|".join("---" for _ in table.headers) + "|"]
    lines += [line(cells) for cells in table.rows]
    return "\n".join(lines)


def render_markdown(board: Leaderboard) -> str:
    title, caption = report_heading(board)
    summary = leaderboard_table(board)
    parts = [
        f"# {title}",
        caption,
        markdown_table(summary),
    ]
    notes = summary.footnotes + summary.legend
    parts += ["\n".join(f"- {note}" for note in notes)] if notes else []
    elsewhere = reported_elsewhere_table(board)
    if elsewhere.rows:
        parts += ["## Reported by the papers on other datasets", elsewhere.footnotes[0], markdown_table(elsewhere)]
    checks = reference_check_table(board)
    if checks.rows:
        parts += ["## Reference check", markdown_table(checks), "\n".join(f"- {note}" for note in checks.footnotes + checks.legend)]
    for metric in board.metrics:
        parts += [f"## Per class: {metric_title(metric)}", markdown_table(per_class_table(board, metric))]
    return "\n\n".join(parts) + "\n"
