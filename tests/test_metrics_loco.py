"""MVTec LOCO AUC-sPRO (spec section 4.3): hand-built values, the reference, and sharding."""

from __future__ import annotations

import json
from functools import reduce

import numpy as np
import pytest

import harness  # noqa: F401
from harness.metrics import MetricAccumulator, load_defects_config, loco_metric_names
from harness.metrics.reference import reference_auc_spro

CONFIG = [
    {"defect_name": "missing_part", "pixel_value": 1, "saturation_threshold": 0.5, "relative_saturation": True},
    {"defect_name": "scratch", "pixel_value": 2, "saturation_threshold": 10, "relative_saturation": False},
    {"defect_name": "wrong_count", "pixel_value": 3, "saturation_threshold": 1.0, "relative_saturation": True},
]


@pytest.fixture()
def config_path(tmp_path):
    path = tmp_path / "breakfast_box" / "defects_config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(CONFIG))
    return path


def hand_built(accumulator: MetricAccumulator, config_path, items=(0, 1, 2)) -> MetricAccumulator:
    """good 2x2 {.8 .5 .3 .1}; structural: defect 1 on {.9 .6} (S = 1 pixel), defect 2 on {.7}
    (S = min(10, 1) = 1), normal {.2}; logical: defect 3 on all four {.95 .85 .05 .05} (S = 4)."""
    good = np.array([[0.8, 0.5], [0.3, 0.1]], dtype=np.float32)
    structural = np.array([[0.9, 0.6], [0.7, 0.2]], dtype=np.float32)
    logical = np.array([[0.95, 0.85], [0.05, 0.05]], dtype=np.float32)
    empty = np.zeros((2, 2), np.uint8)
    structural_channels = np.stack([np.array([[1, 1], [0, 0]], np.uint8), np.array([[0, 0], [2, 0]], np.uint8)])
    logical_channels = np.stack([np.full((2, 2), 3, np.uint8), empty])  # second channel: padding
    pick = list(items)
    accumulator.update(
        np.array([0.1, 0.9, 0.05])[pick], np.array([0, 1, 1])[pick], np.stack([good, structural, logical])[pick],
        np.stack([np.stack([empty, empty]), structural_channels, logical_channels])[pick], "breakfast_box",
        sample_ids=[["bb/good/000", "bb/structural_anomalies/000", "bb/logical_anomalies/000"][i] for i in pick],
        defect_types=[["good", "structural_anomalies", "logical_anomalies"][i] for i in pick], defects_config=config_path,
    )
    return accumulator


def test_hand_built_auc_spro(config_path):
    accumulator = MetricAccumulator()
    hand_built(accumulator, config_path)
    got = accumulator.compute().for_class("breakfast_box")
    # structural curve: (0,0) (0,.5) (.2,.5) (.2,1) ... (1,1), FPR over 5 defect-free pixels
    assert got["auc_spro_05_structural"] == pytest.approx(0.5, abs=1e-9)
    assert got["auc_spro_10_structural"] == pytest.approx(0.5, abs=1e-9)
    assert got["auc_spro_30_structural"] == pytest.approx((0.2 * 0.5 + 0.1) / 0.3, abs=1e-9)
    assert got["auc_spro_100_structural"] == pytest.approx(0.1 + 0.8, abs=1e-9)
    # logical curve: sPRO 0.5 before any false positive, flat until FPR 1
    for suffix in ("01", "05", "10", "30", "100"):
        assert got[f"auc_spro_{suffix}_logical"] == pytest.approx(0.5, abs=1e-9)
    assert got["auc_spro_30"] == pytest.approx(((0.2 * 0.5 + 0.1) / 0.3 + 0.5) / 2, abs=1e-9)
    assert got["i_auroc_structural"] == 1.0 and got["i_auroc_logical"] == 0.0 and got["i_auroc_loco_mean"] == 0.5
    assert set(loco_metric_names()) <= set(got)


