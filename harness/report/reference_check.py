"""Reference checks: each paper-reported number against our reproduction of it (issue 13 item 4).

MLPerf reference-check style: a reported value (harness/reported.py) states a tolerance, and a row's
class-mean metric (mean over its complete seeds) is "within" when it lies no further than that from
the value, else "below by X" or "above by X" (X in points). A reproduction whose bootstrap interval
over the test images (uncertainty.py) contains the reported value is within as well, and says so.
Only rows of the ``paper`` preset on the very dataset of the number are checked; a cpu-preset row,
a number reported for another or any dataset, and one whose protocol ours does not follow (the
file's ``not_comparable``) are "not comparable", with the reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from harness.metrics.table import MEAN, STANDARD_METRICS, loco_metric_names
from harness.report.uncertainty import Interval
from harness.reported import ReportedValue

if TYPE_CHECKING:
    from harness.report.leaderboard import LeaderboardRow

CHECKED_PRESET = "paper"
WITHIN, BELOW, ABOVE = "within", "below", "above"
NOT_COMPARABLE, NOT_MEASURED = "not comparable", "not measured"
CHECK_STATUSES = (WITHIN, BELOW, ABOVE, NOT_MEASURED, NOT_COMPARABLE)
_SLACK = 1e-9  # a difference equal to the tolerance, up to float rounding, is within


@dataclass(frozen=True)
class ReferenceCheck:
    metric: str
    reported: ReportedValue
    status: str  # within | below | above | not comparable | not measured
    measured: float | None = None  # fraction, class mean over the complete seeds
    seeds: int = 0
    interval: Interval | None = None
    reason: str = ""  # why not comparable, or why within despite the difference

    @property
    def difference(self) -> float | None:
        """measured - reported (fraction); None without a measurement."""
        return None if self.measured is None else self.measured - self.reported.value

    @property
    def flagged(self) -> bool:
        return self.status in (BELOW, ABOVE)

    @property
    def status_text(self) -> str:
        """Short: "within", "within (interval)", "below by 2.31" (points), "not comparable"."""
        if self.flagged:
            return f"{self.status} by {100 * abs(self.difference):.2f}"
        return f"{WITHIN} (interval)" if self.status == WITHIN and self.reason else self.status

    @property
    def explained(self) -> str:
        """The short status and, where there is one, its reason."""
        return f"{self.status_text}: {self.reason}" if self.reason else self.status_text


def checked_metric(metric: str) -> bool:
    """Quality metrics are checked; model sizes (params_m, flops_g) are not measured the papers' way."""
    return metric in STANDARD_METRICS or metric in loco_metric_names()


def check_row(row: LeaderboardRow) -> list[ReferenceCheck]:
    """One check per reported quality metric of the row, in the order the row's reported values come."""
    return [check_value(row, metric, value) for metric, value in row.reported.items() if checked_metric(metric)]


def check_value(row: LeaderboardRow, metric: str, value: ReportedValue) -> ReferenceCheck:
    reason = not_comparable_reason(row, value)
    if reason:
        return ReferenceCheck(metric, value, NOT_COMPARABLE, reason=reason)
    summary = row.metrics.get(metric)
    if summary is None or summary.n == 0 or math.isnan(summary.mean):
        return ReferenceCheck(metric, value, NOT_MEASURED, reason="no complete seed")
    interval = row.intervals.get(MEAN, {}).get(metric)
    found = ReferenceCheck(metric, value, WITHIN, summary.mean, summary.n, interval)
    if abs(found.difference) <= value.tolerance + _SLACK:
        return found
    if interval is not None and interval.low <= value.value <= interval.high:
        return ReferenceCheck(metric, value, WITHIN, summary.mean, summary.n, interval,
                              reason="outside the tolerance, but its bootstrap interval contains the reported value")
    return ReferenceCheck(metric, value, BELOW if found.difference < 0 else ABOVE, summary.mean, summary.n, interval)


def not_comparable_reason(row: LeaderboardRow, value: ReportedValue) -> str:
    """Why the row cannot reproduce the value ("" when it can)."""
    if row.preset != CHECKED_PRESET:
        return f"preset {row.preset}; only the {CHECKED_PRESET} preset is checked"
    if value.dataset != row.dataset:
        return f"reported for dataset {value.dataset}, the row ran on {row.dataset}"
    return value.not_comparable
