"""Plots of the HTML report, as PNG bytes (matplotlib, Agg backend; issue #5 item 6, issue #13 item 5).

- a metric by configuration (the routing modes, the bottleneck sets, ...): seed spread and the
  bootstrap interval as error bars on an axis from a round floor to 100, never a zoom onto the
  points, and the paper's reported value as a marker;
- an efficiency column (trainable parameters, or GFLOPs where parameters barely change) against
  class-mean I-AUROC;
- routing: expert usage per class, selection frequency and gate weight per layer, router entropy
  per layer and class;
- a gallery: the image with its ground-truth outline, and per configuration the map overlaid with
  a colour bar and the map thresholded at the run's pixel F1-max threshold;
- per-image AUPIMO: a box per configuration (and per class) with every anomalous image as a dot.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field

import matplotlib
import matplotlib.cm
import matplotlib.colors
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402

from harness.report.leaderboard import EFFICIENCY_TITLES, Leaderboard, LeaderboardRow  # noqa: E402
from harness.report.table import metric_title  # noqa: E402

MINIMUM_AXIS_SPAN = 20.0  # percent points: differences of a few tenths stay small on the page
BARELY_CHANGES = 0.05  # relative spread of trainable parameters below which GFLOPs take the x axis


def _png(figure, dpi: int = 100) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def metric_axis_floor(lowest: float) -> float:
    """The lower end of a percent axis: a multiple of 10 at least 5 points under the lowest bar,
    leaving at least MINIMUM_AXIS_SPAN points up to 100."""
    floor = 10.0 * math.floor((lowest - 5.0) / 10.0)
    return max(0.0, min(floor, 100.0 - MINIMUM_AXIS_SPAN))


def seed_legend(seed_counts: list[int]) -> str:
    """What a point and its thin bar are: the mean of how many seeds, and whether a spread exists."""
    counts = sorted(set(seed_counts))
    if counts == [1]:
        return "this harness: 1 seed (no spread over seeds)"
    if len(counts) == 1:
        return f"this harness: mean ± std over {counts[0]} seeds"
    return f"this harness: mean ± std over seeds ({counts[0]} to {counts[-1]}, n beside each point)"


def _percent_or_zero(value: float) -> float:
    return 0.0 if math.isnan(value) else 100.0 * value


def _measured_rows(board: Leaderboard, metric: str) -> list[LeaderboardRow]:
    return [r for r in board.rows if metric in r.metrics and r.metrics[metric].n]


def _draw_measured(axes, xs, rows: list[LeaderboardRow], metric: str) -> float:
    """Means with seed-std bars (thin) and bootstrap bars (thick); returns the lowest bar end."""
    means = np.array([100 * r.metrics[metric].mean for r in rows])
    stds = np.array([_percent_or_zero(r.metrics[metric].std) for r in rows])
    counts = [r.metrics[metric].n for r in rows]
    lowest = float(np.min(means - stds))
    intervals = [r.intervals.get("mean", {}).get(metric) for r in rows]
    if any(intervals):
        have = [i for i, ci in enumerate(intervals) if ci is not None]
        low = np.array([100 * intervals[i].low for i in have])
        high = np.array([100 * intervals[i].high for i in have])
        middle = means[have]
        axes.errorbar(np.asarray(xs)[have], middle, yerr=[middle - low, high - middle], fmt="none", elinewidth=6,
                      alpha=0.35, color="#4C72B0", label="95% bootstrap interval over test images")
        lowest = min(lowest, float(np.min(low)))
    axes.errorbar(xs, means, yerr=stds, fmt="o", capsize=5, color="#4C72B0", label=seed_legend(counts))
    if len(set(counts)) > 1:
        for x, mean, n in zip(xs, means, counts):
            axes.annotate(f"n={n}", (x, mean), fontsize=7, xytext=(6, -3), textcoords="offset points")
    return lowest


def _percent_axis(axes, lowest: float, title: str) -> None:
    floor = metric_axis_floor(lowest)
    axes.set_ylim(floor, 101.0)  # the margin keeps a point at 100 whole; no tick above 100
    axes.set_yticks(np.arange(floor, 100.0 + 1e-9, 5.0 if 100.0 - floor <= 30.0 else 10.0))
    axes.set_ylabel(f"{title} (%)")
    axes.grid(axis="y", alpha=0.3)


def metric_by_configuration(board: Leaderboard, metric: str) -> bytes | None:
    """A metric per configuration in sweep order; x = the paper's reported value."""
    rows = sorted(_measured_rows(board, metric), key=lambda r: r.order)
    if not rows:
        return None
    x = np.arange(len(rows))
    labels = [_short_label(r.label, board) for r in rows]
    rotate = sum(len(label) for label in labels) > 40
    figure, axes = plt.subplots(figsize=(max(4.5, 0.9 * len(rows) + 2.0), 3.8))
    lowest = _draw_measured(axes, x, rows, metric)
    reported = [(i, 100 * r.reported[metric].value) for i, r in enumerate(rows) if metric in r.reported]
    if reported:
        axes.scatter(*zip(*reported), marker="x", s=60, color="#C44E52", zorder=3, label="paper (reported)")
        lowest = min(lowest, min(value for _, value in reported))
    axes.set_xticks(x, labels, rotation=35 if rotate else 0, ha="right" if rotate else "center", fontsize=8)
    axes.set_xlim(-0.6, len(rows) - 0.4)
    keys = ", ".join(k.rsplit(".", 1)[-1] for k in board.varying_keys) or "configuration"
    axes.set_title(f"{metric_title(metric)} by {keys}")
    _percent_axis(axes, lowest, metric_title(metric))
    axes.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18 if not rotate else -0.35), ncol=1, frameon=False)
    return _png(figure)


