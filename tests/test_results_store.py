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

from harness.metrics.version import METRIC_VERSION
from harness.results import ResultSchemaError, ResultStore, TrialResult
from harness.results.predictions import read_maps, read_predictions, write_predictions
from harness.results.schema import METRICS, RUNS, SCHEMA_VERSION
from harness.results.store import atomic_write_table, rows_to_table

CONFIG = {"method": "unilead", "preset": "cpu", "dataset": "embedded", "data_root": None, "classes": None,
          "method_config": {"routing": "top1"}, "seed": 0}


def result(run_id: str, seed: int = 0, value: float = 0.9, **run) -> TrialResult:
    config = {**CONFIG, "seed": seed}
    return TrialResult(
        run={"run_id": run_id, "sweep": "routing", "method": "unilead", "preset": "cpu", "dataset": "embedded",
             "seed": seed, "config_json": config, "params_trainable": 1000, "started_at": "2026-01-02T03:04:05",
             "metric_version": METRIC_VERSION, "method_version": 1, "features_cached": True, **run},
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
    assert set(frame["metric_version"]) == {METRIC_VERSION}
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
             "score": float(i), "anomaly_map": rng.random((8, 6)).astype(np.float32)} for i in range(7)]
    path = write_predictions(tmp_path / "parts" / "part-000.parquet", rows[:5], batch_size=2)
    write_predictions(tmp_path / "parts" / "part-001.parquet", rows[5:])
    read_back = list(read_predictions(tmp_path / "parts"))
    assert [p.sample_id for p in read_back] == [r["sample_id"] for r in rows]
    for prediction, row in zip(read_back, rows):
        assert prediction.anomaly_map.dtype == np.float16 and prediction.anomaly_map.shape == (8, 6)
        np.testing.assert_array_equal(prediction.anomaly_map, row["anomaly_map"].astype(np.float16))
        assert prediction.label == row["label"] and prediction.score == row["score"]
    only = list(read_predictions(path, sample_ids={"a/test/good/003"}))
    assert [p.sample_id for p in only] == ["a/test/good/003"]
    with pytest.raises(ValueError, match="expected \\(height, width\\)"):
        write_predictions(tmp_path / "bad.parquet", [{**rows[0], "anomaly_map": np.zeros((1, 2, 3))}])
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
                         "score": 0.0, "anomaly_map": np.zeros((4, 4))}})
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


def truncate(path, keep: int = 40) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def prediction_rows(n: int = 3) -> list[dict]:
    return [{"sample_id": f"a/test/good/{i:03d}", "class_name": "a", "defect_type": "good", "label": 0,
             "score": float(i), "anomaly_map": np.full((4, 5), i, dtype=np.float16)} for i in range(n)]


def test_a_run_is_complete_only_while_every_file_it_wrote_reads_back(store):
    write_predictions(store.predictions_path("r1"), prediction_rows(), run_id="r1")
    store.write_run(result("r1"), provenance=False)
    store.write_run(result("r2"), provenance=False)
    run = {row["run_id"]: row for row in store.runs().to_pylist()}["r1"]
    assert json.loads(run["files_json"]) == {"metrics": 3, "sample_scores": 1, "routing": 1, "predictions": 3}
    assert store.completed_run_ids() == {"r1", "r2"} and store.problems() == []

    for table, path in (("metrics", store.root / "metrics" / "r1.parquet"), ("predictions", store.predictions_path("r1"))):
        saved = path.read_bytes()
        truncate(path)
        assert store.completed_run_ids() == {"r2"}, table
        (problem,) = store.damaged_runs()["r1"]
        assert problem.path == path and problem.kind == "damaged" and "cannot be read as Parquet" in problem.reason
        assert [str(p.path) for p in store.problems()] == [str(path)]
        assert set(store.read("metrics").column("run_id").to_pylist()) == {"r2"}
        path.write_bytes(saved)
    assert store.completed_run_ids() == {"r1", "r2"} and store.problems() == []

    (store.root / "sample_scores" / "r1.parquet").unlink()
    assert "missing; the run wrote 1 rows here" in str(store.damaged_runs()["r1"][0])
    store.write_run(result("r1"), provenance=False)  # the re-run repairs it
    assert store.completed_run_ids() == {"r1", "r2"} and store.damaged_runs() == {}


