"""The leaderboard laid out as header + string cells, shared by the terminal, Markdown and HTML views.

Metrics are shown in percent with two decimals, ``mean ± std`` over seeds (std only with two or
more seeds), then ``[low, high]``, the bootstrap interval over test images, where the board has
one. The rank of a row tied with the best (paired bootstrap, uncertainty.py) reads ``≈1``. A paper column appears beside a metric wherever some row has a reported value for
it; reported cells carry a trailing ``*`` and the table's footnote says what that means.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone

from harness.report.leaderboard import (
    EFFICIENCY_COLUMNS,
    EFFICIENCY_TITLES,
    METRIC_TITLES,
    Leaderboard,
    LeaderboardRow,
    MetricSummary,
)
from harness.report.reference_check import ABOVE, BELOW, CHECK_STATUSES, CHECKED_PRESET, WITHIN, ReferenceCheck
from harness.report.uncertainty import IMAGE_METRICS, BootstrapSettings, Interval

DASH = "—"
REPORTED_NOTE = "* reported in the paper (harness/reference/reported), not measured by this harness"


@dataclass
class TextTable:
    headers: list[str]
    rows: list[list[str]]
    row_status: list[str]  # per row: complete | partial | failed | missing
    footnotes: list[str]  # problems: failed, missing, damaged cells
    legend: list[str] = field(default_factory=list)  # what the marks and intervals mean


def metric_title(metric: str) -> str:
    return METRIC_TITLES.get(metric, metric)


def format_summary(summary: MetricSummary | None, interval: Interval | None = None) -> str:
    if summary is None or summary.n == 0 or math.isnan(summary.mean):
        return DASH
    text = f"{100 * summary.mean:.2f}"
    text = text if math.isnan(summary.std) else f"{text} ± {100 * summary.std:.2f}"
    return text if interval is None else f"{text} {_interval_text(interval)}"


TIED_MARK = "≈1"


def rank_text(row: LeaderboardRow, rank: int) -> str:
    """The row's place; "≈1" when the paired test cannot tell it from the best row."""
    if not row.complete_run_ids:
        return DASH
    return TIED_MARK if row.tie is not None and row.tie.tied else str(rank)


def uncertainty_legend(board: Leaderboard, metrics: list[str]) -> list[str]:
    """What the intervals and the ≈1 rank mean, and why some rows have neither."""
    settings = board.bootstrap
    if settings is None:
        return []
    legend = _interval_legend(settings, metrics) if any(row.intervals for row in board.rows) else []
    legend += _tie_legend(board, settings)
    untested = [row for row in board.rows if row.tie and row.tie.tied is None and not row.uncertainty_note]
    legend += [f"{row.label}: no tie test ({row.tie.reason})" for row in untested]
    return legend + [f"{row.label}: {row.uncertainty_note}" for row in board.rows if row.uncertainty_note]


def _interval_legend(settings: BootstrapSettings, metrics: list[str]) -> list[str]:
    pixel_count = f" of image metrics, {settings.pixel_resamples} of pixel metrics" if settings.pixel_resamples else ""
    legend = [
        f"[low, high]: {100 * settings.confidence:g}% percentile bootstrap interval of the seed mean over the test "
        f"images ({settings.resamples} resamples{pixel_count}, stratified by class and label, seed {settings.seed}; "
        f"every seed and every row scored on the same resampled images)."
    ]
    without = [metric_title(m) for m in metrics if m not in IMAGE_METRICS]
    if without and not settings.pixel_resamples:
        legend.append(f"No interval on {', '.join(without)}: the pixel bootstrap is opt-in (--pixel-bootstrap N).")
    return legend


def _tie_legend(board: Leaderboard, settings: BootstrapSettings) -> list[str]:
    sort_title = metric_title(board.sort_metric)
    if any(row.tie is not None and row.tie.tied is not None for row in board.rows):
        return [
            f"{TIED_MARK}: not significantly different from row 1 on {sort_title} (paired bootstrap of the difference "
            f"on identical resamples, two-sided, {100 * (1 - settings.confidence):g}% level); the test resamples test "
            f"images only, the ± spread over seeds is not part of it."
        ]
    if len(board.rows) > 1 and board.rows[0].complete_run_ids:
        return [f"No tie test on {sort_title}: row 1 has no resampled {sort_title}."]
    return []