def _short_label(label: str, board: Leaderboard) -> str:
    """With one swept key the value alone says it ("top1" rather than "routing=top1")."""
    return label.split("=", 1)[1] if len(board.varying_keys) == 1 and "=" in label else label


def efficiency_axis(board: Leaderboard) -> str:
    """Trainable parameters, or GFLOPs where the parameters barely change between rows and GFLOPs are recorded."""
    params = [r.efficiency.get("params_trainable") for r in board.rows if r.efficiency.get("params_trainable")]
    flops = [r.efficiency.get("flops_reconstruction_g") for r in board.rows if r.efficiency.get("flops_reconstruction_g")]
    if flops and (not params or max(params) <= (1 + BARELY_CHANGES) * min(params)):
        return "flops_reconstruction_g"
    return "params_trainable"


_AXIS_UNITS = {"params_trainable": ("Trainable parameters", "trainable parameters (M)", 1e-6),
               "flops_reconstruction_g": ("GFLOPs", "GFLOPs (reconstruction)", 1.0)}
_REPORTED_KEYS = {"params_trainable": "params_m", "flops_reconstruction_g": "flops_g"}


def efficiency_vs_metric(board: Leaderboard, column: str = "params_trainable", metric: str = "i_auroc") -> bytes | None:
    """An efficiency column (x; log scale when it spans a decade) against a class-mean metric; reported values hollow."""
    rows = [r for r in _measured_rows(board, metric) if r.efficiency.get(column)]
    if not rows:
        return None
    short, name, scale = _AXIS_UNITS.get(column, (EFFICIENCY_TITLES.get(column, column),) * 2 + (1.0,))
    xs = [scale * r.efficiency[column] for r in rows]
    figure, axes = plt.subplots(figsize=(5.5, 3.8))
    lowest = _draw_measured(axes, xs, rows, metric)
    for x, row in zip(xs, rows):
        axes.annotate(row.label, (x, 100 * row.metrics[metric].mean), fontsize=7, xytext=(4, 4), textcoords="offset points")
        reported_x = _REPORTED_KEYS.get(column)
        if reported_x in row.reported and metric in row.reported:
            axes.scatter(row.reported[reported_x].value, 100 * row.reported[metric].value, facecolors="none",
                         edgecolors="#C44E52", s=50, label="paper (reported)")
            lowest = min(lowest, 100 * row.reported[metric].value)
    handles, labels = axes.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    axes.legend(unique.values(), unique.keys(), fontsize=7, loc="lower right")
    if max(xs) > 10 * min(xs):
        axes.set_xscale("log")
    else:  # from zero, so that 1.90 against 1.93 GFLOPs looks as close as it is
        axes.set_xlim(0.0, 1.15 * max(xs + [x for x in axes.get_xlim()]))
    plain = matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}")
    axes.xaxis.set_major_formatter(plain)
    axes.xaxis.set_minor_formatter(plain)
    axes.set_xlabel(name)
    _percent_axis(axes, lowest, f"class-mean {metric_title(metric)}")
    axes.set_title(f"{short} vs {metric_title(metric)}")
    return _png(figure)