def test_a_damaged_runs_file_is_a_run_to_repeat_and_the_sweep_plans_it(store):
    from types import SimpleNamespace

    from harness.sweep.runner import pending_trials

    for run_id in ("r1", "r2"):
        store.write_run(result(run_id), provenance=False)
    truncate(store.root / "runs" / "r1.parquet")
    assert store.completed_run_ids() == {"r2"} and list(store.damaged_runs()) == ["r1"]
    assert store.runs().column("run_id").to_pylist() == ["r2"]
    trials = [SimpleNamespace(run_id=run_id) for run_id in ("r1", "r2", "r3")]
    assert [t.run_id for t in pending_trials(store, trials)] == ["r1", "r3"]
    assert (store.root / "metrics" / "r1.parquet").exists()  # nothing written is removed by reading
    store.remove_orphans()
    assert (store.root / "metrics" / "r1.parquet").exists()


def test_files_that_are_not_the_stores_are_ignored_and_named(store):
    store.write_run(result("r1"), provenance=False)
    (store.root / "runs" / "notes.csv").write_text("run,comment\nr1,fine\n")
    pd.DataFrame({"x": [1, 2]}).to_parquet(store.root / "runs" / "unrelated.parquet")
    atomic_write_table(rows_to_table([{"run_id": "other", "class_name": "mean", "metric": "i_auroc", "value": 0.1}],
                                     METRICS, "metrics"), store.root / "metrics" / "r1-copy.parquet")
    runs = store.runs()
    assert runs.column("run_id").to_pylist() == ["r1"] and store.completed_run_ids() == {"r1"}
    assert set(store.read("metrics").column("run_id").to_pylist()) == {"r1"}
    problems = {p.path.name: p for p in store.problems()}
    assert set(problems) == {"notes.csv", "unrelated.parquet", "r1-copy.parquet"}
    assert all(p.kind == "foreign" for p in problems.values())
    assert "no 'run_id' in every row" in problems["unrelated.parquet"].reason
    assert "belong to ['other']" in problems["r1-copy.parquet"].reason


def test_a_store_written_before_schema_2_reads_back(store):
    import pyarrow as pa
    import pyarrow.parquet as pq

    old_runs = pa.table({"run_id": ["old"], "status": ["complete"], "workers": pa.array([1], pa.int32())})
    old_predictions = pa.table({"sample_id": ["a/test/good/000"], "class_name": ["a"], "defect_type": ["good"],
                                "label": pa.array([0], pa.int8()), "score": [0.5], "height": pa.array([2], pa.int32()),
                                "width": pa.array([3], pa.int32()),
                                "map": [np.arange(6, dtype=np.float16).tobytes()]})
    for table, data in (("runs", old_runs), ("predictions", old_predictions)):
        (store.root / table).mkdir(parents=True)
        pq.write_table(data, store.root / table / "old.parquet")
    (run,) = store.runs().to_pylist()
    assert run["workers"] == 1 and run["files_json"] is None and run["torch_version"] is None
    assert store.completed_run_ids() == {"old"}
    maps = read_maps(store, "old")
    np.testing.assert_array_equal(maps["a/test/good/000"], np.arange(6, dtype=np.float16).reshape(2, 3))


