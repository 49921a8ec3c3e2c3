"""Rich renderings shared by the commands."""

from __future__ import annotations

import math

from rich.table import Table

HEADLINE_METRICS = ("i_auroc", "i_ap", "i_f1max", "p_auroc", "p_ap", "p_f1max", "aupro")


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "[dim]-[/dim]"
    return f"{100 * value:.1f}"


def render_metric_table(table, title: str) -> Table:
    """Per-class rows, then the class mean (what papers report) and the pooled value, in percent."""
    values: dict[str, dict[str, float]] = {}
    for row in table.rows:
        values.setdefault(row.class_name, {})[row.metric] = row.value
    metrics = [m for m in HEADLINE_METRICS if any(m in v for v in values.values())]
    view = Table(title=title, caption="values in %; mean = unweighted class mean; pooled = all classes together")
    view.add_column("class")
    for metric in metrics:
        view.add_column(metric, justify="right")
    classes = [c for c in values if c not in ("mean", "pooled")]
    for name in sorted(classes) + [c for c in ("mean", "pooled") if c in values]:
        style = "bold" if name == "mean" else None
        view.add_row(name, *(_cell(values[name].get(m)) for m in metrics), style=style, end_section=name == sorted(classes)[-1])
    return view