def _heatmap(values: np.ndarray, row_names: list[str], column_names: list[str], title: str, bar_label: str,
             vmax: float | None = None) -> bytes:
    """One annotated heatmap (annotations while the cells are wide enough to read them)."""
    finite = values[np.isfinite(values)]
    top = vmax if vmax is not None else (max(1e-9, float(finite.max())) if finite.size else 1.0)
    figure, axes = plt.subplots(figsize=(1.6 + 0.34 * max(len(column_names), 4), 0.9 + 0.3 * len(row_names)))
    image = axes.imshow(values, cmap="viridis", vmin=0.0, vmax=top, aspect="auto")
    axes.set_xticks(range(len(column_names)), column_names, rotation=45, ha="right", fontsize=7)
    axes.set_yticks(range(len(row_names)), row_names, fontsize=7)
    if len(column_names) <= 16:
        for (i, j), value in np.ndenumerate(values):
            if np.isfinite(value):
                axes.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6,
                          color="white" if value < 0.6 * top else "black")
    figure.colorbar(image, ax=axes, label=bar_label, fraction=0.05, pad=0.02)
    axes.set_title(title, fontsize=9)
    return _png(figure)


def _usage(row: dict) -> float | None:
    value = row["selection_freq"] if row.get("selection_freq") is not None else row.get("gate_mean")
    return None if value is None or math.isnan(value) else value


def _mean_grid(routing_rows: list[dict], row_key, column_key, value_of, row_order=None, column_order=None):
    """Rows x columns of the mean of value_of(routing row) over everything else (layers, classes, runs)."""
    row_names = row_order or sorted({row_key(r) for r in routing_rows}, key=_natural)
    column_names = column_order or sorted({column_key(r) for r in routing_rows}, key=_natural)
    sums = np.zeros((len(row_names), len(column_names)))
    counts = np.zeros_like(sums)
    where_row = {name: i for i, name in enumerate(row_names)}
    where_column = {name: j for j, name in enumerate(column_names)}
    for r in routing_rows:
        value = value_of(r)
        if value is not None:
            i, j = where_row[row_key(r)], where_column[column_key(r)]
            sums[i, j] += value
            counts[i, j] += 1
    return np.divide(sums, counts, out=np.full_like(sums, np.nan), where=counts > 0), row_names, column_names


def expert_usage_heatmap(routing_rows: list[dict], title: str) -> bytes | None:
    """Classes down, experts across: selection frequency averaged over layers and runs."""
    if not routing_rows:
        return None
    grid, classes, experts = _mean_grid(routing_rows, lambda r: r["class_name"], lambda r: r["expert"], _usage)
    return _heatmap(grid, classes, experts, title, "selection frequency")


