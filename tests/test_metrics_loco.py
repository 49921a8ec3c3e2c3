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
