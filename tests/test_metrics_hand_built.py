"""Hand-built cases with answers worked out by hand, and edge cases (issue #3, items 2 and 6)."""

from __future__ import annotations

import numpy as np
import pytest
from rich.console import Console

import harness  # noqa: F401
from harness.metrics import METRIC_IMPLEMENTATION, METRIC_VERSION, MetricAccumulator, evaluate


def test_aupro_of_a_two_pixel_region():
    # region {0.9, 0.5}; normal {0.8, 0.2, 0.3, 0.4}. Curve (0,0) (0,.5) (.25,.5) (.25,1) ... (1,1)
    maps = np.array([[[0.9, 0.5, 0.8], [0.2, 0.3, 0.4]]], dtype=np.float32)
    masks = np.array([[[1, 1, 0], [0, 0, 0]]], dtype=bool)
    got = evaluate([0.9], [1], maps, masks)
    assert got["aupro"] == pytest.approx((0.25 * 0.5 + 0.05 * 1.0) / 0.3, abs=1e-9)
    assert got["aupro_05"] == pytest.approx(0.5, abs=1e-9)
    assert got["aupro_01"] == pytest.approx(0.5, abs=1e-9)
    assert got["p_auroc"] == pytest.approx(7 / 8, abs=1e-12)  # 7 of 8 (anomalous, normal) pairs ordered
    assert got["p_ap"] == pytest.approx(0.5 * 1.0 + 0.5 * 2 / 3, abs=1e-12)
    assert got["p_f1max"] == pytest.approx(2 * 2 / (3 + 2), abs=1e-12)


def test_regions_are_8_connected():
    # image 1: diagonal pair {0.9, 0.1} is ONE region (4-connectivity would make two);
    # image 2: one pixel 0.1. PRO just below 0.9 = (1/2 + 0) / 2 = 0.25 until every normal pixel is in.
    maps = np.array([[[0.9, 0.5], [0.4, 0.1]], [[0.1, 0.3], [0.2, 0.15]]], dtype=np.float32)
    masks = np.array([[[1, 0], [0, 1]], [[1, 0], [0, 0]]], dtype=bool)
    got = evaluate([0.9, 0.3], [1, 1], maps, masks)
    assert got["aupro"] == pytest.approx(0.25, abs=1e-9)  # 4-connected regions would give 1/3


def test_ties_cross_together():
    # anomalous and normal pixel share 0.5: one diagonal ROC step, AUROC = (1 + 0.5) / 2 over 2 pairs
    maps = np.array([[[0.5, 0.5, 0.2]]], dtype=np.float32)
    masks = np.array([[[1, 0, 0]]], dtype=bool)
    got = evaluate([0.5], [1], maps, masks)
    assert got["p_auroc"] == pytest.approx(0.75, abs=1e-12)
    assert got["p_ap"] == pytest.approx(0.5, abs=1e-12)


def test_constant_scores_give_auroc_one_half():
    maps = np.full((4, 6, 6), 0.25, dtype=np.float32)
    masks = np.zeros((4, 6, 6), dtype=bool)
    masks[0, 1:3, 1:3] = True
    masks[2, 4:, 4:] = True
    got = evaluate([1.0, 1.0, 1.0, 1.0], [1, 0, 1, 0], maps, masks)
    assert got["i_auroc"] == 0.5 and got["p_auroc"] == 0.5
    assert got["p_ap"] == pytest.approx(8 / 144, abs=1e-12)  # the anomalous fraction
    assert got["aupro"] == pytest.approx(0.15, abs=1e-9)  # straight line (0,0)-(1,1): 0.3^2/2/0.3


def test_class_without_anomalous_image_reports_missing_with_reason():
    accumulator = MetricAccumulator()
    maps = np.random.default_rng(0).random((3, 5, 5)).astype(np.float32)
    accumulator.update([0.1, 0.2, 0.3], [0, 0, 0], maps, np.zeros((3, 5, 5), bool), "carpet")
    table = accumulator.compute()
    for metric in ("i_auroc", "i_ap", "i_f1max", "p_auroc", "aupro"):
        assert table.for_class("carpet")[metric] is None
    assert "no anomalous image" in table.note("carpet", "i_auroc")
    assert "no anomalous pixel" in table.note("carpet", "aupro")
    assert table.mean()["i_auroc"] is None and "carpet" in table.note("mean", "i_auroc")
    assert table.metric_version == METRIC_VERSION and "AUPRO" in METRIC_IMPLEMENTATION
    console = Console(record=True, width=200)
    console.print(table.to_rich())
    text = console.export_text()
    assert "carpet" in text and "pooled" in text


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_map_names_the_sample_and_changes_nothing(bad):
    accumulator = MetricAccumulator()
    maps = np.zeros((3, 4, 4), dtype=np.float16)
    masks = np.zeros((3, 4, 4), dtype=bool)
    masks[:, 0, 0] = True
    accumulator.update([0.0, 1.0, 2.0], [1, 1, 1], maps, masks, "grid", sample_ids=["grid/a", "grid/b", "grid/c"])
    before = accumulator.compute().rows
    maps[1, 2, 3] = bad
    with pytest.raises(ValueError, match="'grid/e'.*NaN or inf"):
        accumulator.update([0.0, 1.0, 2.0], [1, 1, 1], maps, masks, "grid", sample_ids=["grid/d", "grid/e", "grid/f"])
    assert accumulator.compute().rows == before
    with pytest.raises(ValueError, match="batch item 1"):
        evaluate([0.0, 1.0, 2.0], [1, 1, 1], maps, masks)


def test_bad_inputs_are_clear_errors():
    accumulator = MetricAccumulator()
    maps, masks = np.zeros((2, 4, 4), np.float32), np.zeros((2, 4, 4), bool)
    with pytest.raises(ValueError, match="'x/1'.*image score is nan"):
        accumulator.update([0.0, float("nan")], [0, 0], maps, masks, "c", sample_ids=["x/0", "x/1"])
    with pytest.raises(ValueError, match="image label 2"):
        accumulator.update([0.0, 0.0], [0, 2], maps, masks, "c")
    with pytest.raises(ValueError, match="mask shape"):
        accumulator.update([0.0, 0.0], [0, 0], maps, np.zeros((2, 4, 5), bool), "c")
    with pytest.raises(ValueError, match="no data"):
        accumulator.compute()
