"""AUPIMO (harness.metrics.aupimo): anomalib's published cases, the finite-grid reference, merging, edge cases."""

from __future__ import annotations

import math
import pickle
import re
from functools import reduce

import numpy as np
import pytest
from scipy import ndimage

import harness  # noqa: F401
from harness.metrics import AUPIMO, AupimoAccumulator, evaluate
from harness.metrics.aupimo import AnomalousImage, image_tpr, shared_fpr_curve
from harness.metrics.score_keys import distinct_keys

# ------------------------------------------------------------------ anomalib's finite-grid algorithm


def grid_aupimo(maps: np.ndarray, masks: np.ndarray, thresholds: np.ndarray, bounds=(1e-5, 1e-4)) -> np.ndarray:
    """anomalib's aupimo_scores at given ascending thresholds: score >= t is positive; shared FPR = mean
    over normal images (empty mask) of their FPR; the thresholds closest to the bounds (lowest on ties);
    trapezoid of TPR over ln(shared FPR) between them, divided by ln(upper / lower), clipped. NaN for
    normal images."""
    flat, positive = maps.reshape(len(maps), -1).astype(np.float64), masks.reshape(len(masks), -1).astype(bool)
    normal = ~positive.any(axis=1)

    def fraction_at_or_above(scores):
        ordered = np.sort(scores)
        return (len(ordered) - np.searchsorted(ordered, thresholds, side="left")) / len(ordered) if len(ordered) else np.full(len(thresholds), np.nan)

    shared = np.mean([fraction_at_or_above(image) for image in flat[normal]], axis=0)
    tprs = np.array([fraction_at_or_above(image[mask]) for image, mask in zip(flat, positive)])
    start, stop = int(np.argmin(np.abs(shared - bounds[1]))), int(np.argmin(np.abs(shared - bounds[0])))
    x = np.log(shared[start : stop + 1][::-1])
    keep = np.isfinite(x)
    y = tprs[:, start : stop + 1][:, ::-1][:, keep]
    return np.clip(np.trapezoid(y, x[keep], axis=1) / math.log(bounds[1] / bounds[0]), 0.0, 1.0)