def test_predictions_carry_their_run_and_read_maps_returns_arrays(store, tmp_path):
    write_predictions(store.predictions_path("r1"), prediction_rows(3), run_id="r1")
    write_predictions(tmp_path / "mixed" / "r2.parquet", prediction_rows(2), run_id="r2")
    write_predictions(tmp_path / "mixed" / "r1-more.parquet", prediction_rows(1), run_id="r1")
    frame = pd.read_parquet(store.root / "predictions")
    assert set(frame["run_id"]) == {"r1"} and "map" not in frame.columns
    assert set(frame["map_dtype"]) == {"float16"} and set(zip(frame["height"], frame["width"])) == {(4, 5)}
    for maps in (read_maps(store, "r1"), read_maps(store.root, "r1"), read_maps(store.predictions_path("r1"), "r1")):
        assert sorted(maps) == [f"a/test/good/{i:03d}" for i in range(3)]
        assert all(m.dtype == np.float16 and m.shape == (4, 5) for m in maps.values())
        np.testing.assert_array_equal(maps["a/test/good/002"], np.full((4, 5), 2, dtype=np.float16))
    assert sorted(read_maps(tmp_path / "mixed", "r2")) == ["a/test/good/000", "a/test/good/001"]
    assert list(read_maps(tmp_path / "mixed", "r1")) == ["a/test/good/000"]
    with pytest.raises(KeyError, match="no anomaly maps of run 'r9'"):
        read_maps(tmp_path / "mixed", "r9")


def test_runs_rows_keep_provenance_of_the_writing_process_for_failures(store):
    import torch

    store.write_failure("f1", CONFIG, "killed", workers=0, command_line="harness sweep s.yaml")
    (row,) = store.runs().to_pylist()
    assert row["workers"] == 0 and row["command_line"] == "harness sweep s.yaml"
    assert row["torch_version"] == torch.__version__ and row["cpu_capability"] and row["torch_threads"] >= 1


def test_dry_run_does_not_call_a_damaged_cell_complete(tmp_path, capsys, monkeypatch):
    from ray_sweeps import write_sweep

    from harness.cli import main
    from harness.data.fixtures import write_fixture
    from harness.sweep.run_id import resolve_run_ids
    from harness.sweep.spec import load_sweep

    monkeypatch.setenv("COLUMNS", "200")
    root = write_fixture("generic", tmp_path / "generic", size=64).root
    path = write_sweep(tmp_path, data_root=root, results=tmp_path / "results", axes={"method_config.routing": ["softmax", "first"]})
    trials = load_sweep(path).trials()
    resolve_run_ids(trials)
    store = ResultStore(tmp_path / "results")
    for trial in trials:
        store.write_run(result(trial.run_id), provenance=False)
    truncate(store.root / "sample_scores" / f"{trials[0].run_id}.parquet")
    assert main(["sweep", str(path), "--dry-run", "--resolve-ids"]) == 0
    listed = capsys.readouterr().out
    assert f"{trials[0].run_id} (complete: skipped)" not in listed and trials[0].run_id in listed
    assert f"{trials[1].run_id} (complete: skipped)" in listed


def test_a_run_scored_by_another_metric_version_is_out_of_date_and_runs_again(store):
    store.write_run(result("current"))
    store.write_run(result("older", seed=1, metric_version="0.9.0"))
    assert store.completed_run_ids() == {"current"}
    (problem,) = store.damaged_runs()["older"]
    assert problem.kind == "stale" and "0.9.0" in str(problem) and METRIC_VERSION in str(problem)
    assert "out of date" in str(problem)


def test_a_retried_cell_removes_only_its_own_half_written_files(tmp_path):
    from harness.sweep.outcome import remove_stale_temporaries

    store = ResultStore(tmp_path / "store")
    left = [store.root / "runs" / ".run1.parquet.123.tmp", store.root / "checkpoints" / ".run1.pt.456.tmp"]
    other = store.root / "checkpoints" / ".run2.pt.789.tmp"
    for path in left + [other]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    assert sorted(remove_stale_temporaries(store, "run1")) == sorted(left)
    assert other.exists() and not any(p.exists() for p in left)