def format_efficiency(column: str, value: float | None) -> str:
    if value is None:
        return DASH
    if column.startswith("params"):
        return f"{value / 1e6:.2f}M"
    if column.endswith("_g"):
        return f"{value:.2f}"
    if column == "peak_memory_mb":
        return f"{value:.0f}"
    return f"{value:.1f}"


def report_heading(board: Leaderboard) -> tuple[str, str]:
    """The title and the one-line caption (source store, units, ranking) of every written report."""
    title = board.title
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    spread = "mean ± std over seeds"
    if board.bootstrap is not None and any(row.intervals for row in board.rows):
        spread += f" and [{100 * board.bootstrap.confidence:g}% bootstrap interval over the test images]"
    caption = (f"Generated {stamp} from the result store {board.store_root}. Metrics in percent, class means, "
               f"{spread}; ranked by {metric_title(board.sort_metric)}.")
    return title, caption


def leaderboard_table(
    board: Leaderboard,
    metrics: list[str] | None = None,
    efficiency: tuple[str, ...] = EFFICIENCY_COLUMNS,
    intervals: bool = True,
) -> TextTable:
    """Rank, configuration, (method/dataset when they vary, modalities when a multi-modal method is there),
    seeds, metrics (+ paper), efficiency, status."""
    metrics = board.metrics if metrics is None else [m for m in metrics if m in board.metrics]
    show_method = len({r.method for r in board.rows}) > 1 and not _labels_name(board, "method")
    show_dataset = len({r.dataset for r in board.rows}) > 1 and not _labels_name(board, "dataset")
    show_modalities = any("modalities" in r.method_config for r in board.rows)  # a multi-modal method is on the board
    reported_metrics = {m for r in board.rows for m in r.reported if m in metrics}
    efficiency_columns = [c for c in efficiency if any(r.efficiency.get(c) is not None for r in board.rows)]

    headers = ["#", "Configuration"] + (["Method"] if show_method else []) + (["Dataset"] if show_dataset else [])
    headers += ["Modalities"] if show_modalities else []
    headers.append("Seeds")
    for metric in metrics:
        headers.append(metric_title(metric))
        if metric in reported_metrics:
            headers.append(f"{metric_title(metric)} paper*")
    headers += [EFFICIENCY_TITLES[c] for c in efficiency_columns]
    headers.append("Status")

    rows = []
    for rank, row in enumerate(board.rows, start=1):
        cells = [rank_text(row, rank), row.label]
        cells += [row.method] if show_method else []
        cells += [row.dataset] if show_dataset else []
        cells += [row.modalities] if show_modalities else []
        cells.append(row.seeds_text)
        for metric in metrics:
            cells.append(format_summary(row.metrics.get(metric), row.intervals.get("mean", {}).get(metric) if intervals else None))
            if metric in reported_metrics:
                cells.append(format_reported(row, metric))
        cells += [format_efficiency(c, row.efficiency.get(c)) for c in efficiency_columns]
        cells.append(status_text(row))
        rows.append(cells)
    footnotes = [REPORTED_NOTE] if reported_metrics else []
    footnotes += [f"{row.label}: {problem}" for row in board.rows for problem in row.problems]
    if board.earlier_runs:
        footnotes.append(f"* {board.earlier_runs} run(s) of configurations no longer in the file of sweep {board.sweep} are not "
                         "shown; `harness leaderboard` without --sweep lists every run of the store")
    return TextTable(headers, rows, [r.status for r in board.rows], footnotes, uncertainty_legend(board, metrics))


