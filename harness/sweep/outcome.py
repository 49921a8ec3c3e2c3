"""A finished (or failed) sweep cell into the result store: one writer for both paths."""

from __future__ import annotations

import json
from datetime import datetime, timezone

from harness.results.predictions import PredictionWriter, read_predictions
from harness.results.schema import TrialResult


def efficiency_columns(method: str, preset: str, method_config: dict) -> dict:
    """Parameter and true FLOP counts (masked-attention QK^T included) for the runs row."""
    from harness.profiling import profile_method

    profile = profile_method(method, preset, method_config)
    params, macs = profile["params"], profile["macs"]
    return {
        "params_trainable": params["trainable"],
        "params_total": params["with_backbone"],
        "params_reconstruction": params["reconstruction"],
        "macs_reconstruction_g": macs["reconstruction"]["true"] / 1e9,
        "macs_total_g": macs["with_backbone"]["true"] / 1e9,
        "flops_reconstruction_g": 2 * macs["reconstruction"]["true"] / 1e9,
        "flops_total_g": 2 * macs["with_backbone"]["true"] / 1e9,
    }


def record_outcome(store, cell: dict, outcome) -> str:
    """Predictions first, then the detail tables, then the runs row that marks the run complete."""
    run_id = cell["run_id"]
    config = cell["config"]
    with PredictionWriter(store.predictions_path(run_id), run_id=run_id) as writer:
        for prediction in read_predictions(outcome.checkpoint_dir / "predictions"):
            writer.add(prediction)
    run = {
        **outcome.run,
        **cell_columns(cell),
        "run_id": run_id,
        "status": "complete",
        "config_json": config,
        "method_config_json": json.loads(outcome.run["method_config_json"]),
        **efficiency_columns(config["method"], config.get("preset", "cpu"), config.get("method_config") or {}),
    }
    return store.write_run(TrialResult(run, outcome.metrics, outcome.sample_scores, outcome.routing))


def cell_columns(cell: dict) -> dict:
    """The runs columns the driver knows: sweep, label, axes, workers as configured, its command line, start."""
    columns = {
        "sweep": cell.get("sweep"),
        "label": cell.get("label"),
        "axes_json": cell.get("axes", {}),
        "workers": int(cell["scaling"]["workers"]) if "scaling" in cell else None,
        "command_line": cell.get("command_line"),
    }
    if "started_at" in cell:
        columns["started_at"] = datetime.fromtimestamp(cell["started_at"], timezone.utc)
    return columns


def remove_stale_temporaries(store, run_id: str) -> list:
    """Delete the hidden temporary files an earlier, killed attempt of this run left half-written.

    Only this cell's trial writes files named after its run id, so this is safe while other
    trials of the sweep are writing (unlike ResultStore.remove_orphans).
    """
    removed = []
    for folder in store.root.iterdir() if store.root.is_dir() else ():
        for path in folder.glob(f".{run_id}.*.tmp") if folder.is_dir() else ():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def record_failure(store, cell: dict, reason: str, details: str = "") -> str:
    config = cell["config"]
    tail = details.strip().splitlines()[-12:] if details else []
    return store.write_failure(
        cell["run_id"],
        config,
        reason if not tail else f"{reason}\n" + "\n".join(tail),
        **cell_columns(cell),
    )