def test_auc_spro_matches_reference_on_random_defects(config_path):
    rng = np.random.default_rng(5)
    config = load_defects_config(config_path)
    maps, channels, kinds, saturations_by_kind = [], [], [], {"structural_anomalies": [], "logical_anomalies": []}
    for i in range(9):
        kind = ("good", "structural_anomalies", "logical_anomalies")[i % 3]
        stack = np.zeros((3, 24, 24), np.uint8)
        if kind != "good":
            for c in range(rng.integers(1, 4)):
                y, x = rng.integers(2, 20, 2)
                value = int(rng.integers(1, 4))
                stack[c, y - 2 : y + rng.integers(1, 5), x - 1 : x + rng.integers(1, 6)] = value
        maps.append((rng.normal(size=(24, 24)) + 2.0 * (stack != 0).any(axis=0)).astype(np.float16))
        channels.append(stack)
        kinds.append(kind)
    accumulator = MetricAccumulator()
    for start in (0, 4):  # two uneven batches
        part = slice(start, start + 4 if start == 0 else None)
        accumulator.update(
            [float(m.max()) for m in maps[part]], [int(k != "good") for k in kinds[part]], np.stack(maps[part]),
            np.stack(channels[part]), "juice_bottle", defect_types=kinds[part], defects_config={"juice_bottle": CONFIG},
        )
    got = accumulator.compute().for_class("juice_bottle")
    for kind, short in (("structural_anomalies", "structural"), ("logical_anomalies", "logical")):
        chosen = [i for i in range(9) if kinds[i] in ("good", kind)]
        saturations = [
            [float(config[int(ch.max())].saturation_pixels(np.count_nonzero(ch))) for ch in channels[i] if ch.any()]
            for i in chosen
        ]
        want = reference_auc_spro(
            np.stack([maps[i] for i in chosen]).astype(np.float32),
            [np.stack([ch for ch in channels[i] if ch.any()] or [np.zeros((24, 24), np.uint8)]) for i in chosen],
            saturations,
        )
        for suffix, value in zip(("01", "05", "10", "30", "100"), want):
            assert got[f"auc_spro_{suffix}_{short}"] == pytest.approx(value, abs=1e-6), (kind, suffix)


def test_loco_shards_merge_bit_identically(config_path):
    single = hand_built(MetricAccumulator(), config_path).compute().rows
    shards = [hand_built(MetricAccumulator(), config_path, items) for items in ((2,), (0,), (1,))]
    assert reduce(MetricAccumulator.merge, shards).compute().rows == single
    assert shards[1].merge(shards[2].merge(shards[0])).compute().rows == single
    two = [hand_built(MetricAccumulator(), config_path, items) for items in ((1, 2), (0,))]
    assert two[0].merge(two[1]).compute().rows == single


def test_bool_channels_with_defect_ids_equal_valued_channels(config_path):
    valued = hand_built(MetricAccumulator(), config_path).compute().rows
    good = np.array([[0.8, 0.5], [0.3, 0.1]], dtype=np.float32)
    structural = np.array([[0.9, 0.6], [0.7, 0.2]], dtype=np.float32)
    logical = np.array([[0.95, 0.85], [0.05, 0.05]], dtype=np.float32)
    channels = [
        np.zeros((0, 2, 2), bool),
        np.array([[[1, 1], [0, 0]], [[0, 0], [1, 0]]], bool),
        np.ones((1, 2, 2), bool),
    ]
    accumulator = MetricAccumulator()
    accumulator.update(
        [0.1, 0.9, 0.05], [0, 1, 1], [good, structural, logical], channels, "breakfast_box",
        sample_ids=["bb/good/000", "bb/structural_anomalies/000", "bb/logical_anomalies/000"],
        defect_types=["good", "structural_anomalies", "logical_anomalies"],
        defect_ids=[[], [1, 2], [3]], defects_config={"breakfast_box": CONFIG},
    )
    assert accumulator.compute().rows == valued


def test_loco_input_errors(config_path):
    accumulator = MetricAccumulator()
    maps = np.zeros((1, 2, 2), np.float32)
    channels = np.zeros((1, 2, 2, 2), np.uint8)
    channels[0, 0, 0, 0] = 9
    with pytest.raises(ValueError, match="defect id 9"):
        accumulator.update([1.0], [1], maps, channels, "pushpins", defect_types=["logical_anomalies"], defects_config=config_path)
    with pytest.raises(ValueError, match="no defects_config"):
        accumulator.update([1.0], [1], maps, channels, "pushpins", defect_types=["logical_anomalies"])
    channels[0, 0, 0, 0] = 1
    with pytest.raises(ValueError, match="defect_types"):
        accumulator.update([1.0], [1], maps, channels, "pushpins", defect_types=["broken"], defects_config=config_path)
    bad = config_path.parent / "bad.json"
    bad.write_text(json.dumps([{"defect_name": "x"}]))
    with pytest.raises(ValueError, match="bad.json.*saturation_threshold"):
        load_defects_config(bad)