def interval_table(board: Leaderboard, metrics: list[str]) -> TextTable:
    """Rank, configuration and the class-mean bootstrap interval of each metric that has one (narrow terminals)."""
    metrics = [m for m in metrics if any(m in row.intervals.get("mean", {}) for row in board.rows)]
    headers = ["#", "Configuration"] + [f"{metric_title(m)} {100 * board.bootstrap.confidence:g}% CI" for m in metrics] if metrics else []
    rows = []
    for rank, row in enumerate(board.rows, start=1):
        found = row.intervals.get("mean", {})
        rows.append([rank_text(row, rank), row.label] + [_interval_text(found.get(m)) for m in metrics])
    return TextTable(headers, rows if metrics else [], [r.status for r in board.rows] if metrics else [], [])


def _interval_text(interval: Interval | None) -> str:
    return DASH if interval is None else f"[{100 * interval.low:.2f}, {100 * interval.high:.2f}]"


def _labels_name(board: Leaderboard, key: str) -> bool:
    """Whether every row's label already says its method (or dataset), so a column would repeat it."""
    return all(f"{key}={getattr(row, key)}" in row.label.split() for row in board.rows)


def per_class_table(board: Leaderboard, metric: str) -> TextTable:
    """Classes down, configurations across: one metric's per-class mean ± std, then the class mean."""
    headers = ["Class"] + [row.label for row in board.rows]
    rows = []
    def cells(group: str, summaries_of) -> list[str]:
        return [group] + [format_summary(summaries_of(row).get(metric), row.intervals.get(group, {}).get(metric)) for row in board.rows]

    for class_name in board.classes:
        rows.append(cells(class_name, lambda row: row.per_class.get(class_name, {})))
    rows.append(cells("mean", lambda row: row.metrics))
    if any(metric in row.pooled for row in board.rows):
        rows.append(cells("pooled", lambda row: row.pooled))
    return TextTable(headers, rows, ["complete"] * len(rows), [])


ELSEWHERE_NOTE = ("reported by the papers on other datasets, at the papers' own scale (harness/reference/reported): "
                  "context for the rows above, not comparable with them; the last column names a setting the "
                  "paper's number was reported for that this row does not share (— where none)")


def reported_elsewhere_table(board: Leaderboard) -> TextTable:
    """One line per (row, dataset): what the papers report for the row's method on datasets it was not run on."""
    metrics = [m for m in METRIC_TITLES if any(v.metric == m for r in board.rows for v in r.reported_elsewhere)]
    show_method = len({r.method for r in board.rows}) > 1
    headers = ["Configuration"] + (["Method"] if show_method else []) + ["Dataset"]
    headers += [f"{metric_title(m)} paper" for m in metrics] + ["Source", "Paper's own setting"]
    rows = []
    for row in board.rows:
        by_dataset: dict[str, dict] = {}
        for value in row.reported_elsewhere:
            by_dataset.setdefault(value.dataset, {})[value.metric] = value
        for dataset, values in by_dataset.items():
            first = next(iter(values.values()))
            cells = [row.label] + ([row.method] if show_method else []) + [dataset]
            cells += [f"{100 * values[m].value:.1f}" if m in values else DASH for m in metrics]
            differs = {k: v for k, v in first.config if _config_value(row.method_config, k) != v}
            sources = list(dict.fromkeys(_source_text(v) for v in values.values()))  # every table the line quotes
            cells += ["; ".join(sources), ", ".join(f"{k}={v}" for k, v in differs.items()) or DASH]
            rows.append(cells)
    return TextTable(headers, rows, ["complete"] * len(rows), [ELSEWHERE_NOTE] if rows else [])


def _source_text(value) -> str:
    """'UniLEAD: Table 1': the paper's short name (before any ':' or ' (') and the table."""
    short = value.paper.split(":")[0].split(" (")[0].strip()
    return value.source if value.source.startswith(short) else f"{short}: {value.source}"


def _config_value(method_config: dict, key: str):
    value = method_config.get(key)
    return tuple(value) if isinstance(value, list) else value


REFERENCE_CHECK_NOTE = (
    f"Reference check: a row of the {CHECKED_PRESET} preset on the paper's dataset is within when its class mean "
    "(over its complete seeds) lies within the stated tolerance of the reported value (harness/reference/reported, "
    "reference_check), or when its bootstrap interval over the test images contains that value (the status says "
    "so); otherwise it is below or above by the difference in points. Other presets, other datasets and protocols "
    "ours does not follow are not comparable.")