def all_distinct_in_normal_range(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Every distinct score between the normal images' lowest and highest (the exact threshold set)."""
    normal = ~masks.reshape(len(masks), -1).any(axis=1)
    low, high = maps[normal].min(), maps[normal].max()
    distinct = np.unique(maps.astype(np.float64))
    return distinct[(distinct >= low) & (distinct <= high)]


def accumulated(maps, masks, labels, ids, name="c", batch=None, **settings) -> AupimoAccumulator:
    accumulator = AupimoAccumulator(**settings)
    batch = batch or len(maps)
    for start in range(0, len(maps), batch):
        part = slice(start, start + batch)
        accumulator.update(maps[part], masks[part], labels[part], name, sample_ids=ids[part])
    return accumulator


# ------------------------------------------------------------------ anomalib's published cases (tests/unit/metrics/pimo)


def anomalib_case():
    """1 normal and 2 anomalous 1000x1000 images sharing one map: scores 1..7 held by 900k, 90k, 9k, 900,
    90, 9 and 1 pixels, so the FPR at thresholds 1..7 is 1, 1e-1, ..., 1e-6. Image 1 is all anomalous
    (TPR = FPR); image 2's anomalous pixels are the 100k highest (TPR = min(10 FPR, 1))."""
    scores = np.ones(1_000_000, dtype=np.float32)
    for top in (100_000, 10_000, 1_000, 100, 10, 1):
        scores[:top] += 1
    first_100k = np.zeros(1_000_000, dtype=bool)
    first_100k[:100_000] = True
    maps = np.stack([scores.reshape(1000, 1000)] * 3)
    masks = np.stack([np.zeros((1000, 1000), bool), np.ones((1000, 1000), bool), first_100k.reshape(1000, 1000)])
    return maps, masks, np.array([0, 1, 1]), ["normal", "anomalous_1", "anomalous_2"]


ANOMALIB_FPR = np.array([1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6])
ANOMALIB_AUPIMO = {  # test_pimo.py's expected trapezoid areas, normal image NaN
    (1e-1, 1.0): ((0.10 + 1.0) / 2, (1.0 + 1.0) / 2),
    (1e-3, 1e-1): ((((1e-3 + 1e-2) / 2) + ((1e-2 + 1e-1) / 2)) / 2, (((1e-2 + 1e-1) / 2) + ((1e-1 + 1.0) / 2)) / 2),
    (1e-5, 1e-4): ((1e-5 + 1e-4) / 2, (1e-4 + 1e-3) / 2),
}


@pytest.fixture(scope="module")
def case():
    return anomalib_case()


@pytest.mark.parametrize("scale", [1.0, 10.0])
def test_shared_fpr_and_tprs_of_anomalibs_case(case, scale):
    maps, masks, labels, ids = case
    accumulator = accumulated(maps * np.float32(scale), masks, labels, ids)
    tally = accumulator._tallies["c"]
    thresholds, shared, level = shared_fpr_curve(tally)
    assert level == 0 and len(thresholds) == 7
    np.testing.assert_allclose(shared, ANOMALIB_FPR, rtol=1e-12)
    by_id = {image.sample_id: image for image in tally.anomalous}
    np.testing.assert_allclose(image_tpr(by_id["anomalous_1"], thresholds)[0], ANOMALIB_FPR, rtol=1e-12)
    np.testing.assert_allclose(image_tpr(by_id["anomalous_2"], thresholds)[0], np.minimum(10 * ANOMALIB_FPR, 1.0), rtol=1e-12)


@pytest.mark.parametrize("bounds", list(ANOMALIB_AUPIMO))
@pytest.mark.parametrize("scale", [1.0, 10.0])
def test_aupimo_of_anomalibs_case(case, bounds, scale):
    maps, masks, labels, ids = case
    accumulator = accumulated(maps * np.float32(scale), masks, labels, ids, fpr_bounds=bounds)
    per_image = accumulator.per_image()
    assert set(per_image) == {"anomalous_1", "anomalous_2"}  # the normal image has no value (anomalib: NaN)
    assert per_image["anomalous_1"] == pytest.approx(ANOMALIB_AUPIMO[bounds][0], rel=1e-12)
    assert per_image["anomalous_2"] == pytest.approx(ANOMALIB_AUPIMO[bounds][1], rel=1e-12)
    value, note = accumulator.value(["c"])
    assert value == pytest.approx(sum(ANOMALIB_AUPIMO[bounds]) / 2, rel=1e-12)
    assert "anomalib refuses" in note  # 2 or 3 shared-FPR values in the range: anomalib needs force=True


@pytest.mark.parametrize("bounds", list(ANOMALIB_AUPIMO))
def test_the_grid_reference_reproduces_anomalibs_case_with_its_seven_thresholds(case, bounds):
    maps, masks, _, _ = case
    grid = np.linspace(maps[0].min(), maps[0].max(), 7)  # anomalib: num_thresholds=7 over the normal images' range
    got = grid_aupimo(maps, masks, grid, bounds)
    np.testing.assert_allclose(got, [np.nan, *ANOMALIB_AUPIMO[bounds]], rtol=1e-12)


def test_anomalibs_binary_classification_case():
    """test_binary_classification_curve.py: scores 1..4, anomalous pixels {3, 4}: TPR [1, 1, 1, 0.5] and
    the normal image's FPR [1, 0.75, 0.5, 0.25] at thresholds 1..4."""
    scores = np.arange(1, 5, dtype=np.float32).reshape(2, 2)
    accumulator = AupimoAccumulator()
    accumulator.update(np.stack([scores, scores]), np.stack([[[0, 0], [1, 1]], np.zeros((2, 2))]), [1, 0], "c", ["a", "n"])
    tally = accumulator._tallies["c"]
    thresholds, shared, _ = shared_fpr_curve(tally)
    np.testing.assert_allclose(shared, [1.0, 0.75, 0.5, 0.25])
    np.testing.assert_allclose(image_tpr(tally.anomalous[0], thresholds)[0], [1.0, 1.0, 1.0, 0.5])


# ------------------------------------------------------------------ exact against the grid reference


def blob_images(seed: int, n_normal: int = 8, n_anomalous: int = 6, size: int = 128, dtype=np.float16):
    """Noise maps, anomalous ones with a raised blob under their mask; > 1e5 normal pixels so the range
    [1e-5, 1e-4] is reachable."""
    rng = np.random.default_rng(seed)
    maps, masks = [], []
    for i in range(n_normal + n_anomalous):
        mask = np.zeros((size, size), dtype=bool)
        if i >= n_normal:
            y, x = rng.integers(20, size - 20, 2)
            mask[y - rng.integers(3, 12) : y + rng.integers(3, 12), x - rng.integers(3, 12) : x + rng.integers(3, 12)] = True
        lift = rng.uniform(1.0, 4.0) * ndimage.gaussian_filter(mask.astype(float), 2)
        maps.append((rng.normal(size=(size, size)) + lift).astype(dtype))
        masks.append(mask)
    labels = np.array([0] * n_normal + [1] * n_anomalous)
    ids = [f"c/test/{i:03d}" for i in range(len(maps))]
    return np.stack(maps), np.stack(masks), labels, ids


@pytest.mark.parametrize("seed,dtype", [(0, np.float16), (1, np.float16), (2, np.float32)])
def test_exact_equals_anomalibs_algorithm_at_every_distinct_score(seed, dtype):
    maps, masks, labels, ids = blob_images(seed, dtype=dtype)
    per_image = accumulated(maps, masks, labels, ids, batch=5).per_image()
    want = grid_aupimo(maps, masks, all_distinct_in_normal_range(maps, masks))
    got = np.array([per_image.get(sample_id, np.nan) for sample_id in ids])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12, equal_nan=True)
    assert np.isnan(want[: int((labels == 0).sum())]).all() and 0.0 < np.nanmean(want) < 1.0