# --- saturation area rounded down and defects_config checked, as the official evaluation v2.0 ---
# (MVTec LOCO AD evaluation, src/image.py: GroundTruthChannel.get_saturation_area takes
# int(threshold * area) when relative; DefectConfig asserts 1 <= pixel_value <= 255, a relative
# threshold a float in (0, 1], an absolute one an int.)

ROUNDING_CONFIG = [{"defect_name": "missing_part", "pixel_value": 1, "saturation_threshold": 0.5, "relative_saturation": True}]


def test_relative_saturation_area_is_rounded_down_as_the_official_script():
    """good 2x2 {.8 .5 .3 .1}; structural 2x2: defect 1 (relative 0.5) on three pixels {.9 .6 .4},
    normal {.2}. Official S = int(0.5 * 3) = 1, so the defect saturates at its first pixel (score .9),
    before any of the 5 defect-free pixels is hit: the curve is (0,0) (0,1) ... and every AUC-sPRO
    is 1. The unrounded S = 1.5 gave sPRO 2/3 until FPR 0.2 (score .8), then 1: AUC 2/3 at 0.01,
    0.05 and 0.1, (0.2 * 2/3 + 0.1) / 0.3 = 7/9 at 0.3 and 0.2 * 2/3 + 0.8 = 14/15 at 1.0."""
    good = np.array([[0.8, 0.5], [0.3, 0.1]], dtype=np.float32)
    structural = np.array([[0.9, 0.6], [0.4, 0.2]], dtype=np.float32)
    channels = np.zeros((2, 1, 2, 2), np.uint8)
    channels[1, 0] = [[1, 1], [1, 0]]
    accumulator = MetricAccumulator()
    accumulator.update(
        [0.1, 0.9], [0, 1], np.stack([good, structural]), channels, "breakfast_box",
        sample_ids=["bb/good/000", "bb/structural_anomalies/000"], defect_types=["good", "structural_anomalies"],
        defects_config=ROUNDING_CONFIG,
    )
    got = accumulator.compute().for_class("breakfast_box")
    for suffix in ("01", "05", "10", "30", "100"):
        assert got[f"auc_spro_{suffix}_structural"] == pytest.approx(1.0, abs=1e-9), suffix
    # the same curve with the unrounded S = 1.5, from the reference: the difference this fixes
    unrounded = reference_auc_spro(np.stack([good, structural]), [np.zeros((1, 2, 2), np.uint8), channels[1]], [[], [1.5]])
    assert unrounded == pytest.approx([2 / 3, 2 / 3, 2 / 3, 7 / 9, 14 / 15], abs=1e-9)
    rounded = reference_auc_spro(np.stack([good, structural]), [np.zeros((1, 2, 2), np.uint8), channels[1]], [[], [1.0]])
    assert rounded == pytest.approx([1.0] * 5, abs=1e-9)


def test_saturation_pixels_follow_the_official_rule():
    config = load_defects_config(CONFIG)
    relative, absolute = config[1], config[2]  # 0.5 relative, 10 absolute
    assert relative.saturation_pixels(np.array([1, 2, 3, 7, 100])).tolist() == [1, 1, 1, 3, 50]
    # floor of the float64 product, exactly as int() in Python: 0.29 * 100 = 28.999999999999996
    odd = load_defects_config([{**CONFIG[0], "saturation_threshold": 0.29}])[1]
    assert odd.saturation_pixels(np.array([100])).tolist() == [int(0.29 * 100)] == [28]
    # the official S = int(0.5 * 1) = 0 divides by zero; S = 1 agrees wherever it is defined
    assert relative.saturation_pixels(np.array([1])).tolist() == [1]
    assert absolute.saturation_pixels(np.array([3, 10, 50])).tolist() == [3, 10, 10]
    assert config[3].saturation_pixels(np.array([5])).tolist() == [5]