_CHECK_ROW_STATUS = {WITHIN: "complete", BELOW: "failed", ABOVE: "failed"}  # the row colours: flagged ones red
CHECK_COLUMNS = ("Configuration", "Metric", "Paper", "Source", "Measured", "Interval", "Difference", "Tolerance", "Status")
# Narrower layouts for a terminal, widest first; the last fits 80 columns beside a sweep's labels.
TERMINAL_CHECK_COLUMNS = (
    CHECK_COLUMNS,
    ("Configuration", "Metric", "Paper", "Measured", "Interval", "Difference", "Status"),
    ("Configuration", "Metric", "Paper", "Measured", "Status"),
)


def reference_check_table(board: Leaderboard, columns: tuple[str, ...] = CHECK_COLUMNS) -> TextTable:
    """One line per (row, reported quality metric): reported, measured, interval, difference, tolerance, status;
    the reasons of statuses that have one underneath, once per configuration."""
    checks = [(row, check) for row in board.rows for check in row.reference_checks]
    if len({row.dataset for row, _ in checks}) > 1 and not _labels_name(board, "dataset"):
        columns = columns[:1] + ("Dataset",) + columns[1:]
    if len({row.method for row, _ in checks}) > 1 and not _labels_name(board, "method"):
        columns = columns[:1] + ("Method",) + columns[1:]
    rows = [[_check_cell(column, row, check) for column in columns] for row, check in checks]
    reasons: dict[tuple[str, str], list[str]] = {}
    for row, check in checks:
        if check.reason:
            reasons.setdefault((row.label, check.reason), []).append(metric_title(check.metric))
    footnotes = [reference_check_summary(board)] if rows else []
    footnotes += [f"{label}, {', '.join(metrics)}: {reason}" for (label, reason), metrics in reasons.items()]
    statuses = [_CHECK_ROW_STATUS.get(check.status, "missing") for _, check in checks]
    return TextTable(list(columns), rows, statuses, footnotes, [REFERENCE_CHECK_NOTE] if rows else [])


def _check_cell(column: str, row: LeaderboardRow, check: ReferenceCheck) -> str:
    cells = {
        "Configuration": lambda: row.label,
        "Method": lambda: row.method,
        "Dataset": lambda: row.dataset,
        "Metric": lambda: metric_title(check.metric),
        "Paper": lambda: _points(check.reported.value),
        "Source": lambda: _source_text(check.reported),
        "Measured": lambda: _points(check.measured),
        "Interval": lambda: DASH if check.interval is None else _interval_text(check.interval),
        "Difference": lambda: _points(check.difference, signed=True),
        "Tolerance": lambda: f"±{_points(check.reported.tolerance)}",
        "Status": lambda: check.status_text,
    }
    return cells[column]()


def reference_check_summary(board: Leaderboard) -> str:
    """'4 reference checks, tolerance ±1.00 points: 1 within, 2 below, 1 not comparable'."""
    checks = [check for row in board.rows for check in row.reference_checks]
    statuses = [check.status for check in checks]
    counts = [f"{statuses.count(status)} {status}" for status in CHECK_STATUSES if status in statuses]
    tolerances = sorted({_points(check.reported.tolerance) for check in checks if check.measured is not None})
    stated = f", tolerance {' or '.join(f'±{t}' for t in tolerances)} points" if tolerances else ""
    return f"{len(statuses)} reference check{'s' if len(statuses) != 1 else ''}{stated}: " + ", ".join(counts)


def _points(value: float | None, signed: bool = False) -> str:
    if value is None:
        return DASH
    return f"{100 * value:+.2f}" if signed else f"{100 * value:.2f}"


def format_reported(row: LeaderboardRow, metric: str) -> str:
    value = row.reported.get(metric)
    if value is None:
        return DASH
    return f"{100 * value.value:.1f}* ({value.source})"


def status_text(row: LeaderboardRow) -> str:
    status = row.status
    if status == "partial":
        return f"partial ({row.seeds_text} seeds)"
    return status
