"""The one training loop, on a real MVTec-layout fixture read by the generic loader."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from harness.data.fixtures import write_fixture
from harness.results.predictions import read_predictions
from harness.training.loop import TrainingDiverged, run_training

SMALL = {"image_size": 128, "eval_size": 64, "epochs": 2, "batch_size": 4, "neighbour_window": 3}


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory):
    return write_fixture("generic", tmp_path_factory.mktemp("generic"), size=64).root


def _config(root, **method_config):
    return {"method": "unilead", "preset": "cpu", "dataset": "generic", "data_root": str(root), "seed": 3,
            "method_config": {**SMALL, **method_config}}


def _numbers(outcome):
    return [(r["class_name"], r["metric"], r["value"]) for r in outcome.metrics], [
        (r["sample_id"], r["score"]) for r in outcome.sample_scores
    ]


def test_cached_features_train_to_the_same_result_as_uncached(fixture_root, tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_FEATURE_CACHE", str(tmp_path / "features"))
    uncached = run_training(_config(fixture_root), use_feature_cache=False, output_dir=tmp_path / "a")
    assert not (tmp_path / "features").exists()
    cold = run_training(_config(fixture_root), output_dir=tmp_path / "b")
    warm = run_training(_config(fixture_root), output_dir=tmp_path / "c")
    assert not cold.run["features_cached"] and warm.run["features_cached"]
    assert len(list((tmp_path / "features").iterdir())) == 1  # one entry, reused
    assert _numbers(uncached) == _numbers(cold) == _numbers(warm)


def test_outcome_holds_every_test_sample_once_with_float16_maps(fixture_root, tmp_path):
    outcome = run_training(_config(fixture_root), output_dir=tmp_path / "run")
    ids = [r["sample_id"] for r in outcome.sample_scores]
    assert len(ids) == len(set(ids)) == 10  # 2 classes x (2 good + 3 defect kinds... see fixture plan)
    predictions = list(read_predictions(outcome.checkpoint_dir / "predictions" / "part-000.parquet"))
    assert sorted(p.sample_id for p in predictions) == sorted(ids)
    assert all(p.map.dtype == np.float16 and p.map.shape == (64, 64) for p in predictions)
    metrics = {(r["class_name"], r["metric"]): r["value"] for r in outcome.metrics}
    assert 0.0 <= metrics[("mean", "i_auroc")] <= 1.0
    assert math.isfinite(metrics[("pooled", "aupro")])
    saved = json.loads((outcome.checkpoint_dir / "outcome.json").read_text())
    assert saved["run"]["epochs"] == 2 and (outcome.checkpoint_dir / "model.pt").exists()


def test_non_finite_loss_stops_with_a_reason(fixture_root, tmp_path):
    with pytest.raises(TrainingDiverged, match="non-finite loss .* epoch 1, step 1"):
        run_training(_config(fixture_root, jitter_scale=1e30), output_dir=tmp_path / "nan")


def test_mvtec_loco_run_reports_spro_per_anomaly_kind(tmp_path):
    info = write_fixture("mvtec_loco", tmp_path / "loco", size=64)
    info.write_card(tmp_path / "card.yaml")
    config = {"method": "uniad", "preset": "cpu", "dataset": "mvtec_loco", "data_root": str(info.root),
              "expect": str(tmp_path / "card.yaml"), "method_config": {**SMALL, "epochs": 1}}
    outcome = run_training(config, output_dir=tmp_path / "run")
    metrics = {(r["class_name"], r["metric"]): r["value"] for r in outcome.metrics}
    for kind in ("structural", "logical"):
        assert 0.0 <= metrics[("mean", f"auc_spro_05_{kind}")] <= 1.0
        assert 0.0 <= metrics[("mean", f"i_auroc_{kind}")] <= 1.0
    assert ("breakfast_box", "auc_spro_05") in metrics
    assert not any(r["sample_id"].startswith(("breakfast_box/validation", "pushpins/validation")) for r in outcome.sample_scores)
