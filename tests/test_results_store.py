"""The result store on real Parquet files: schemas, atomic writes, latest-wins, resume bookkeeping."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import numpy as np
import pandas as pd
import pyarrow.dataset as pa_dataset
import pytest

from harness.results import ResultSchemaError, ResultStore, TrialResult
from harness.results.predictions import read_predictions, write_predictions
from harness.results.schema import METRICS, RUNS, SCHEMA_VERSION
from harness.results.store import atomic_write_table, rows_to_table

CONFIG = {"method": "unilead", "preset": "cpu", "dataset": "embedded", "data_root": None, "classes": None,
          "method_config": {"routing": "top1"}, "seed": 0}


def result(run_id: str, seed: int = 0, value: float = 0.9, **run) -> TrialResult:
    config = {**CONFIG, "seed": seed}
    return TrialResult(
        run={"run_id": run_id, "sweep": "routing", "method": "unilead", "preset": "cpu", "dataset": "embedded",
             "seed": seed, "config_json": config, "params_trainable": 1000, "started_at": "2026-01-02T03:04:05",
             "metric_version": "m1", "method_version": 1, "features_cached": True, **run},
        metrics=[
            {"class_name": "a", "metric": "i_auroc", "value": value},
            {"class_name": "b", "metric": "i_auroc", "value": float("nan"), "note": "no anomalous images"},
            {"class_name": "mean", "metric": "i_auroc", "value": value},
        ],
        sample_scores=[{"sample_id": "a/test/good/000", "class_name": "a", "defect_type": "good", "label": 0, "score": 0.1}],
        routing=[{"class": "a", "layer": "decoder.0", "expert": "adapter_d16", "gate_mean": 0.5,
                  "selection_freq": 0.25, "entropy": 1.2, "samples": 3}],
    )


@pytest.fixture
def store(tmp_path):
    return ResultStore(tmp_path / "results")


def visible(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if not p.name.startswith("."))


def test_empty_store_reads_as_empty_tables(store):
    assert store.is_empty()
    assert store.completed_run_ids() == set()
    assert store.read("metrics").schema.names == METRICS.names
    assert store.read("metrics").num_rows == 0
    with pytest.raises(KeyError, match="unknown result table 'metric'"):
        store.read("metric")


def test_write_run_files_schema_and_plain_readers(store):
    store.write_run(result("r1"))
    for table in ("runs", "metrics", "sample_scores", "routing"):
        assert visible(store.root / table) == ["r1.parquet"]
    runs = store.read("runs").to_pylist()
    assert len(runs) == 1
    run = runs[0]
    assert run["status"] == "complete" and run["schema_version"] == SCHEMA_VERSION
    assert json.loads(run["config_json"]) == CONFIG
    assert run["configuration_key"] and run["started_at"].year == 2026
    assert run["method_version"] == "1" and run["features_cached"] is True
    assert "torch" in json.loads(run["package_versions_json"]) and "cpu_count" in json.loads(run["hardware_json"])
    assert store.read("runs").schema.names == RUNS.names

    frame = pd.read_parquet(store.root / "metrics")
    assert sorted(frame["class_name"]) == ["a", "b", "mean"]
    assert set(frame["run_id"]) == {"r1"} and set(frame["dataset"]) == {"embedded"}
    assert set(frame["metric_version"]) == {"m1"}
    assert frame.loc[frame["class_name"] == "b", "value"].isna().all()
    table = pa_dataset.dataset(str(store.root / "routing"), format="parquet").to_table()
    assert table.column("class_name").to_pylist() == ["a"] and table.column("expert").to_pylist() == ["adapter_d16"]


def test_failed_then_complete_is_one_row_and_rewrites_are_idempotent(store):
    store.write_failure("r1", CONFIG, "CUDA out of memory", sweep="routing")
    assert store.failed_run_ids() == {"r1"} and store.completed_run_ids() == set()
    failed = store.read("runs").to_pylist()[0]
    assert failed["failure_reason"] == "CUDA out of memory" and failed["method"] == "unilead"
    store.write_run(result("r1"))
    store.write_run(result("r1"))
    assert store.read("runs").num_rows == 1
    assert store.completed_run_ids() == {"r1"} and store.failed_run_ids() == set()
    assert store.read("metrics").num_rows == 3
    # a later failure of the same id replaces it and takes its detail rows away
    store.write_failure("r1", CONFIG, "diverged")
    assert store.read("metrics").num_rows == 0 and store.failed_run_ids() == {"r1"}
    assert not (store.root / "metrics" / "r1.parquet").exists()


def test_resume_bookkeeping_completes_only_missing_cells(store):
    cells = [f"r{i}" for i in range(5)]
    for run_id in cells[:2]:
        store.write_run(result(run_id), provenance=False)
    store.write_failure("r2", CONFIG, "killed")
    todo = [run_id for run_id in cells if run_id not in store.completed_run_ids()]
    assert todo == ["r2", "r3", "r4"]
    for run_id in todo:
        store.write_run(result(run_id), provenance=False)
    assert store.completed_run_ids() == set(cells)
    assert store.read("runs").num_rows == 5
    assert store.read("metrics").num_rows == 15
    assert pd.read_parquet(store.root / "sample_scores")["run_id"].is_unique


def test_orphaned_detail_files_are_ignored_then_removed(store):
    store.write_run(result("done"), provenance=False)
    # a trial that crashed after its metrics but before its runs row
    atomic_write_table(rows_to_table([{"run_id": "crashed", "class_name": "mean", "metric": "i_auroc", "value": 0.5}],
                                     METRICS, "metrics"), store.root / "metrics" / "crashed.parquet")
    (store.root / "metrics" / ".crashed.parquet.abcd.tmp").write_bytes(b"PAR1 half")
    assert set(store.read("metrics").column("run_id").to_pylist()) == {"done"}
    removed = {p.name for p in store.remove_orphans()}
    assert removed == {"crashed.parquet", ".crashed.parquet.abcd.tmp"}
    assert visible(store.root / "metrics") == ["done.parquet"]


def test_schema_errors_name_table_row_and_column(store):
    bad = result("r1")
    bad.metrics.append({"class_name": "a", "metric": "p_auroc", "valeu": 0.3})
    with pytest.raises(ResultSchemaError, match=r"metrics row 3: unknown column 'valeu'; expected some of run_id, dataset"):
        store.write_run(bad, provenance=False)
    bad = result("r2")
    bad.metrics[0]["value"] = "high"
    with pytest.raises(ResultSchemaError, match=r"metrics: column 'value' expects double, got 'high'"):
        store.write_run(bad, provenance=False)
    with pytest.raises(ResultSchemaError, match="'run_id' is missing"):
        store.write_run(TrialResult(run={"status": "complete"}), provenance=False)
    with pytest.raises(ResultSchemaError, match="status 'done'; expected one of"):
        store.write_run(TrialResult(run={"run_id": "x", "status": "done"}), provenance=False)
    # nothing of the rejected runs reached the disk
    assert store.is_empty() and not (store.root / "metrics").exists()


def test_predictions_round_trip_float16_maps(tmp_path):
    rng = np.random.default_rng(0)
    rows = [{"sample_id": f"a/test/good/{i:03d}", "class_name": "a", "defect_type": "good", "label": i % 2,
             "score": float(i), "map": rng.random((8, 6)).astype(np.float32)} for i in range(7)]
    path = write_predictions(tmp_path / "parts" / "part-000.parquet", rows[:5], batch_size=2)
    write_predictions(tmp_path / "parts" / "part-001.parquet", rows[5:])
    read_back = list(read_predictions(tmp_path / "parts"))
    assert [p.sample_id for p in read_back] == [r["sample_id"] for r in rows]
    for prediction, row in zip(read_back, rows):
        assert prediction.map.dtype == np.float16 and prediction.map.shape == (8, 6)
        np.testing.assert_array_equal(prediction.map, row["map"].astype(np.float16))
        assert prediction.label == row["label"] and prediction.score == row["score"]
    only = list(read_predictions(path, sample_ids={"a/test/good/003"}))
    assert [p.sample_id for p in only] == ["a/test/good/003"]
    with pytest.raises(ValueError, match="expected \\(height, width\\)"):
        write_predictions(tmp_path / "bad.parquet", [{**rows[0], "map": np.zeros((1, 2, 3))}])
    assert visible(tmp_path) == ["parts"]


def test_killed_writer_leaves_nothing_visible(tmp_path):
    """A process killed in the middle of writing a prediction artefact leaves no readable file."""
    target = tmp_path / "predictions" / "run.parquet"
    script = textwrap.dedent(
        f"""
        import sys, time, numpy as np
        from harness.results.predictions import PredictionWriter
        writer = PredictionWriter({str(target)!r}, batch_size=1)
        for i in range(10_000):
            writer.add({{"sample_id": str(i), "class_name": "a", "defect_type": "good", "label": 0,
                         "score": 0.0, "map": np.zeros((4, 4))}})
            if i == 3:
                print("writing", flush=True)
            time.sleep(0.01)
        writer.close()
        """
    )
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "writing"
    time.sleep(0.1)
    process.kill()
    process.wait()
    assert not target.exists()
    assert visible(target.parent) == []
    assert any(p.name.endswith(".tmp") for p in target.parent.iterdir())
    store = ResultStore(tmp_path)
    assert store.remove_orphans() and list(target.parent.iterdir()) == []