def test_anomalibs_dense_grid_converges_to_the_exact_value():
    maps, masks, labels, ids = blob_images(3, dtype=np.float32)
    exact = accumulated(maps, masks, labels, ids).per_image()
    normal = maps[labels == 0]
    errors = []
    for count in (3_000, 300_000):  # anomalib's default is 300,000
        grid = np.linspace(normal.min(), normal.max(), count, dtype=np.float32).astype(np.float64)
        coarse = grid_aupimo(maps, masks, grid)
        errors.append(max(abs(coarse[i] - exact[sample_id]) for i, sample_id in enumerate(ids) if labels[i]))
    assert errors[1] < 1e-12 < errors[0]  # 300k thresholds separate every normal score that matters here


# ------------------------------------------------------------------ merging, edge cases


def test_shards_in_any_order_give_identical_values():
    maps, masks, labels, ids = blob_images(4, dtype=np.float32)
    order = np.random.default_rng(0).permutation(len(maps))
    maps, masks, labels, ids = maps[order], masks[order], labels[order], [ids[i] for i in order]
    single = accumulated(maps, masks, labels, ids)
    cuts = [0, 1, 5, 6, 11, len(maps)]
    shards = [accumulated(maps[a:b], masks[a:b], labels[a:b], ids[a:b], batch=2) for a, b in zip(cuts, cuts[1:])]
    shipped = [pickle.loads(pickle.dumps(shard)) for shard in shards]  # as Ray moves them between workers
    for merged in (reduce(AupimoAccumulator.merge, shards), reduce(AupimoAccumulator.merge, shipped[::-1]),
                   shards[3].merge(shards[0]).merge(shards[4].merge(shards[2].merge(shards[1])))):
        assert merged.per_image() == single.per_image()
        assert merged.rows() == single.rows()


def test_binned_normal_scores_stay_within_the_declared_bound_and_merge_identically():
    maps, masks, labels, ids = blob_images(5, dtype=np.float32)  # ~131k distinct normal scores
    exact = accumulated(maps, masks, labels, ids)
    binned = accumulated(maps, masks, labels, ids, batch=3, max_bins=1 << 16)
    value, note = binned.value(["c"])
    assert "binned" in note
    bound = float(re.search(r"\|error\| <= ([0-9.e+-]+)", note).group(1))
    assert abs(value - exact.value(["c"])[0]) <= bound and 0 < bound < 0.05
    halves = accumulated(maps[::2], masks[::2], labels[::2], ids[::2], max_bins=1 << 16).merge(
        accumulated(maps[1::2], masks[1::2], labels[1::2], ids[1::2], max_bins=1 << 16))
    assert halves.rows() == binned.rows()