def layer_expert_heatmap(routing_rows: list[dict], value: str, title: str) -> bytes | None:
    """Layers down, experts across: `value` (selection_freq or gate_mean) averaged over classes and runs."""
    def value_of(r):
        found = r.get(value)
        return None if found is None or math.isnan(found) else found

    if not any(value_of(r) is not None for r in routing_rows):
        return None
    grid, layers, experts = _mean_grid(routing_rows, lambda r: r["layer"], lambda r: r["expert"], value_of)
    return _heatmap(grid, layers, experts, title, value.replace("_", " "))


def router_entropy_grid(routing_rows: list[dict]):
    """Layers x classes of the router entropy over ln(number of experts), averaged over runs: 1 = uniform, 0 = one expert."""
    experts_of: dict[str, set[str]] = {}
    for r in routing_rows:
        experts_of.setdefault(r["layer"], set()).add(r["expert"])
    per_layer_row: dict[tuple, dict] = {}
    for r in routing_rows:  # the entropy is the layer's: one value per (run, class, layer)
        if r.get("entropy") is not None and not math.isnan(r["entropy"]) and len(experts_of[r["layer"]]) > 1:
            per_layer_row.setdefault((r.get("run_id"), r["class_name"], r["layer"]), r)
    return _mean_grid(list(per_layer_row.values()), lambda r: r["layer"], lambda r: r["class_name"],
                      lambda r: r["entropy"] / math.log(len(experts_of[r["layer"]])))


def router_entropy_heatmap(routing_rows: list[dict], title: str) -> bytes | None:
    """Layers down, classes across: the normalised router entropy (router_entropy_grid)."""
    grid, layers, classes = router_entropy_grid(routing_rows)
    if not layers:
        return None
    return _heatmap(grid, layers, classes, title, "entropy / ln(experts)", vmax=1.0)


@dataclass
class GalleryColumn:
    """One configuration in the gallery: its maps' colour scale and its pixel F1-max threshold."""

    label: str
    vmin: float
    vmax: float
    threshold: float | None  # None: no masks to choose it with


@dataclass
class GallerySample:
    title: str  # e.g. "worst anomalous: bottle/test/broken/000"
    image: np.ndarray | None  # H x W x 3 uint8 at the maps' size
    ground_truth: np.ndarray | None  # H x W bool
    maps: list[np.ndarray | None] = field(default_factory=list)  # one per column; None where it has no map of it
    scores: list[float | None] = field(default_factory=list)


def _show_image(axes, sample: GallerySample, shape) -> None:
    background = sample.image if sample.image is not None else np.full((*shape, 3), 128, dtype=np.uint8)
    axes.imshow(background)
    if sample.ground_truth is not None and sample.ground_truth.any():
        axes.contour(sample.ground_truth, levels=[0.5], colors="#00e676", linewidths=1.0)


def comparison_gallery(title: str, samples: list[GallerySample], columns: list[GalleryColumn]) -> bytes | None:
    """Samples down; across, the image with the ground truth outlined (green), then per configuration the
    map overlaid on the image and the map at or above the configuration's F1-max threshold (red)."""
    if not samples or not columns:
        return None
    width = 1 + 2 * len(columns)
    figure, grid = plt.subplots(len(samples), width, figsize=(1.7 * width, 1.9 * len(samples) + 0.8), squeeze=False,
                                layout="constrained")
    for axes_row, sample in zip(grid, samples):
        shape = next(m.shape for m in sample.maps if m is not None)
        _show_image(axes_row[0], sample, shape)
        axes_row[0].set_title(sample.title, fontsize=6, loc="left")
        for k, column in enumerate(columns):
            _draw_column(axes_row[1 + 2 * k], axes_row[2 + 2 * k], sample, k, column, shape)
    for axes in grid.ravel():
        axes.set_xticks([])
        axes.set_yticks([])
    for k, column in enumerate(columns):
        scale = matplotlib.cm.ScalarMappable(matplotlib.colors.Normalize(column.vmin, column.vmax), "inferno")
        figure.colorbar(scale, ax=list(grid[:, 1 + 2 * k]), location="bottom", shrink=0.9, aspect=15,
                        label=f"{column.label}: anomaly score")
    figure.suptitle(title, fontsize=9)
    return _png(figure, dpi=90)


