"""Deterministic run ids and canonical JSON: the identity of one cell of a sweep (issue #5, item 4).

Below the sweep, the result store and the report, which all need it; it imports nothing of the harness.

A run id is the first 16 hex digits of the sha256 of a canonical JSON document (sorted keys, no
whitespace) holding the method, its version, the preset, the dataset fingerprint, the
hyperparameters and the seed. Anything that changes what a run computes changes its id; the sweep
name, the data root path and the place results go do not, so the same cell run from two sweeps,
or from a moved copy of the dataset, is found complete and skipped.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

# Keys of a trial config that are not hyperparameters: they are named in the id explicitly
# (method, preset, seed), summarised by the dataset fingerprint (dataset, data_root).
IDENTITY_KEYS = ("method", "preset", "dataset", "data_root", "seed")

PENDING = "pending"


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace; tuples become lists. Floats keep Python's repr."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=_jsonable)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "__fspath__"):
        return str(value)
    raise TypeError(f"cannot put {type(value).__name__} {value!r} into a run id (expected JSON data)")


def run_id(
    method: str,
    method_version: str,
    preset: str,
    dataset_fingerprint: str,
    hyperparameters: dict,
    seed: int,
) -> str:
    """sha256 of the canonical JSON of the six identity fields, first 16 hex characters."""
    document = {
        "method": method,
        "method_version": str(method_version),
        "preset": preset,
        "dataset_fingerprint": dataset_fingerprint,
        "hyperparameters": hyperparameters,
        "seed": int(seed),
    }
    return hashlib.sha256(canonical_json(document).encode("ascii")).hexdigest()[:16]


def hyperparameters_of(config: dict) -> dict:
    """The part of a trial config that is hyperparameters: everything but the identity keys."""
    return {key: value for key, value in config.items() if key not in IDENTITY_KEYS}


def configuration_key(config: dict) -> str:
    """Groups the seeds of one configuration: a hash of the config without seed and data root."""
    rest = {key: value for key, value in config.items() if key not in ("seed", "data_root")}
    return hashlib.sha256(canonical_json(rest).encode("ascii")).hexdigest()[:12]


def trial_run_id(config: dict, method_version: str, dataset_fingerprint: str) -> str:
    """The run id of a resolved trial config (what the runner and ``--dry-run --resolve-ids`` call)."""
    return run_id(
        method=config["method"],
        method_version=method_version,
        preset=config["preset"],
        dataset_fingerprint=dataset_fingerprint,
        hyperparameters=hyperparameters_of(config),
        seed=config["seed"],
    )