def test_anomaly_above_every_normal_score_gets_1_and_below_every_normal_score_gets_0():
    maps, masks, labels, ids = blob_images(6, n_anomalous=0)
    top, bottom = np.zeros((2, 128, 128), dtype=np.float16), np.zeros((2, 128, 128), dtype=bool)
    bottom[:, 40:60, 40:60] = True
    top[0][bottom[0]] = maps.max() + 1
    top[1][bottom[1]] = maps.min() - 1
    accumulator = accumulated(np.concatenate([maps, top]), np.concatenate([masks, bottom]),
                              np.concatenate([labels, [1, 1]]), ids + ["above", "below"])
    assert accumulator.per_image() == {"above": 1.0, "below": 0.0}


def test_normal_and_unmasked_images_get_no_value_and_unmasked_ones_are_not_normal():
    maps, masks, labels, ids = blob_images(7)
    labels = labels.copy()
    labels[0] = 1  # labelled anomalous, empty mask: neither an AUPIMO value nor a normal image
    per_image = accumulated(maps, masks, labels, ids).per_image()
    assert set(per_image) == {sample_id for sample_id, mask in zip(ids, masks) if mask.any()}
    brighter = maps.copy()
    brighter[0] += np.float16(3)  # would move the shared FPR if image 0 counted as normal
    assert accumulated(brighter, masks, labels, ids).per_image() == per_image
    assert "1 image(s) labelled anomalous without anomalous pixels left out" in accumulated(maps, masks, labels, ids).value(["c"])[1]


def test_too_few_normal_pixels_or_no_normal_image_leave_it_undefined():
    maps, masks, labels, ids = blob_images(8, n_normal=2, size=64)  # 8192 normal pixels: lowest FPR ~1e-4
    value, note = accumulated(maps, masks, labels, ids).value(["c"])
    assert value is None and "above the lower bound 1e-05" in note
    value, note = accumulated(maps[labels == 1], masks[labels == 1], labels[labels == 1], ids[2:]).value(["c"])
    assert value is None and "no normal image" in note


def test_classes_mean_and_pooled_rows_and_evaluate():
    a, b = blob_images(9), blob_images(10)
    accumulator = accumulated(*a[:3], a[3], name="a").merge(accumulated(*b[:3], [f"b{i}" for i in range(len(b[3]))], name="b"))
    rows = {row.class_name: row for row in accumulator.rows()}
    assert set(rows) == {"a", "b", "mean", "pooled"}
    assert rows["mean"].value == pytest.approx((rows["a"].value + rows["b"].value) / 2, abs=1e-15)
    assert rows["pooled"].value is not None and rows["pooled"].value != rows["mean"].value
    maps, masks, labels, ids = a
    got = evaluate(maps.reshape(len(maps), -1).max(axis=1), labels, maps, masks, sample_ids=ids, batch_size=4)
    assert got[AUPIMO] == rows["a"].value


def test_loco_channels_are_united_and_bad_input_is_named():
    maps, masks, labels, ids = blob_images(11)
    split = np.zeros((len(masks), 2, *masks.shape[1:]), dtype=bool)
    split[:, 0, :, :64], split[:, 1, :, 64:] = masks[:, :, :64], masks[:, :, 64:]
    assert accumulated(maps, split, labels, ids).per_image() == accumulated(maps, masks, labels, ids).per_image()
    broken = maps.astype(np.float32)
    broken[3, 5, 5] = np.nan
    with pytest.raises(ValueError, match=r"sample 'c/test/003': anomaly map contains NaN"):
        accumulated(broken, masks, labels, ids)
    with pytest.raises(ValueError, match=r"fpr_bounds \(0.001, 0.0001\): expected 0 < lower < upper <= 1"):
        AupimoAccumulator(fpr_bounds=(1e-3, 1e-4))


def test_distinct_keys_count_float16_and_float32_alike():
    values = np.array([0.5, -0.0, 0.0, 0.5, 2.0], dtype=np.float32)
    keys16, counts16 = distinct_keys(values)
    keys32, counts32 = distinct_keys(values + np.float32(1e-7) * np.array([0, 0, 0, 0, 1], dtype=np.float32))
    assert counts16.tolist() == [2, 2, 1] and counts32.tolist() == [2, 2, 1]
    assert np.array_equal(keys16[:2], keys32[:2]) and isinstance(AnomalousImage("x", keys16, counts16).keys, np.ndarray)