def _draw_column(overlay_axes, threshold_axes, sample: GallerySample, k: int, column: GalleryColumn, shape) -> None:
    anomaly_map = sample.maps[k]
    if anomaly_map is None:
        for axes in (overlay_axes, threshold_axes):
            axes.text(0.5, 0.5, "no map", ha="center", va="center", fontsize=7, transform=axes.transAxes)
        return
    values = anomaly_map.astype(np.float32)
    _show_image(overlay_axes, sample, shape)
    overlay_axes.imshow(values, cmap="inferno", vmin=column.vmin, vmax=column.vmax, alpha=0.55)
    score = sample.scores[k]
    overlay_axes.set_title(f"{column.label}\nscore {score:.3g}" if score is not None else column.label, fontsize=6)
    if column.threshold is None:
        threshold_axes.text(0.5, 0.5, "no F1-max\nthreshold\n(no masks)", ha="center", va="center", fontsize=7,
                            transform=threshold_axes.transAxes)
        return
    _show_image(threshold_axes, sample, shape)
    predicted = np.ma.masked_where(values < column.threshold, np.ones_like(values))
    threshold_axes.imshow(predicted, cmap=matplotlib.colors.ListedColormap(["#ff1744"]), vmin=0, vmax=1, alpha=0.65)
    threshold_axes.set_title(f"map ≥ {column.threshold:.3g}\n(F1-max threshold)", fontsize=6)


PALETTE = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C")


def per_image_distribution(groups: dict[str, dict[str, list[float]]], title: str, axis_title: str) -> bytes | None:
    """Groups along x (classes, or one group), within each a box per configuration (colour) over its
    per-image values in [0, 1], drawn in percent: quartiles, whiskers at 1.5 IQR, every image a dot."""
    labels = list(dict.fromkeys(label for by_label in groups.values() for label, values in by_label.items() if values))
    if not labels:
        return None
    width = len(labels) + 1
    figure, axes = plt.subplots(figsize=(min(13.0, 2.0 + 0.45 * width * len(groups)), 3.8))
    jitter = np.random.default_rng(0)  # fixed: the same page for the same store
    labelled: set[str] = set()
    for i, by_label in enumerate(groups.values()):
        for k, label in enumerate(labels):
            values = 100 * np.asarray(by_label.get(label, []), dtype=float)
            if not len(values):
                continue
            x = i * width + k
            colour = PALETTE[k % len(PALETTE)]
            axes.boxplot(values, positions=[x], widths=0.7, showfliers=False, patch_artist=True,
                         boxprops={"facecolor": colour, "alpha": 0.3}, medianprops={"color": colour})
            axes.scatter(x + jitter.uniform(-0.22, 0.22, len(values)), values, s=7, color=colour, alpha=0.8, zorder=3,
                         label=None if label in labelled else label)
            labelled.add(label)
    axes.set_xticks([i * width + (len(labels) - 1) / 2 for i in range(len(groups))], list(groups), fontsize=8,
                    rotation=30 if len(groups) > 6 else 0, ha="right" if len(groups) > 6 else "center")
    axes.set_ylim(-2.0, 102.0)
    axes.set_ylabel(f"{axis_title} (%)")
    axes.grid(axis="y", alpha=0.3)
    axes.set_title(title, fontsize=9)
    axes.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14 if len(groups) <= 6 else -0.3),
                ncol=min(4, len(labels)), frameon=False)
    return _png(figure)


def expert_family(name: str) -> str:
    """'leaders' for 'leader7', 'bases' for 'base0': the plural of an expert name without its number."""
    stem = name.rstrip("0123456789").rstrip("_")
    return stem if stem.endswith("s") else f"{stem}s"


def _natural(name: str):
    digits = "".join(ch for ch in name if ch.isdigit())
    return (name.rstrip("0123456789"), int(digits) if digits else -1, name)
