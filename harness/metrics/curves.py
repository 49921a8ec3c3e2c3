"""Threshold-sweep metrics from per-bin counts (spec section 5.1).

Input is the sweep from the highest score bin to the lowest: ``normal[k]`` and ``anomalous[k]``
items in bin k, which all cross a threshold together (ties behave as in scikit-learn).
AUROC is the trapezoid area under (FPR, TPR); AP is scikit-learn's step sum
sum_k (R_k - R_{k-1}) P_k; F1-max is max_k 2 TP_k / (TP_k + FP_k + P) (= max 2PR/(P+R));
an overlap-curve area integrates PRO or sPRO over FPR up to a limit with the trapezoid rule,
interpolating linearly at the limit, and divides by the limit.

The ``*_bound`` functions bound the error of each metric when bins merge several distinct scores
(the data inside a bin could be in any order): they are reported next to binned values.
"""

from __future__ import annotations

import numpy as np


def _with_origin(values: np.ndarray) -> np.ndarray:
    return np.concatenate(([0], values))


def roc_auc(normal: np.ndarray, anomalous: np.ndarray) -> float:
    """Area under the ROC curve; needs both classes present."""
    fp, tp = np.cumsum(normal), np.cumsum(anomalous)
    n, p = fp[-1], tp[-1]
    previous_tp = _with_origin(tp)[:-1]
    return float(np.sum(normal * (2.0 * previous_tp + anomalous)) / (2.0 * float(n) * float(p)))


def roc_auc_bound(normal: np.ndarray, anomalous: np.ndarray) -> float:
    """Largest AUROC change from reordering items inside bins."""
    return float(np.sum(normal.astype(np.float64) * anomalous) / (2.0 * float(normal.sum()) * float(anomalous.sum())))


def average_precision(normal: np.ndarray, anomalous: np.ndarray) -> float:
    """scikit-learn's average precision (step-wise, no interpolation)."""
    fp, tp = np.cumsum(normal), np.cumsum(anomalous)
    crossed = (tp + fp) > 0
    precision = np.divide(tp, tp + fp, out=np.zeros(len(tp)), where=crossed)
    return float(np.sum(anomalous * precision) / float(tp[-1]))


def average_precision_bound(normal: np.ndarray, anomalous: np.ndarray) -> float:
    """Largest AP change from reordering items inside bins."""
    fp, tp = np.cumsum(normal), np.cumsum(anomalous)
    fp_before, tp_before = _with_origin(fp)[:-1], _with_origin(tp)[:-1]
    high = np.divide(tp, tp + fp_before, out=np.zeros(len(tp)), where=(tp + fp_before) > 0)
    low = np.divide(tp_before, tp_before + fp, out=np.zeros(len(tp)), where=(tp_before + fp) > 0)
    return float(np.sum(anomalous * (high - low)) / float(tp[-1]))


def f1_max(normal: np.ndarray, anomalous: np.ndarray) -> float:
    """Largest F1 over all thresholds."""
    fp, tp = np.cumsum(normal), np.cumsum(anomalous)
    return float(np.max(2.0 * tp / (tp + fp + float(tp[-1]))))


def f1_max_bound(normal: np.ndarray, anomalous: np.ndarray) -> float:
    """Largest F1-max increase possible from a threshold inside a bin."""
    fp, tp = np.cumsum(normal), np.cumsum(anomalous)
    fp_before = _with_origin(fp)[:-1]
    upper = np.max(2.0 * tp / (tp + fp_before + float(tp[-1])))
    return max(0.0, float(upper) - f1_max(normal, anomalous))


def overlap_curve(normal: np.ndarray, overlap_weight: np.ndarray, weight_total: float) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, mean overlap) after each bin, starting from the origin."""
    fpr = _with_origin(np.cumsum(normal)) / float(np.sum(normal))
    overlap = _with_origin(np.cumsum(overlap_weight)) / float(weight_total)
    return fpr, overlap


def area_under_overlap(fpr: np.ndarray, overlap: np.ndarray, limit: float) -> float:
    """Trapezoid area of the curve over FPR in [0, limit], interpolated at the limit, divided by limit."""
    x0, x1, y0, y1 = fpr[:-1], fpr[1:], overlap[:-1], overlap[1:]
    inside = x0 < limit
    x0, x1, y0, y1 = x0[inside], x1[inside], y0[inside], y1[inside]
    clipped = x1 > limit
    x_end = np.where(clipped, limit, x1)
    y_end = y1.copy()
    y_end[clipped] = y0[clipped] + (y1[clipped] - y0[clipped]) * (limit - x0[clipped]) / (x1[clipped] - x0[clipped])
    return float(np.sum((x_end - x0) * (y0 + y_end)) / 2.0 / limit)


def area_under_overlap_bound(fpr: np.ndarray, overlap: np.ndarray, limit: float) -> float:
    """Largest change of ``area_under_overlap`` from reordering items inside bins."""
    x0, x1 = fpr[:-1], fpr[1:]
    rectangles = (x1 - x0) * (overlap[1:] - overlap[:-1])
    inside, clipped = x0 < limit, x1 > limit
    return float((np.sum(rectangles[inside & ~clipped]) / 2.0 + np.sum(rectangles[inside & clipped])) / limit)