GOOD_ENTRY = {"defect_name": "scratch", "pixel_value": 7, "saturation_threshold": 0.5, "relative_saturation": True}
BAD_CONFIGS = {
    "relative-zero": ([{**GOOD_ENTRY, "saturation_threshold": 0.0}], "saturation_threshold = 0.0", "in (0, 1]"),
    "relative-above-one": ([{**GOOD_ENTRY, "saturation_threshold": 1.5}], "saturation_threshold = 1.5", "in (0, 1]"),
    "relative-negative": ([{**GOOD_ENTRY, "saturation_threshold": -0.2}], "saturation_threshold = -0.2", "in (0, 1]"),
    "relative-integer": ([{**GOOD_ENTRY, "saturation_threshold": 1}], "saturation_threshold = 1 ", "decimal point"),
    "absolute-real": ([{**GOOD_ENTRY, "saturation_threshold": 20.0, "relative_saturation": False}],
                      "saturation_threshold = 20.0", "expected an integer"),
    "absolute-fraction": ([{**GOOD_ENTRY, "saturation_threshold": 0.5, "relative_saturation": False}],
                          "saturation_threshold = 0.5", "expected an integer"),
    "absolute-zero": ([{**GOOD_ENTRY, "saturation_threshold": 0, "relative_saturation": False}],
                      "saturation_threshold = 0 ", ">= 1"),
    "threshold-string": ([{**GOOD_ENTRY, "saturation_threshold": "0.5"}], "saturation_threshold = '0.5'", "real number"),
    "relative-not-bool": ([{**GOOD_ENTRY, "relative_saturation": "true"}], "relative_saturation = 'true'", "true or false"),
    "pixel-value-zero": ([{**GOOD_ENTRY, "pixel_value": 0}], "pixel_value = 0", "1..255"),
    "pixel-value-256": ([{**GOOD_ENTRY, "pixel_value": 256}], "pixel_value = 256", "1..255"),
    "pixel-value-real": ([{**GOOD_ENTRY, "pixel_value": 7.0}], "pixel_value = 7.0", "integer in 1..255"),
    "pixel-value-twice": ([GOOD_ENTRY, {**GOOD_ENTRY, "defect_name": "dent"}], "(defect 'dent'): pixel_value = 7 is already used",
                          "each pixel value once"),
    "missing-key": ([{k: v for k, v in GOOD_ENTRY.items() if k != "relative_saturation"}],
                    "key 'relative_saturation' is missing", "every entry needs"),
    "empty-name": ([{**GOOD_ENTRY, "defect_name": ""}], "defect_name = ''", "non-empty string"),
    "entry-not-object": ([GOOD_ENTRY, 5], "entry 1: expected an object", "got 5"),
    "not-a-list": ({"scratch": GOOD_ENTRY}, "expected a JSON list", "got dict"),
    "empty-list": ([], "list of defect entries is empty", "at least one defect"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_defects_config_is_rejected_naming_file_defect_key_and_value(config_path, case):
    entries, says, expected = BAD_CONFIGS[case]
    config_path.write_text(json.dumps(entries))
    with pytest.raises(ValueError) as caught:
        load_defects_config(config_path)
    message = str(caught.value)
    assert str(config_path) in message and says in message and expected in message, message
    if isinstance(entries, list) and entries and isinstance(entries[-1], dict) and entries[-1].get("defect_name"):
        assert f"(defect {entries[-1]['defect_name']!r})" in message
    with pytest.raises(ValueError):  # the parsed list is checked the same way
        load_defects_config(entries)


@pytest.mark.parametrize("case", ["relative-above-one", "absolute-real", "missing-key", "pixel-value-twice"])
def test_bad_defects_config_fails_loading_the_dataset(tmp_path, case):
    from harness.data import DatasetError, load_dataset
    from harness.data.fixtures import write_fixture

    info = write_fixture("mvtec_loco", tmp_path / "loco")
    path = info.root / "pushpins" / "defects_config.json"
    entries, says, expected = BAD_CONFIGS[case]
    path.write_text(json.dumps(entries))
    with pytest.raises(DatasetError) as caught:
        load_dataset(info.dataset, info.root, expected=info.counts)
    message = str(caught.value)
    assert "class 'pushpins'" in message and str(path) in message and says in message and expected in message, message
    assert any(p.kind == "bad-defects-config" and p.path == str(path) for p in caught.value.problems)


def test_official_defects_configs_pass():
    """Entries shaped as the released MVTec LOCO configs: relative fractions with a decimal point
    (1.0 included), absolute pixel counts as integers."""
    config = load_defects_config([
        {"defect_name": "a", "pixel_value": 255, "saturation_threshold": 1.0, "relative_saturation": True},
        {"defect_name": "b", "pixel_value": 254, "saturation_threshold": 2000, "relative_saturation": False},
        {"defect_name": "c", "pixel_value": 1, "saturation_threshold": 0.25, "relative_saturation": True, "extra": "ignored"},
    ])
    assert config[254].saturation_threshold == 2000 and isinstance(config[254].saturation_threshold, int)
    assert sorted(config) == [1, 254, 255]
