"""One sweep cell as a Ray Tune function trainable: the one place (with runner.py) that knows Ray.

workers == 0 runs the training loop inside the Tune trial's own process; workers >= 1 launches a
Ray Train TorchTrainer (the Ray 2.60 pattern: a Tune function trainable that builds the trainer
and calls fit(), with TuneReportCallback forwarding the workers' reports to Tune). Either way the
trial itself writes its finished result, or its failure, to the result store, so the store must be
on storage every node can reach (see the README's cluster section). With the sweep's
``checkpoints: last`` (the default) the trial also keeps its final model state there, for
``harness predict``.
"""

from __future__ import annotations

import os
import time
import traceback
from pathlib import Path

import torch

from harness.training.context import WorkerContext

FAILURE_RETRIES = 2  # a killed Train worker is retried from the trial's last checkpoint


class TuneInProcessContext(WorkerContext):
    """workers: 0: the loop runs in the Tune trial's process and reports each epoch to Tune."""

    def report_epoch(self, metrics, checkpoint_dir=None):
        import ray.tune

        ray.tune.report(metrics)

    def report_final(self, metrics, checkpoint_dir):
        pass  # the trainable reports the final status once the store write succeeded


def _train_with_ray_train(config: dict, cell: dict) -> Path:
    """Run the loop on `workers` Ray Train workers; returns the final checkpoint folder."""
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from harness.training.loop import train_loop_per_worker

    scaling = cell["scaling"]
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=int(scaling["workers"]),
            use_gpu=bool(scaling["use_gpu"]),
            resources_per_worker=scaling.get("resources_per_worker") or None,
        ),
        run_config=ray.train.RunConfig(
            name=f"train-{cell['run_id']}",
            storage_path=cell["storage_path"],
            callbacks=[TuneReportCallback()],
            failure_config=ray.train.FailureConfig(max_failures=FAILURE_RETRIES),
            worker_runtime_env={"env_vars": cell.get("worker_env", {})},
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training finished without a final checkpoint (error: {result.error})")
    return Path(result.checkpoint.to_directory())


def sweep_cell(params: dict) -> None:
    """Tune function trainable for one cell of a sweep."""
    import ray.tune

    from harness.results.store import ResultStore
    from harness.sweep.outcome import record_failure, record_outcome, remove_stale_temporaries
    from harness.training.loop import TrainingOutcome, run_training

    cell = {**params["cell"], "started_at": time.time()}
    # The trial process inherits its node's environment, not the driver's: bring the driver's cache
    # locations (HARNESS_CACHE, HARNESS_FEATURE_CACHE) here too, as Train workers get them.
    os.environ.update(cell.get("worker_env", {}))
    store = ResultStore(cell["results"])
    if cell["run_id"] in store.completed_run_ids():
        ray.tune.report({"status": "skipped"})
        return
    remove_stale_temporaries(store, cell["run_id"])
    threads = max(1, int(cell.get("threads", 1)))
    torch.set_num_threads(threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    try:
        if int(cell["scaling"]["workers"]) == 0:
            outcome = run_training(cell["config"], TuneInProcessContext())
        else:
            outcome = TrainingOutcome.from_checkpoint(_train_with_ray_train(cell["config"], cell))
        if cell.get("checkpoints", "last") == "last":  # before the runs row, like every file of the run
            store.write_checkpoint(cell["run_id"], outcome.checkpoint_dir / "model.pt")
        record_outcome(store, cell, outcome)
    except Exception as error:  # noqa: BLE001: any failure becomes a recorded failed cell; the sweep goes on
        reason = f"{type(error).__name__}: {error}"
        record_failure(store, cell, reason, traceback.format_exc())
        ray.tune.report({"status": "failed", "reason": reason[:2000]})
        return
    ray.tune.report({"status": "complete", **{f"mean_{k}": v for k, v in outcome_means(outcome).items()}})


def outcome_means(outcome) -> dict:
    return {row["metric"]: row["value"] for row in outcome.metrics if row["class_name"] == "mean"}
