"""Sweeps: sweep files (spec), deterministic run ids, and (in runner.py) their execution on Ray."""

from harness.identity import configuration_key, run_id, trial_run_id
from harness.sweep.spec import SweepError, SweepSpec, Trial, expand, load_sweep, parse_sweep

__all__ = [
    "SweepError",
    "SweepSpec",
    "Trial",
    "configuration_key",
    "expand",
    "load_sweep",
    "parse_sweep",
    "run_id",
    "trial_run_id",
]
