"""Plain sort-based reference implementations, for tests and the benchmark only.

These follow the official MVTec AD and MVTec LOCO evaluation semantics the straightforward way:
hold every pixel, sort all scores, sweep all distinct thresholds. Slow and memory-hungry on purpose;
``harness.metrics`` must agree with them (docs/metrics.md, tolerances).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def _trapezoid_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area of y(x) for x in [0, x_max], adding a linearly interpolated point at x_max."""
    below = x <= x_max
    xs, ys = list(x[below]), list(y[below])
    if x_max not in x:
        after = int(np.argmax(x > x_max))
        x0, x1, y0, y1 = x[after - 1], x[after], y[after - 1], y[after]
        xs.append(x_max)
        ys.append(y0 + (y1 - y0) * (x_max - x0) / (x1 - x0))
    return float(np.trapezoid(ys, xs))


def _sweep(scores: np.ndarray, normal: np.ndarray, overlap_of_threshold) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, overlap) at every distinct score taken as threshold (score >= t), from (0, 0)."""
    thresholds = np.unique(scores)[::-1]
    normal_scores = np.sort(scores[normal])
    false_positive = len(normal_scores) - np.searchsorted(normal_scores, thresholds, side="left")
    fpr = np.concatenate(([0.0], false_positive / len(normal_scores)))
    overlap = np.concatenate(([0.0], overlap_of_threshold(thresholds)))
    return fpr, overlap


def reference_aupro(maps: np.ndarray, masks: np.ndarray, limits: tuple[float, ...] = (0.3, 0.05, 0.01)) -> list[float]:
    """AUPRO per limit of (n, H, W) maps and masks, as the official MVTec code computes it.

    Regions: 8-connected components (3x3 structure) of each mask. One global descending sort of
    all pixels; each region pixel adds 1/(|C| R) to PRO, each normal pixel 1/N to FPR; tied
    scores cross together (the curve keeps the last point of each tie).
    """
    maps, masks = np.asarray(maps), np.asarray(masks, dtype=bool)
    weight = np.zeros(masks.shape, dtype=np.float64)
    n_regions = 0
    for image_weight, mask in zip(weight, masks):
        labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
        areas = np.bincount(labels.ravel())
        image_weight[mask] = 1.0 / areas[labels[mask]]
        n_regions += count
    scores = maps.ravel().astype(np.float64)
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    normal = ~masks.ravel()[order]
    last_of_tie = np.append(sorted_scores[1:] != sorted_scores[:-1], True)
    fpr = np.concatenate(([0.0], np.cumsum(normal)[last_of_tie] / normal.sum()))
    pro = np.concatenate(([0.0], np.cumsum(weight.ravel()[order])[last_of_tie] / n_regions))
    return [_trapezoid_to(fpr, pro, limit) / limit for limit in limits]


def reference_auc_spro(
    maps: np.ndarray,
    channel_masks: list[np.ndarray],
    saturations: list[list[float]],
    limits: tuple[float, ...] = (0.01, 0.05, 0.1, 0.3, 1.0),
) -> list[float]:
    """AUC-sPRO per limit; channel_masks[i] is (C_i, H, W), saturations[i][c] the S of channel c."""
    maps = np.asarray(maps, dtype=np.float64)
    defects = []
    for image_map, channels, image_saturations in zip(maps, channel_masks, saturations):
        for channel, s in zip(channels, image_saturations):
            defects.append((np.sort(image_map[channel != 0]), s))
    defect_free = np.stack([~(np.asarray(c) != 0).any(axis=0) for c in channel_masks])

    def mean_spro(thresholds: np.ndarray) -> np.ndarray:
        per_defect = [np.minimum((len(v) - np.searchsorted(v, thresholds, side="left")) / s, 1.0) for v, s in defects]
        return np.mean(per_defect, axis=0)

    fpr, spro = _sweep(maps.ravel(), defect_free.ravel(), mean_spro)
    return [_trapezoid_to(fpr, spro, limit) / limit for limit in limits]


def sklearn_pixel_metrics(maps: np.ndarray, masks: np.ndarray) -> dict[str, float]:
    """P-AUROC, P-AP and P-F1max with scikit-learn over all pixels (F1 from precision_recall_curve)."""
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

    scores, labels = np.asarray(maps).ravel(), np.asarray(masks).ravel().astype(bool)
    precision, recall, _ = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
    return {
        "p_auroc": float(roc_auc_score(labels, scores)),
        "p_ap": float(average_precision_score(labels, scores)),
        "p_f1max": float(f1.max()),
    }
