"""The result store: Parquet tables with explicit schemas, per-run prediction artefacts, provenance."""

from harness.results.schema import SCHEMA_VERSION, STATUS_COMPLETE, STATUS_FAILED, TrialResult
from harness.results.store import ResultSchemaError, ResultStore

__all__ = ["SCHEMA_VERSION", "STATUS_COMPLETE", "STATUS_FAILED", "ResultSchemaError", "ResultStore", "TrialResult"]
