"""Sharded accumulation merges bit-identically to one pass (issue #3, streaming and mergeable)."""

from __future__ import annotations

import pickle
from functools import reduce

import numpy as np
import pytest
from scipy import ndimage

import harness  # noqa: F401
from harness.metrics import MetricAccumulator

MAX_BINS = 1 << 16


@pytest.fixture(scope="module")
def mixed_test_set():
    """Three classes: float32 maps with more distinct scores than bins, float16 maps, and a
    class with no anomalous image; uneven sizes, ids in a shuffled order."""
    rng = np.random.default_rng(42)
    items = []
    for name, n, dtype, anomalous_every in (("wood", 13, np.float32, 2), ("screw", 9, np.float16, 3), ("pill", 5, np.float32, 0)):
        for i in range(n):
            mask = np.zeros((80, 80), dtype=bool)
            if anomalous_every and i % anomalous_every == 0:
                y, x = rng.integers(10, 70, 2)
                mask[y - 5 : y + rng.integers(2, 9), x - 4 : x + 6] = True
            score_map = (rng.normal(size=(80, 80)) + 3 * ndimage.gaussian_filter(mask.astype(float), 2)).astype(dtype)
            items.append((f"{name}/test/{i:03d}", name, float(score_map.max()), int(mask.any()), score_map, mask))
    order = rng.permutation(len(items))
    return [items[i] for i in order]


def feed(accumulator: MetricAccumulator, items, batch: int) -> MetricAccumulator:
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        by_dtype = {}
        for item in chunk:  # a batch is one stacked array: keep dtypes apart
            by_dtype.setdefault(item[4].dtype, []).append(item)
        for group in by_dtype.values():
            accumulator.update(
                [g[2] for g in group], [g[3] for g in group], np.stack([g[4] for g in group]),
                np.stack([g[5] for g in group]), [g[1] for g in group], sample_ids=[g[0] for g in group],
            )
    return accumulator


def test_uneven_shards_merge_bit_identically_in_any_order(mixed_test_set):
    single = feed(MetricAccumulator(MAX_BINS), mixed_test_set, batch=4).compute()
    cuts = [0, 3, 4, 15, 26, len(mixed_test_set)]
    shards = [feed(MetricAccumulator(MAX_BINS), mixed_test_set[a:b], batch=b - a if k % 2 else 2) for k, (a, b) in enumerate(zip(cuts, cuts[1:]))]
    left_to_right = reduce(MetricAccumulator.merge, shards).compute()
    right_to_left = reduce(MetricAccumulator.merge, shards[::-1]).compute()
    tree = shards[4].merge(shards[0]).merge(shards[2].merge(shards[1].merge(shards[3]))).compute()
    assert left_to_right.rows == single.rows
    assert right_to_left.rows == single.rows
    assert tree.rows == single.rows
    assert any("binned" in row.note for row in single.rows if row.class_name == "wood")  # the binned path was exercised


def test_batch_size_does_not_change_a_bit(mixed_test_set):
    one_by_one = feed(MetricAccumulator(MAX_BINS), mixed_test_set, batch=1).compute()
    all_at_once = feed(MetricAccumulator(MAX_BINS), mixed_test_set, batch=len(mixed_test_set)).compute()
    assert one_by_one.rows == all_at_once.rows


def test_pickled_shards_merge_identically(mixed_test_set):
    half = len(mixed_test_set) // 2
    a = feed(MetricAccumulator(MAX_BINS), mixed_test_set[:half], batch=5)
    b = feed(MetricAccumulator(MAX_BINS), mixed_test_set[half:], batch=5)
    shipped = pickle.loads(pickle.dumps(a)).merge(pickle.loads(pickle.dumps(b)))
    assert shipped.compute().rows == a.merge(b).compute().rows


def test_table_has_classes_mean_and_pooled(mixed_test_set):
    table = feed(MetricAccumulator(MAX_BINS), mixed_test_set, batch=6).compute()
    assert table.classes == ["pill", "screw", "wood"]
    per_class = table.to_dict()
    assert set(per_class) == {"pill", "screw", "wood", "mean", "pooled"}
    defined = [per_class[c]["p_auroc"] for c in ("screw", "wood")]
    assert table.mean()["p_auroc"] == pytest.approx(np.mean(defined), abs=1e-15)
    assert "missing: pill" in table.note("mean", "p_auroc")
    assert per_class["pill"]["i_auroc"] is None and "no anomalous image" in table.note("pill", "i_auroc")
    assert table.pooled()["i_auroc"] is not None and table.pooled()["i_auroc"] != table.mean()["i_auroc"]
    assert all(0.0 <= v <= 1.0 for row in table.rows if (v := row.value) is not None)


def test_maps_of_different_sizes_in_one_batch():
    rng = np.random.default_rng(1)
    maps = [rng.random((6, 8)).astype(np.float16), rng.random((5, 5)).astype(np.float16)]
    masks = [np.zeros((6, 8), bool), np.ones((5, 5), bool)]
    together = MetricAccumulator()
    together.update([0.1, 0.9], [0, 1], maps, masks, "cable", sample_ids=["a", "b"])
    apart = MetricAccumulator()
    apart.update([0.1], [0], maps[:1], masks[:1], "cable", sample_ids=["a"])
    apart.update([0.9], [1], maps[1:], masks[1:], "cable", sample_ids=["b"])
    assert together.compute().rows == apart.compute().rows
    assert together.compute().for_class("cable")["p_auroc"] is not None


def test_overlapping_shards_are_an_error(mixed_test_set):
    a = feed(MetricAccumulator(MAX_BINS), mixed_test_set[:5], batch=5)
    b = feed(MetricAccumulator(MAX_BINS), mixed_test_set[4:8], batch=4)
    with pytest.raises(ValueError, match="scored twice"):
        a.merge(b).compute()
