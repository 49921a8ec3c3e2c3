"""Plots of the HTML report, as PNG bytes (matplotlib, Agg backend; issue #5, item 6).

- a metric by configuration (the routing modes, the bottleneck sets, ...) with seed error bars
  and the paper's reported value as a marker;
- parameters against class-mean I-AUROC;
- adapter or expert usage per class (selection frequency averaged over layers and seeds);
- an anomaly-map gallery (image, ground truth, map) of chosen samples.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402

from harness.report.leaderboard import Leaderboard  # noqa: E402
from harness.report.table import metric_title  # noqa: E402


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def metric_by_configuration(board: Leaderboard, metric: str) -> bytes | None:
    """A metric per configuration in sweep order: mean with std-over-seeds error bars, x = paper."""
    rows = sorted((r for r in board.rows if metric in r.metrics and r.metrics[metric].n), key=lambda r: r.order)
    if not rows:
        return None
    means = np.array([100 * r.metrics[metric].mean for r in rows])
    stds = np.array([0.0 if math.isnan(r.metrics[metric].std) else 100 * r.metrics[metric].std for r in rows])
    x = np.arange(len(rows))
    labels = [_short_label(r.label, board) for r in rows]
    rotate = sum(len(label) for label in labels) > 40
    figure, axes = plt.subplots(figsize=(max(4.5, 0.9 * len(rows) + 2.0), 3.8))
    axes.errorbar(x, means, yerr=stds, fmt="o", capsize=5, color="#4C72B0", label="this harness (mean ± std over seeds)")
    reported = [(i, 100 * r.reported[metric].value) for i, r in enumerate(rows) if metric in r.reported]
    if reported:
        axes.scatter(*zip(*reported), marker="x", s=60, color="#C44E52", zorder=3, label="paper (reported)")
    axes.set_xticks(x, labels, rotation=35 if rotate else 0, ha="right" if rotate else "center", fontsize=8)
    axes.set_xlim(-0.6, len(rows) - 0.4)
    keys = ", ".join(k.rsplit(".", 1)[-1] for k in board.varying_keys) or "configuration"
    axes.set_title(f"{metric_title(metric)} by {keys}")
    axes.set_ylabel(f"{metric_title(metric)} (%)")
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18 if not rotate else -0.35), ncol=2, frameon=False)
    return _png(figure)


def _short_label(label: str, board: Leaderboard) -> str:
    """With one swept key the value alone says it ("top1" rather than "routing=top1")."""
    return label.split("=", 1)[1] if len(board.varying_keys) == 1 and "=" in label else label


def parameters_vs_metric(board: Leaderboard, metric: str = "i_auroc") -> bytes | None:
    """Trainable parameters (log x) against a class-mean metric; reported (params_m, metric) hollow."""
    points = [r for r in board.rows if r.efficiency.get("params_trainable") and metric in r.metrics and r.metrics[metric].n]
    if not points:
        return None
    figure, axes = plt.subplots(figsize=(5.5, 3.8))
    for row in points:
        summary = row.metrics[metric]
        std = 0.0 if math.isnan(summary.std) else 100 * summary.std
        x = row.efficiency["params_trainable"] / 1e6
        axes.errorbar(x, 100 * summary.mean, yerr=std, fmt="o", capsize=3, color="#4C72B0")
        axes.annotate(row.label, (x, 100 * summary.mean), fontsize=7, xytext=(4, 4), textcoords="offset points")
        if "params_m" in row.reported and metric in row.reported:
            axes.scatter(row.reported["params_m"].value, 100 * row.reported[metric].value, facecolors="none",
                         edgecolors="#C44E52", s=50, label="paper (reported)")
    handles, labels = axes.get_legend_handles_labels()
    if handles:
        axes.legend(handles[:1], labels[:1], fontsize=8)
    axes.set_xscale("log")
    plain = matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}")
    axes.xaxis.set_major_formatter(plain)
    axes.xaxis.set_minor_formatter(plain)
    axes.set_xlabel("trainable parameters (M)")
    axes.set_ylabel(f"class-mean {metric_title(metric)} (%)")
    axes.set_title(f"Parameters vs {metric_title(metric)}")
    return _png(figure)


def expert_usage_heatmap(routing_rows: list[dict], title: str) -> bytes | None:
    """Classes down, experts across: selection frequency averaged over layers and runs."""
    if not routing_rows:
        return None
    classes = sorted({r["class_name"] for r in routing_rows})
    experts = sorted({r["expert"] for r in routing_rows}, key=_natural)
    sums = np.zeros((len(classes), len(experts)))
    counts = np.zeros_like(sums)
    for r in routing_rows:
        value = r["selection_freq"] if r["selection_freq"] is not None else r["gate_mean"]
        if value is None or math.isnan(value):
            continue
        i, j = classes.index(r["class_name"]), experts.index(r["expert"])
        sums[i, j] += value
        counts[i, j] += 1
    usage = np.divide(sums, counts, out=np.full_like(sums, np.nan), where=counts > 0)
    figure, axes = plt.subplots(figsize=(1.0 + 0.9 * len(experts), 0.9 + 0.32 * len(classes)))
    image = axes.imshow(usage, cmap="viridis", vmin=0.0, vmax=max(1e-9, float(np.nanmax(usage)) if counts.any() else 1.0), aspect="auto")
    axes.set_xticks(range(len(experts)), experts, rotation=30, ha="right", fontsize=8)
    axes.set_yticks(range(len(classes)), classes, fontsize=8)
    for i in range(len(classes)):
        for j in range(len(experts)):
            if not math.isnan(usage[i, j]):
                axes.text(j, i, f"{usage[i, j]:.2f}", ha="center", va="center", fontsize=7, color="white")
    figure.colorbar(image, ax=axes, label="selection frequency")
    axes.set_title(title, fontsize=9)
    return _png(figure)


@dataclass
class GalleryItem:
    title: str  # e.g. "best anomalous: bottle/test/broken/000 (score 1.23)"
    anomaly_map: np.ndarray
    image: np.ndarray | None = None  # H x W x 3 uint8, at the map's size
    ground_truth: np.ndarray | None = None  # H x W bool


def anomaly_map_gallery(items: list[GalleryItem], vmax: float | None = None) -> bytes | None:
    """One row per sample: image, ground truth, map (one colour scale for all maps)."""
    if not items:
        return None
    vmax = vmax if vmax is not None else max(float(np.nanmax(item.anomaly_map.astype(np.float32))) for item in items)
    figure, grid = plt.subplots(len(items), 3, figsize=(7.5, 2.6 * len(items)), squeeze=False)
    for axes_row, item in zip(grid, items):
        panels = [("image", item.image, None), ("ground truth", item.ground_truth, "gray"),
                  ("anomaly map", item.anomaly_map.astype(np.float32), "inferno")]
        for axes, (name, data, cmap) in zip(axes_row, panels):
            axes.axis("off")
            if data is None:
                axes.text(0.5, 0.5, f"{name}\nnot available", ha="center", va="center", fontsize=8, transform=axes.transAxes)
                continue
            kwargs = {"vmin": 0.0, "vmax": vmax} if name == "anomaly map" else {}
            axes.imshow(data, cmap=cmap, **kwargs)
            if name != "image":
                axes.set_title(name, fontsize=8)
        axes_row[0].set_title(f"{item.title}\nimage", fontsize=8, loc="left")
    figure.tight_layout()
    return _png(figure)


def expert_family(name: str) -> str:
    """'leaders' for 'leader7', 'bases' for 'base0': the plural of an expert name without its number."""
    stem = name.rstrip("0123456789").rstrip("_")
    return stem if stem.endswith("s") else f"{stem}s"


def _natural(name: str):
    digits = "".join(ch for ch in name if ch.isdigit())
    return (name.rstrip("0123456789"), int(digits) if digits else -1, name)
