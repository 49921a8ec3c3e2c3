"""Per-class pixel state: the score histogram plus region counts, built batch by batch.

``tally_maps`` turns one stack of anomaly maps with its masks into a ``PixelTally``;
``PixelTally.merged`` adds two tallies (shards, LOCO parts or classes for the pooled row).
float16-representable maps are counted with one dense ``np.bincount`` over float16 keys;
other float32 maps with a sort (or a dense count when their key range is narrow).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from harness.metrics import curves
from harness.metrics.defects import DefectPixels
from harness.metrics.histogram import ANOMALOUS, N_COLUMNS, NORMAL, PRO_WEIGHT, SPRO_WEIGHT, ScoreHistogram
from harness.metrics.regions import WEIGHT_ONE, label_components, overlap_weights
from harness.metrics.score_keys import (
    FLOAT16_KEY_TO_FLOAT32_KEY,
    float16_keys,
    float32_keys,
    is_float16_exact,
)
from harness.metrics.table import AUPRO_LIMITS, SPRO_LIMITS

_DENSE_KEY_SPAN = 1 << 19  # widest key range counted with bincount instead of a sort


@dataclass
class PixelTally:
    """Histogram of one class's pixels plus how many PRO regions and sPRO defects it holds."""

    histogram: ScoreHistogram = field(default_factory=ScoreHistogram)
    n_regions: int = 0
    n_defects: int = 0

    def merged(self, other: "PixelTally", max_bins: int) -> "PixelTally":
        histogram = self.histogram.merged(other.histogram).within_budget(max_bins)
        return PixelTally(histogram, self.n_regions + other.n_regions, self.n_defects + other.n_defects)


def _count_float16(maps32: np.ndarray, positive: np.ndarray, level: int) -> ScoreHistogram:
    bins = float16_keys(maps32).ravel().astype(np.intp) * 2 + positive.ravel()
    counts = np.bincount(bins, minlength=1 << 17).reshape(-1, 2)
    occupied = np.flatnonzero(counts[:, 0] | counts[:, 1])
    columns = np.zeros((len(occupied), N_COLUMNS), dtype=np.int64)
    columns[:, :2] = counts[occupied]
    return ScoreHistogram.from_sorted_keys(FLOAT16_KEY_TO_FLOAT32_KEY[occupied] >> np.uint32(level), columns, level)


def _unique_counts(sorted_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(sorted_keys) == 0:
        return sorted_keys, np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.concatenate(([True], sorted_keys[1:] != sorted_keys[:-1])))
    return sorted_keys[starts], np.diff(np.append(starts, len(sorted_keys)))


def _count_float32(maps32: np.ndarray, positive: np.ndarray, level: int, max_bins: int) -> ScoreHistogram:
    keys = float32_keys(maps32).ravel() >> np.uint32(level)
    positive = positive.ravel()
    low, high = int(keys.min()), int(keys.max())
    if high - low < _DENSE_KEY_SPAN:
        bins = (keys - np.uint32(low)).astype(np.intp) * 2 + positive
        counts = np.bincount(bins, minlength=2 * (high - low + 1)).reshape(-1, 2)
        occupied = np.flatnonzero(counts[:, 0] | counts[:, 1])
        columns = np.zeros((len(occupied), N_COLUMNS), dtype=np.int64)
        columns[:, :2] = counts[occupied]
        return ScoreHistogram(level, (occupied + low).astype(np.uint32), columns)
    sorted_keys = np.sort(keys)
    unique, totals = _unique_counts(sorted_keys)
    if len(unique) > max_bins:  # widen before building columns, so they never exceed the budget
        shift = ScoreHistogram(level, unique, np.zeros((len(unique), 0), dtype=np.int64)).within_budget(max_bins).level - level
        level += shift
        keys >>= np.uint32(shift)
        sorted_keys >>= np.uint32(shift)
        unique, totals = _unique_counts(sorted_keys)
    del sorted_keys
    anomalous_keys, anomalous = _unique_counts(np.sort(keys[positive]))
    columns = np.zeros((len(unique), N_COLUMNS), dtype=np.int64)
    columns[:, NORMAL] = totals
    where = np.searchsorted(unique, anomalous_keys)
    columns[where, NORMAL] -= anomalous
    columns[where, ANOMALOUS] = anomalous
    return ScoreHistogram(level, unique, columns)


def _add_weights(histogram: ScoreHistogram, column: int, keys: np.ndarray, weights: np.ndarray) -> None:
    np.add.at(histogram.columns[:, column], np.searchsorted(histogram.keys, keys), weights)


