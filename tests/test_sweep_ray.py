"""Sweeps on a real local Ray cluster: resume, failures and exit codes, Ctrl-C, 1, 2 and 3 Train workers
scoring every sample as one worker does, a killed worker, provenance, the live view.

One local cluster (ray.init(address="local")) serves the in-process sweeps of this module; the
`harness sweep` subprocess starts its own. The two-node cluster is in test_sweep_two_node.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from harness.results.predictions import read_maps
from harness.results.store import ResultStore
from ray_sweeps import (
    descendant_processes,
    final_checkpoint,
    hidden_files,
    metric_values,
    patched_environ,
    private_ray_environ,
    run_sweep_file,
    runs_by_id,
    sample_score_values,
    single_worker_evaluation,
    write_sweep,
)

pytestmark = pytest.mark.slow

# Long enough to kill a Train worker mid-training. Runs with 1, 2 and 3 Train workers train
# different weights (DDP averages the per-rank batches), so each run is compared with one worker's
# in-process evaluation of its own final weights: the distributed part that must be exact is the
# evaluation, sharded into whole batches by rank, and the accumulators' merge.
LONG = {"epochs": 20}


@pytest.fixture(scope="module")
def feature_cache(tmp_path_factory):
    folder = tmp_path_factory.mktemp("features")
    with patched_environ({"HARNESS_FEATURE_CACHE": str(folder)}):
        yield folder


@pytest.fixture(scope="module")
def one_worker_run(tmp_path_factory, fixture_root, feature_cache):
    """`harness sweep` in a subprocess (its own local Ray): one cell, one Train worker."""
    folder = tmp_path_factory.mktemp("one-worker")
    results = folder / "results"
    path = write_sweep(folder, data_root=fixture_root, results=results, name="long", method_config=LONG, workers=1)
    env = {key: value for key, value in {**os.environ, **private_ray_environ(), "COLUMNS": "160"}.items() if value is not None}
    done = subprocess.run(
        [sys.executable, "-m", "harness.cli", "sweep", str(path)],
        env=env, capture_output=True, text=True, timeout=300, cwd=folder,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    return results, output


@pytest.fixture(scope="module")
def local_ray(feature_cache):
    """A private local cluster for the in-process sweeps (never a user's cluster)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    with patched_environ(private_ray_environ()):
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
        yield ray
        ray.shutdown()


def test_live_view_shows_final_statuses_without_rays_log_stream(one_worker_run):
    results, output = one_worker_run
    assert "sweep: 1 complete" in output  # the trial table's title after the last refresh
    assert "complete" in output and "20/20" in output  # status and epoch columns
    assert "Leaderboard: sweep long" in output
    for noise in ("Failed to query Ray Train Controller actor state", "(RayTrainWorker pid=", "(sweep_cell pid="):
        assert noise not in output
    assert len(runs_by_id(results)) == 1


@pytest.mark.parametrize(
    ("workers", "use_gpu", "needs", "has"),
    [(5, False, "5.1 CPU(s)", "the cluster has 4"), (0, True, "1 GPU(s)", "the cluster has 0")],
)
def test_a_trial_the_cluster_cannot_place_is_an_error_not_a_hang(local_ray, fixture_root, tmp_path, workers, use_gpu, needs, has):
    path = write_sweep(tmp_path, data_root=fixture_root, results=tmp_path / "results", workers=workers, use_gpu=use_gpu)
    with pytest.raises(SystemExit) as raised:
        run_sweep_file(path)
    assert f"one trial needs {needs}" in str(raised.value) and has in str(raised.value)
    assert ResultStore(tmp_path / "results").completed_run_ids() == set()


def test_resume_runs_only_missing_cells_and_a_diverging_cell_fails_alone(local_ray, fixture_root, tmp_path, capsys):
    results = tmp_path / "results"
    path = write_sweep(
        tmp_path, data_root=fixture_root, results=results, name="faults",
        axes={"method_config.routing": {"grid": ["softmax", "first"]}, "method_config.jitter_scale": {"grid": [20.0, 1e30]}},
    )
    assert run_sweep_file(path) == 1  # two cells failed
    first = runs_by_id(results)
    assert len(first) == 4
    failed = {rid for rid, row in first.items() if row["status"] == "failed"}
    complete = {rid for rid, row in first.items() if row["status"] == "complete"}
    assert len(failed) == 2 and len(complete) == 2
    for rid in failed:  # the jitter 1e30 cells: the reason names the non-finite loss
        assert first[rid]["failure_reason"].startswith("TrainingDiverged: non-finite loss")
        assert '"jitter_scale": 1e+30' in first[rid]["config_json"]
    assert sorted(p.name for p in (results / "metrics").iterdir()) == sorted(f"{rid}.parquet" for rid in complete)

    # An interruption before one cell's commit marker: its detail files exist, its runs row does not,
    # and the killed writer left a half-written temporary file behind.
    lost, kept = sorted(complete)
    (results / "runs" / f"{lost}.parquet").unlink()
    (results / "runs" / f".{lost}.parquet.0badc0de.tmp").write_bytes(b"PAR1 half a file")
    experiments_before = set((results / "ray").glob("faults-*"))
    time.sleep(1.1)  # experiment folders are named by the second they start
    capsys.readouterr()
    assert run_sweep_file(path) == 1
    said = capsys.readouterr().out
    assert said.count("failed: TrainingDiverged: non-finite loss") == 2 and "To resume, run the same command again" in said

    second = runs_by_id(results)
    assert set(second) == set(first)
    assert second[kept]["finished_at"] == first[kept]["finished_at"]  # the kept cell did not run again
    assert second[lost]["status"] == "complete"
    assert {rid for rid, row in second.items() if row["status"] == "failed"} == failed  # failures are retried
    (experiment,) = set((results / "ray").glob("faults-*")) - experiments_before
    launched = [p for p in experiment.iterdir() if p.is_dir() and p.name.startswith("sweep_cell_")]
    assert len(launched) == 3  # the lost cell and the two failed ones, not the kept cell
    assert hidden_files(results) == []


def _checkpoint_epochs(train_folder: Path) -> list[int]:
    """The epoch of every per-epoch checkpoint Ray Train persisted for a run (final one excluded)."""
    epochs = []
    for checkpoint in train_folder.glob("checkpoint_*"):
        if (checkpoint / "outcome.json").exists():
            continue
        try:
            epochs.append(torch.load(checkpoint / "model.pt", map_location="cpu", weights_only=True)["epoch"])
        except (OSError, RuntimeError, EOFError):
            continue  # an upload the kill cut short; Ray never registered it
    return sorted(epochs)


def _registered_checkpoint(train_root: Path) -> bool:
    """Whether Ray Train's checkpoint manager has recorded a latest checkpoint (its snapshot file says so)."""
    for snapshot in train_root.glob("train-*/checkpoint_manager_snapshot.json"):
        try:
            if json.loads(snapshot.read_text()).get("latest_checkpoint_result"):
                return True
        except (OSError, ValueError):
            continue  # being rewritten
    return False


class WorkerKiller(threading.Thread):
    """SIGKILLs one Ray Train worker of this process's cluster once Ray Train has registered an epoch checkpoint.

    Files on disk are not enough: a restart resumes from the controller's latest registered
    checkpoint, which lags the upload on a loaded machine (a kill before it restarts at epoch 0).
    """

    def __init__(self, train_root: Path, deadline_s: float = 120.0):
        super().__init__(daemon=True)
        self.train_root = train_root
        self.deadline = time.time() + deadline_s
        self.killed: int | None = None
        self.checkpoints_at_kill = 0

    def run(self):
        while time.time() < self.deadline and self.killed is None:
            checkpoints = [p for p in self.train_root.glob("train-*/checkpoint_*") if (p / "model.pt").exists()]
            workers = descendant_processes("ray::RayTrainWorker")
            if _registered_checkpoint(self.train_root) and len(workers) == 2:
                os.kill(workers[-1], signal.SIGKILL)
                self.killed, self.checkpoints_at_kill = workers[-1], len(checkpoints)
                return
            time.sleep(0.05)


def test_killed_worker_resumes_from_checkpoint_and_two_workers_score_as_one(local_ray, fixture_root, tmp_path, one_worker_run):
    results = tmp_path / "results"
    path = write_sweep(tmp_path, data_root=fixture_root, results=results, name="long", method_config=LONG, workers=2)
    killer = WorkerKiller(results / "ray")
    killer.start()
    assert run_sweep_file(path) == 0
    killer.join(timeout=1)

    assert killer.killed is not None, "no Train worker was found to kill"
    (run_id, row), = runs_by_id(results).items()
    assert row["status"] == "complete" and row["workers"] == 2, row.get("failure_reason")
    assert killer.checkpoints_at_kill < 20, "the worker was killed only after training ended"
    # Resumed, not restarted: every epoch was checkpointed once (a restart would repeat epoch 0).
    epochs = _checkpoint_epochs(results / "ray" / f"train-{run_id}")
    assert epochs.count(0) == 1 and max(epochs) == 19
    assert hidden_files(results) == []

    assert row["workers_used"] == 2
    assert_outputs_are_one_workers(results, run_id)

    one_worker_results, _ = one_worker_run
    (one_id, one_row), = runs_by_id(one_worker_results).items()
    assert one_id == run_id and one_row["workers"] == one_row["workers_used"] == 1
    assert_outputs_are_one_workers(one_worker_results, run_id)


def assert_outputs_are_one_workers(results: Path, run_id: str) -> None:
    """Exact equality with one in-process worker's evaluation of the run's final weights: metrics,
    every sample's score, and every map's bytes."""
    reference = single_worker_evaluation(final_checkpoint(results, run_id))
    assert metric_values(results, run_id) == reference["metrics"]
    assert sample_score_values(results, run_id) == reference["scores"]
    assert {sample: m.tobytes() for sample, m in read_maps(results, run_id).items()} == reference["maps"]


def test_three_workers_score_and_map_every_sample_as_one_worker_does(local_ray, fixture_root, tmp_path, one_worker_run):
    results = tmp_path / "results"
    path = write_sweep(tmp_path, data_root=fixture_root, results=results, name="long", method_config=LONG, workers=3)
    assert run_sweep_file(path) == 0
    (run_id, row), = runs_by_id(results).items()
    assert row["status"] == "complete" and row["workers"] == row["workers_used"] == 3, row.get("failure_reason")
    assert run_id == next(iter(runs_by_id(one_worker_run[0])))  # the same cell
    assert_outputs_are_one_workers(results, run_id)


def test_runs_rows_say_where_and_how_the_cell_ran(one_worker_run):
    (row,) = runs_by_id(one_worker_run[0]).values()
    assert row["started_at"] is not None and row["started_at"] <= row["finished_at"]
    assert row["command_line"].endswith("sweep " + str(one_worker_run[0].parent / "long.yaml"))
    assert row["backbone_weights"].startswith("packaged:") and len(row["backbone_weights_sha256"]) == 64
    assert row["torch_version"] == torch.__version__ and row["cpu_capability"] and row["torch_threads"] >= 1


def test_ctrl_c_names_the_missing_cell_and_exits_130(fixture_root, tmp_path, feature_cache):
    results = tmp_path / "results"
    path = write_sweep(tmp_path, data_root=fixture_root, results=results, name="endless", method_config={"epochs": 10_000}, workers=1)
    env = {key: value for key, value in {**os.environ, **private_ray_environ(), "COLUMNS": "200"}.items() if value is not None}
    with open(tmp_path / "output.txt", "w") as output:
        process = subprocess.Popen([sys.executable, "-m", "harness.cli", "sweep", str(path)], env=env, stdout=output,
                                   stderr=subprocess.STDOUT, cwd=tmp_path)
        try:
            deadline = time.time() + 240
            while not list((results / "ray").glob("train-*/checkpoint_*/model.pt")) and time.time() < deadline:
                assert process.poll() is None, (tmp_path / "output.txt").read_text()[-3000:]
                time.sleep(0.2)
            process.send_signal(signal.SIGINT)  # the sweep is training: an epoch checkpoint exists
            try:
                returncode = process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                pytest.fail("no exit 120 s after SIGINT; the sweep said:\n" + (tmp_path / "output.txt").read_text()[-3000:])
        finally:
            process.kill()
    said = (tmp_path / "output.txt").read_text()
    assert returncode == 130, said[-3000:]
    (trial,) = ResultStore(results).read("trials").to_pylist()
    assert "sweep interrupted: 0 of 1 cells complete" in said
    assert f"{trial['label']} ({trial['run_id']}): missing" in said
    assert f"To resume, run the same command again: harness sweep {path}" in said