# ------------------------------------------------------------------ stored per image, shown in the report


def write_aupimo_store(root) -> "ResultStore":
    """Two configurations, one seed, two classes of blob images; metric rows and per-image AUPIMO from the
    harness's own accumulators, written through the result store."""
    from harness.metrics import MetricAccumulator
    from harness.results import ResultStore, TrialResult

    store = ResultStore(root)
    for k, (mode, lift) in enumerate({"softmax": 1.5, "first": 0.5}.items()):
        metrics, samples = MetricAccumulator(), []
        overlaps = AupimoAccumulator()
        for c, name in enumerate(("bottle", "grid")):
            maps, masks, labels, _ = blob_images(20 + 2 * k + c, size=128)
            maps = (maps + np.float16(lift) * masks).astype(np.float16)
            ids = [f"{name}/test/{i:03d}" for i in range(len(maps))]
            scores = maps.reshape(len(maps), -1).max(axis=1).astype(np.float64)
            metrics.update(scores, labels, maps, masks, name, sample_ids=ids)
            overlaps.update(maps, masks, labels, name, sample_ids=ids)
            samples += [{"sample_id": i, "class_name": name, "defect_type": "blob" if y else "good", "label": int(y),
                         "score": float(s)} for i, y, s in zip(ids, labels, scores)]
        per_image = overlaps.per_image()
        rows = [{"class_name": r.class_name, "metric": r.metric, "value": r.value, "note": r.note}
                for r in (*metrics.compute().rows, *overlaps.rows())]
        config = {"method": "unilead", "preset": "cpu", "dataset": "mvtec_ad", "seed": 0, "method_config": {"routing": mode}}
        run = {"run_id": f"{mode}-0", "sweep": "routing", "method": "unilead", "preset": "cpu", "dataset": "mvtec_ad",
               "seed": 0, "config_json": config}
        store.write_run(TrialResult(run, rows, [{**s, "aupimo": per_image.get(s["sample_id"])} for s in samples]))
    return store


def test_per_image_aupimo_is_stored_and_older_files_read_as_null(tmp_path):
    import pyarrow.parquet as pq

    store = write_aupimo_store(tmp_path / "results")
    rows = store.read("sample_scores", ["softmax-0"]).to_pylist()
    anomalous = [r for r in rows if r["label"] == 1]
    assert len(anomalous) == 12 and all(0.0 <= r["aupimo"] <= 1.0 for r in anomalous)
    assert all(r["aupimo"] is None for r in rows if r["label"] == 0)
    stored_mean = {(r["class_name"]): r["value"] for r in store.read("metrics", ["softmax-0"]).to_pylist() if r["metric"] == AUPIMO}
    for name in ("bottle", "grid"):
        assert stored_mean[name] == pytest.approx(np.mean([r["aupimo"] for r in anomalous if r["class_name"] == name]), abs=1e-15)
    path = tmp_path / "results" / "sample_scores" / "first-0.parquet"
    pq.write_table(pq.read_table(path).drop_columns(["aupimo"]), path)  # as written before schema 3
    assert store.completed_run_ids() == {"softmax-0", "first-0"}
    assert {r["aupimo"] for r in store.read("sample_scores", ["first-0"]).to_pylist()} == {None}


def test_report_has_an_aupimo_column_and_a_per_image_distribution(tmp_path):
    from harness.report.html import per_image_aupimo, render_html
    from harness.report.leaderboard import build_leaderboard
    from harness.report.table import leaderboard_table, metric_title

    store = write_aupimo_store(tmp_path / "results")
    board = build_leaderboard(store, bootstrap=None)
    assert AUPIMO in board.metrics and metric_title(AUPIMO) == "AUPIMO" in leaderboard_table(board).headers
    softmax, first = board.row("routing=softmax"), board.row("routing=first")
    assert softmax.metrics[AUPIMO].mean > first.metrics[AUPIMO].mean  # the higher lift overlaps more at low FPR
    values = per_image_aupimo(board, store)
    assert list(values) == ["bottle", "grid"] and all(len(v) == 6 for by in values.values() for v in by.values())
    page = render_html(board, store)
    section = page[page.index("<h2>Per-image AUPIMO</h2>"):]
    assert section[: section.index("<h2>", 5)].count("<img ") == 2
