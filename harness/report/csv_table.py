"""The leaderboard as CSV: per configuration a "mean" row, a "pooled" row when stored, and one row per class.

Metrics (means, stds, intervals, reported values) are in percent, as in every other view, at full
precision; p-values and efficiency columns keep their own units. Bootstrap intervals sit beside
each metric (``<metric>_ci_low``/``_ci_high``, empty where none);
``tied_with_best`` and ``p_vs_best`` carry the row's paired test on the sort metric;
``<metric>_reference_check`` the mean row's reference check against the reported value (reference_check.py).
"""

from __future__ import annotations

import csv
import io
import math

from harness.report.leaderboard import EFFICIENCY_COLUMNS, Leaderboard, LeaderboardRow, MetricSummary


def _number(value: float | None) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else repr(float(value))


def _percent(value: float | None) -> str:
    return _number(None if value is None else 100 * value)


def _tie_cells(row: LeaderboardRow) -> list[str]:
    """tied_with_best (true/false; empty for the best row and untested rows) and the test's p-value."""
    if row.tie is None or row.tie.tied is None:
        return ["", ""]
    return ["true" if row.tie.tied else "false", _number(row.tie.p_value)]


def render_csv(board: Leaderboard) -> str:
    """Metric values in percent, full precision; reported numbers in their own columns."""
    header = ["rank", "configuration", "configuration_key", "method", "preset", "dataset", "class_name",
              "seeds_complete", "seeds_total", "status", "run_ids", "tied_with_best", "p_vs_best"]
    for metric in board.metrics:
        header += [f"{metric}_mean", f"{metric}_std", f"{metric}_n", f"{metric}_ci_low", f"{metric}_ci_high",
                   f"{metric}_reported", f"{metric}_reported_source", f"{metric}_reference_check"]
    header += list(EFFICIENCY_COLUMNS)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for rank, row in enumerate(board.rows, start=1):
        groups: list[tuple[str, dict[str, MetricSummary]]] = [("mean", row.metrics)]
        groups += [("pooled", row.pooled)] if row.pooled else []
        groups += list(row.per_class.items())
        done = sum(c.status == "complete" for c in row.cells)
        checks = {check.metric: check for check in row.reference_checks}
        for class_name, summaries in groups:
            cells = [rank, row.label, row.configuration_key, row.method, row.preset, row.dataset, class_name,
                     done, len(row.cells), row.status, " ".join(row.complete_run_ids), *_tie_cells(row)]
            intervals = row.intervals.get(class_name, {})
            for metric in board.metrics:
                s, ci = summaries.get(metric), intervals.get(metric)
                reported = row.reported.get(metric) if class_name == "mean" else None
                check = checks.get(metric) if class_name == "mean" else None
                cells += [_percent(s.mean if s else None), _percent(s.std if s else None), s.n if s else 0,
                          _percent(ci.low if ci else None), _percent(ci.high if ci else None),
                          _percent(reported.value if reported else None), reported.source if reported else "",
                          check.explained if check else ""]
            cells += [_number(row.efficiency.get(c)) for c in EFFICIENCY_COLUMNS]
            writer.writerow(cells)
    return out.getvalue()
