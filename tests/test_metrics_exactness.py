"""harness.metrics against scikit-learn and the sort-based AUPRO reference (issue #3, exactness)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

import harness  # noqa: F401
from harness.metrics import MetricAccumulator, evaluate
from harness.metrics.reference import reference_aupro, sklearn_pixel_metrics

PIXEL = ("p_auroc", "p_ap", "p_f1max", "aupro", "aupro_05", "aupro_01")


def blob_test_set(seed: int, n: int = 10, size: int = 40) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float64 maps, bool masks with a few blobs on every other image, and image labels."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), dtype=bool)
    for i in range(0, n, 2):
        for _ in range(rng.integers(1, 4)):
            y, x = rng.integers(3, size - 3, 2)
            masks[i, y - rng.integers(1, 4) : y + rng.integers(1, 4), x - rng.integers(1, 4) : x + rng.integers(1, 4)] = True
    maps = rng.normal(size=masks.shape) + 1.5 * ndimage.gaussian_filter(masks.astype(float), 1.5) * 4
    return maps, masks, masks.reshape(n, -1).any(axis=1).astype(int)


def expected(maps: np.ndarray, masks: np.ndarray) -> dict[str, float]:
    reference = sklearn_pixel_metrics(maps.astype(np.float32), masks)
    reference.update(zip(("aupro", "aupro_05", "aupro_01"), reference_aupro(maps.astype(np.float32), masks)))
    return reference


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_float16_maps_match_sklearn_and_reference_within_1e6(seed):
    maps, masks, labels = blob_test_set(seed)
    maps16 = maps.astype(np.float16)
    scores = maps16.reshape(len(maps), -1).max(axis=1).astype(np.float64)
    got = evaluate(scores, labels, maps16, masks, batch_size=3)
    want = expected(maps16, masks)
    for name in PIXEL:
        assert got[name] == pytest.approx(want[name], abs=1e-6), name
    assert got["i_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert got["i_ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)


def test_float32_maps_match_sklearn_and_reference_within_1e4():
    maps, masks, labels = blob_test_set(7, n=12, size=48)
    maps32 = maps.astype(np.float32)
    got = evaluate(maps32.reshape(12, -1).max(axis=1), labels, maps32, masks, batch_size=5)
    want = expected(maps32, masks)
    for name in PIXEL:
        assert got[name] == pytest.approx(want[name], abs=1e-4), name
    assert 0.2 < got["aupro"] < 1.0 and 0.0 < got["aupro_01"] < got["aupro"]


def test_binned_float32_stays_within_1e4_and_its_declared_bound():
    """Past max_bins distinct scores, bins merge; the note's bound must hold and be < 1e-4."""
    maps, masks, labels = blob_test_set(11, n=24, size=72)  # 124k distinct float32 > 65,536 bins
    maps32 = maps.astype(np.float32)
    accumulator = MetricAccumulator(max_bins=1 << 16)
    accumulator.update(maps32.reshape(24, -1).max(axis=1), labels, maps32, masks, "c")
    table = accumulator.compute()
    want = expected(maps32, masks)
    for name in PIXEL:
        note = table.note("c", name)
        bound = float(re.search(r"\|error\| <= ([0-9.e+-]+)", note).group(1))
        error = abs(table.for_class("c")[name] - want[name])
        assert error <= bound * 1.01 + 1e-12, (name, error, note)
        assert error < 1e-4, name
    assert "binned" in table.note("c", "p_auroc")


def test_image_metrics_with_ties_match_sklearn():
    rng = np.random.default_rng(3)
    scores = np.round(rng.normal(size=60), 1)  # many ties
    labels = (rng.random(60) < 0.4).astype(int)
    maps = np.zeros((60, 4, 4), dtype=np.float32)
    got = evaluate(scores, labels, maps, np.zeros((60, 4, 4), bool))
    precision, recall, _ = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore"):
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
    assert got["i_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert got["i_ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert got["i_f1max"] == pytest.approx(f1.max(), abs=1e-12)
    assert got["p_auroc"] is None  # all-normal masks: pixel metrics undefined, not a crash


def test_negative_and_large_scores_and_torch_tensors():
    import torch

    maps, masks, labels = blob_test_set(5)
    maps16 = (maps * 3000 - 2000).astype(np.float16)  # negative values and values above 1
    got = evaluate(torch.from_numpy(maps16.reshape(10, -1).max(axis=1).astype(np.float32)), torch.tensor(labels), torch.from_numpy(maps16), torch.from_numpy(masks))
    want = expected(maps16, masks)
    for name in PIXEL:
        assert got[name] == pytest.approx(want[name], abs=1e-6), name
    as_bfloat16 = evaluate([1.0] * 10, labels, torch.from_numpy(maps16).to(torch.bfloat16), masks)
    assert 0.5 < as_bfloat16["p_auroc"] <= 1.0


def test_strictly_monotone_transform_changes_nothing():
    maps, masks, labels = blob_test_set(9)
    maps32 = maps.astype(np.float32)
    distinct, inverse = np.unique(maps32, return_inverse=True)
    gaps = np.random.default_rng(0).uniform(1, 5, len(distinct))
    transformed = (np.cumsum(gaps) - 40.0).astype(np.float32)
    assert np.all(np.diff(transformed) > 0)
    mapped = transformed[inverse].reshape(maps32.shape)
    scores = maps32.reshape(10, -1).max(axis=1)
    original = evaluate(scores, labels, maps32, masks)
    again = evaluate(np.exp(scores.astype(np.float64)), labels, mapped, masks)
    assert again == original  # identical histograms in the same order: bit-identical metrics
