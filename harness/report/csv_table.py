"""The leaderboard as CSV: per configuration a "mean" row, a "pooled" row when stored, and one row per class."""

from __future__ import annotations

import csv
import io
import math

from harness.report.leaderboard import EFFICIENCY_COLUMNS, Leaderboard, MetricSummary


def _number(value: float | None) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else repr(float(value))


def render_csv(board: Leaderboard) -> str:
    """Values as fractions (not percent), full precision; reported numbers in their own columns."""
    header = ["rank", "configuration", "configuration_key", "method", "preset", "dataset", "class_name",
              "seeds_complete", "seeds_total", "status", "run_ids"]
    for metric in board.metrics:
        header += [f"{metric}_mean", f"{metric}_std", f"{metric}_n", f"{metric}_reported", f"{metric}_reported_source"]
    header += list(EFFICIENCY_COLUMNS)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for rank, row in enumerate(board.rows, start=1):
        groups: list[tuple[str, dict[str, MetricSummary]]] = [("mean", row.metrics)]
        groups += [("pooled", row.pooled)] if row.pooled else []
        groups += list(row.per_class.items())
        done = sum(c.status == "complete" for c in row.cells)
        for class_name, summaries in groups:
            cells = [rank, row.label, row.configuration_key, row.method, row.preset, row.dataset, class_name,
                     done, len(row.cells), row.status, " ".join(row.complete_run_ids)]
            for metric in board.metrics:
                s = summaries.get(metric)
                reported = row.reported.get(metric) if class_name == "mean" else None
                cells += [_number(s.mean if s else None), _number(s.std if s else None), s.n if s else 0,
                          _number(reported.value if reported else None), reported.source if reported else ""]
            cells += [_number(row.efficiency.get(c)) for c in EFFICIENCY_COLUMNS]
            writer.writerow(cells)
    return out.getvalue()
