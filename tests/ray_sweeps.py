"""Helpers for the tests that run sweeps on a real local Ray cluster (tests/test_sweep_*.py).

Nothing here mocks Ray: a sweep file is written for a generic-layout fixture, loaded through the
same code as `harness sweep`, and run by harness.sweep.runner.run_sweep on whatever cluster the
test started.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from harness.results.store import ResultStore

# The Ray settings the tests need in the driver and (through the raylet) in every Ray process.
RAY_TEST_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1",
}

def _apply_environ(values: dict[str, str | None]) -> None:
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@contextmanager
def patched_environ(values: dict[str, str | None]) -> Iterator[None]:
    """Set (or, for None, remove) environment variables for a block; module-scoped fixtures cannot use monkeypatch."""
    saved = {key: os.environ.get(key) for key in values}
    try:
        _apply_environ(values)
        yield
    finally:
        _apply_environ(saved)


def private_ray_environ() -> dict[str, str | None]:
    """RAY_TEST_ENV, and no RAY_ADDRESS: a test must never join a user's cluster."""
    return {**RAY_TEST_ENV, "RAY_ADDRESS": None}


# 64 px fixture images upsampled to 128 (8x8 tokens): a training epoch takes a fraction of a second.
TINY = {"image_size": 128, "eval_size": 64, "epochs": 2, "batch_size": 4, "neighbour_window": 3}


def write_sweep(folder: Path, *, data_root: Path, results: Path, name: str = "tiny", method_config=None,
                axes=None, workers: int = 0, cpu_per_worker: float = 1, max_concurrent=None, use_gpu=False) -> Path:
    """A sweep file over the tiny fixture; returns its path."""
    document = {
        "name": name,
        "base": {
            "method": "unilead",
            "preset": "cpu",
            "dataset": "generic",
            "data_root": str(data_root),
            "method_config": {**TINY, **(method_config or {})},
        },
        "axes": axes or {},
        "seeds": [0],
        "tune": {"max_concurrent_trials": max_concurrent},
        "scaling": {"workers": workers, "use_gpu": use_gpu, "resources_per_worker": {"CPU": cpu_per_worker}},
        "results": str(results),
    }
    path = Path(folder) / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def run_sweep_file(path: Path, address: str | None = None) -> int:
    """What `harness sweep FILE [--address A]` does, in this process (so on this process's Ray)."""
    from harness.commands.sweep import load_spec_from_args
    from harness.sweep.runner import run_sweep

    args = argparse.Namespace(
        file=str(path), dataset=None, data_root=None, preset=None, classes=None, results=None,
        method_sets=[], overrides=[], address=address, dataset_options=[],
    )
    return run_sweep(load_spec_from_args(args), args)


def runs_by_id(results: Path) -> dict[str, dict]:
    """run_id -> runs row (as a dict) of every run in the store; a duplicate id fails the test."""
    rows = ResultStore(results).runs().to_pylist()
    ids = [row["run_id"] for row in rows]
    assert len(ids) == len(set(ids)), f"duplicate runs rows in {results}: {ids}"
    return {row["run_id"]: row for row in rows}


def metric_values(results: Path, run_id: str) -> list[tuple]:
    rows = ResultStore(results).read("metrics", [run_id]).to_pylist()
    return sorted((r["class_name"], r["metric"], _comparable(r["value"])) for r in rows)


def _comparable(value: float) -> float | str:
    return "nan" if value != value else value  # NaN == NaN, for exact comparisons of metric lists


def sample_score_values(results: Path, run_id: str) -> list[tuple]:
    rows = ResultStore(results).read("sample_scores", [run_id]).to_pylist()
    return sorted((r["sample_id"], r["score"]) for r in rows)


def final_checkpoint(results: Path, run_id: str) -> Path:
    """The final checkpoint Ray Train persisted for a run: outcome, final weights, prediction parts."""
    (folder,) = [p for p in (Path(results) / "ray" / f"train-{run_id}").glob("checkpoint_*") if (p / "outcome.json").exists()]
    return folder


def single_worker_evaluation(checkpoint: Path) -> dict:
    """Metrics, scores and map bytes of a run's final weights, evaluated by one worker in this process."""
    import json

    import torch

    from harness.training.context import WorkerContext
    from harness.training.loop import evaluate, prepare_inputs
    from harness.training.trial_config import TrialConfig

    run = json.loads((checkpoint / "outcome.json").read_text())["run"]
    context = WorkerContext(device=torch.device("cpu"))
    quiet = lambda stage, info: None  # noqa: E731
    inputs = prepare_inputs(TrialConfig.from_dict(json.loads(run["config_json"])), context, quiet, use_feature_cache=True)
    inputs.method.load_state_dict(torch.load(checkpoint / "model.pt", map_location="cpu", weights_only=True)["model"])
    shard = evaluate(inputs, context.wrap_model(inputs.method), context, quiet)
    return {
        "metrics": sorted((r.class_name, r.metric, _comparable(r.value)) for r in shard.accumulator.compute().rows),
        "scores": sorted((row["sample_id"], row["score"]) for row in shard.sample_rows),
        "maps": {row["sample_id"]: row["anomaly_map"].tobytes() for row in shard.prediction_rows},
    }


def hidden_files(results: Path) -> list[Path]:
    """Half-written (hidden temporary) files anywhere in the store's tables, Ray's folder excluded."""
    return [
        path
        for table in Path(results).iterdir()
        if table.is_dir() and table.name != "ray"
        for path in table.rglob(".*")
    ]


def descendant_processes(title_prefix: str, root_pid: int | None = None) -> list[int]:
    """Pids of processes below root_pid (default: this one) whose title starts with title_prefix.

    Ray names its worker processes "ray::<ActorClass>..."; walking down from this process (which
    started the local cluster's raylets) never touches another user's Ray.
    """
    root_pid = root_pid or os.getpid()
    parents: dict[int, int] = {}
    titles: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            titles[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # the process ended while we looked
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])

    def below_root(pid: int) -> bool:
        while pid > 1:
            pid = parents.get(pid, 0)
            if pid == root_pid:
                return True
        return False

    return sorted(pid for pid, title in titles.items() if title.startswith(title_prefix) and below_root(pid))