def tally_maps(
    maps32: np.ndarray,
    positive: np.ndarray,
    *,
    level: int,
    max_bins: int,
    defects: DefectPixels | None = None,
) -> PixelTally:
    """Tally of an (n, H, W) float32 stack (canonical, finite) and its (n, H, W) union mask.

    PRO regions are the 8-connected components of ``positive``; ``defects`` adds sPRO weights.
    Counting starts at ``level`` (the class's current level) and widens to fit ``max_bins``.
    """
    if is_float16_exact(maps32):
        histogram = _count_float16(maps32, positive, level)
    else:
        histogram = _count_float32(maps32, positive, level, max_bins)
    histogram = histogram.within_budget(max_bins)
    shift = np.uint32(histogram.level)
    flat_maps = maps32.reshape(-1)

    labels, n_regions = label_components(positive)
    region_pixels = np.flatnonzero(labels)
    keys, weights = overlap_weights(float32_keys(flat_maps[region_pixels]) >> shift, labels.reshape(-1)[region_pixels])
    _add_weights(histogram, PRO_WEIGHT, keys, weights)

    n_defects = 0
    if defects is not None and defects.count:
        keys, weights = overlap_weights(
            float32_keys(flat_maps[defects.pixel_index]) >> shift, defects.defect_id, defects.saturation
        )
        _add_weights(histogram, SPRO_WEIGHT, keys, weights)
        n_defects = defects.count
    return PixelTally(histogram, n_regions, n_defects)


def _binned_note(histogram: ScoreHistogram, bound: float) -> str:
    if histogram.level == 0:
        return ""
    return (
        f"binned: adjacent float32 scores merged into bins of 2^{histogram.level} values "
        f"to stay within the bin budget; |error| <= {bound:.2e}"
    )


def pixel_metrics(tally: PixelTally) -> dict[str, tuple[float | None, str]]:
    """P-AUROC, P-AP, P-F1max and AUPRO at every limit of one tally, each with a note."""
    columns = tally.histogram.descending()
    normal, anomalous = columns[:, NORMAL], columns[:, ANOMALOUS]
    results: dict[str, tuple[float | None, str]] = {}
    n_normal, n_anomalous = int(normal.sum()), int(anomalous.sum())
    if n_anomalous == 0 or n_normal == 0:
        reason = "no anomalous pixel (no ground-truth defect)" if n_anomalous == 0 else "no normal pixel"
        for name in ("p_auroc", "p_ap", "p_f1max", *AUPRO_LIMITS):
            results[name] = (None, reason)
        return results
    binned = tally.histogram.level > 0
    results["p_auroc"] = (curves.roc_auc(normal, anomalous), _binned_note(tally.histogram, curves.roc_auc_bound(normal, anomalous) if binned else 0))
    results["p_ap"] = (curves.average_precision(normal, anomalous), _binned_note(tally.histogram, curves.average_precision_bound(normal, anomalous) if binned else 0))
    results["p_f1max"] = (curves.f1_max(normal, anomalous), _binned_note(tally.histogram, curves.f1_max_bound(normal, anomalous) if binned else 0))
    fpr, pro = curves.overlap_curve(normal, columns[:, PRO_WEIGHT], tally.n_regions * WEIGHT_ONE)
    for name, limit in AUPRO_LIMITS.items():
        bound = curves.area_under_overlap_bound(fpr, pro, limit) if binned else 0.0
        results[name] = (curves.area_under_overlap(fpr, pro, limit), _binned_note(tally.histogram, bound))
    return results


def spro_metrics(tally: PixelTally) -> dict[str, tuple[float | None, str]]:
    """AUC-sPRO at every LOCO limit of one tally, keyed by limit suffix ("01", "05", ...)."""
    columns = tally.histogram.descending()
    normal = columns[:, NORMAL]
    if tally.n_defects == 0 or int(normal.sum()) == 0:
        reason = "no annotated defect" if tally.n_defects == 0 else "no defect-free pixel"
        return {suffix: (None, reason) for suffix in SPRO_LIMITS}
    fpr, spro = curves.overlap_curve(normal, columns[:, SPRO_WEIGHT], tally.n_defects * WEIGHT_ONE)
    binned = tally.histogram.level > 0
    return {
        suffix: (
            curves.area_under_overlap(fpr, spro, limit),
            _binned_note(tally.histogram, curves.area_under_overlap_bound(fpr, spro, limit) if binned else 0.0),
        )
        for suffix, limit in SPRO_LIMITS.items()
    }
