"""The result store: Parquet tables with explicit schemas, per-run prediction artefacts, provenance."""

from harness.results.predictions import read_maps
from harness.results.schema import SCHEMA_VERSION, STATUS_COMPLETE, STATUS_FAILED, TrialResult
from harness.results.store import ResultSchemaError, ResultStore, StoreProblem

__all__ = [
    "SCHEMA_VERSION",
    "STATUS_COMPLETE",
    "STATUS_FAILED",
    "ResultSchemaError",
    "ResultStore",
    "StoreProblem",
    "TrialResult",
    "read_maps",
]
