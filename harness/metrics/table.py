"""Metric names and the long-format result table ``MetricAccumulator.compute`` returns.

Rows are (class_name, metric, value, note): class_name is a real class, ``"mean"`` (the unweighted
mean over classes, the papers' "m" metrics) or ``"pooled"`` (one class-agnostic evaluation of the
mixed test set). A missing value is None and its note says why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, NamedTuple

import numpy as np

MEAN, POOLED = "mean", "pooled"

IMAGE_METRICS = ("i_auroc", "i_ap", "i_f1max")
AUPRO_LIMITS = {"aupro": 0.3, "aupro_05": 0.05, "aupro_01": 0.01}
PIXEL_METRICS = ("p_auroc", "p_ap", "p_f1max", *AUPRO_LIMITS)
STANDARD_METRICS = IMAGE_METRICS + PIXEL_METRICS
AUPIMO = "aupimo"  # per anomalous image, then the mean over them (aupimo.py)
AUPIMO_FPR_BOUNDS = (1e-5, 1e-4)
# MVTec LOCO: limit suffix in percent, as in aupro_05 = AUPRO at FPR 5%.
SPRO_LIMITS = {"01": 0.01, "05": 0.05, "10": 0.1, "30": 0.3, "100": 1.0}
LOCO_SPLITS = {"structural": "structural_anomalies", "logical": "logical_anomalies"}


def loco_metric_names() -> tuple[str, ...]:
    """LOCO extras: image AUROC and AUC-sPRO per anomaly kind, plus their mean (no suffix)."""
    names = [*(f"i_auroc_{kind}" for kind in LOCO_SPLITS), "i_auroc_loco_mean"]
    for suffix in SPRO_LIMITS:
        names += [f"auc_spro_{suffix}", *(f"auc_spro_{suffix}_{kind}" for kind in LOCO_SPLITS)]
    return tuple(names)


class MetricRow(NamedTuple):
    class_name: str
    metric: str
    value: float | None
    note: str = ""


@dataclass(frozen=True)
class MetricTable:
    """Long-format metric rows plus the version of the implementation that produced them."""

    rows: tuple[MetricRow, ...]
    metric_version: str
    metric_implementation: str
    sample_values: Mapping[str, Mapping[str, float]] = field(default_factory=dict)  # metric -> {sample id: value}

    @property
    def classes(self) -> list[str]:
        """Real class names, in row order."""
        seen = dict.fromkeys(row.class_name for row in self.rows if row.class_name not in (MEAN, POOLED))
        return list(seen)

    def to_dict(self) -> dict[str, dict[str, float | None]]:
        """{class_name or "mean" or "pooled": {metric: value}}."""
        table: dict[str, dict[str, float | None]] = {}
        for row in self.rows:
            table.setdefault(row.class_name, {})[row.metric] = row.value
        return table

    def for_class(self, class_name: str) -> dict[str, float | None]:
        """{metric: value} of one class (or "mean" / "pooled")."""
        return {row.metric: row.value for row in self.rows if row.class_name == class_name}

    def mean(self) -> dict[str, float | None]:
        """Unweighted class mean of every metric (the papers' "m" metrics)."""
        return self.for_class(MEAN)

    def pooled(self) -> dict[str, float | None]:
        """Class-agnostic metrics over the whole mixed test set."""
        return self.for_class(POOLED)

    def note(self, class_name: str, metric: str) -> str:
        for row in self.rows:
            if row.class_name == class_name and row.metric == metric:
                return row.note
        raise KeyError(f"no metric {metric!r} for {class_name!r}; have classes {self.classes + [MEAN, POOLED]}")

    def to_rich(self, percent: bool = True):
        """A rich Table: one row per class (then mean and pooled), one column per metric."""
        from rich.table import Table

        metrics = list(dict.fromkeys(row.metric for row in self.rows))
        table = Table(title=f"metrics (harness.metrics {self.metric_version})")
        table.add_column("class")
        for metric in metrics:
            table.add_column(metric, justify="right")
        as_dict = self.to_dict()
        last_class = self.classes[-1] if self.classes else None
        for class_name in [*self.classes, MEAN, POOLED]:
            cells = [as_dict.get(class_name, {}).get(metric) for metric in metrics]
            table.add_row(class_name, *(_format(v, percent) for v in cells), end_section=class_name == last_class)
        return table


def class_mean_row(metric: str, per_class: Mapping[str, Mapping[str, tuple[float | None, str]]]) -> MetricRow:
    """The "mean" row of one metric: unweighted mean over the classes where it is defined, the others named."""
    having = [name for name, results in per_class.items() if metric in results]
    defined = [name for name in having if per_class[name][metric][0] is not None]
    missing = [name for name in having if per_class[name][metric][0] is None]
    if not defined:
        return MetricRow(MEAN, metric, None, f"undefined for every class ({', '.join(missing)})")
    value = float(np.mean([per_class[name][metric][0] for name in defined]))
    note = f"mean over {len(defined)} of {len(having)} classes; missing: {', '.join(missing)}" if missing else ""
    return MetricRow(MEAN, metric, value, note)


def _format(value: float | None, percent: bool) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{100 * value:.2f}" if percent else f"{value:.4f}"
