"""The one result writer and reader: a directory of Parquet tables (issue #5, items 4, 5 and 9).

Layout under the store root::

    runs/<run_id>.parquet            one row; status "complete" is the commit marker of a run
    metrics/<run_id>.parquet         detail tables, one file per run
    sample_scores/<run_id>.parquet
    routing/<run_id>.parquet
    trials/<sweep>.parquet           the expanded trial list of a sweep (for missing cells)
    predictions/<run_id>.parquet     per-sample scores and float16 maps (results.predictions)

Every file is written under a hidden temporary name in its own directory and renamed into place,
so a reader never sees half a file and concurrent trials never write the same file. A run's
detail files are written before its ``runs`` row: a crash in between leaves detail files without
a row, which ``read`` ignores and ``remove_orphans`` deletes. Rewriting a run id replaces its
files (the latest attempt wins), so a failed-then-completed run is one row, never two.

Plain readers work too: ``pd.read_parquet("results/metrics")``, ``pyarrow.dataset``, or duckdb's
``read_parquet('results/metrics/*.parquet')`` (hidden temporary files are skipped by all three).
"""

from __future__ import annotations

import json
import math
import os
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.compute as pa_compute
import pyarrow.dataset as pa_dataset
import pyarrow.parquet as pq

from harness.results.schema import (
    DETAIL_TABLES,
    RUNS,
    SCHEMA_VERSION,
    STATUS_COMPLETE,
    STATUS_FAILED,
    STATUSES,
    TABLES,
    TRIALS,
    TrialResult,
    to_json,
    with_version,
)

_JSON_COLUMNS = ("config_json", "method_config_json", "axes_json", "package_versions_json", "hardware_json")


class ResultSchemaError(ValueError):
    """A row that does not fit its table's schema; the message names the table, row and column."""


class ResultStore:
    """A result store rooted at a directory (created on first write)."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()

    def __repr__(self) -> str:
        return f"ResultStore({str(self.root)!r})"

    # ------------------------------------------------------------ writing

    def write_run(self, result: TrialResult, *, provenance: bool = True) -> str:
        """Write a finished run: detail tables first, then its runs row (the commit marker)."""
        run = self._complete_run_row(result.run, provenance)
        run_id = run["run_id"]
        # Every table is built (and so validated) before the first file is written.
        runs_table = rows_to_table([run], RUNS, "runs")
        details = {}
        for table in DETAIL_TABLES:
            rows = [self._detail_row(table, row, run) for row in getattr(result, table)]
            details[table] = rows_to_table(rows, DETAIL_TABLES[table], table) if rows else None
        for table, arrow_table in details.items():
            path = self._file(table, run_id)
            if arrow_table is not None:
                atomic_write_table(arrow_table, path)
            else:
                path.unlink(missing_ok=True)  # a stale file from an earlier attempt of this id
        atomic_write_table(runs_table, self._file("runs", run_id))
        return run_id

    def write_failure(self, run_id: str, config: dict | None, reason: str, **run_fields: Any) -> str:
        """Record a failed run: a runs row with status "failed"; detail files of this id are removed."""
        run = {"run_id": run_id, "status": STATUS_FAILED, "failure_reason": str(reason), **run_fields}
        if config is not None:
            run.setdefault("config_json", config)
            for key in ("method", "preset", "dataset", "seed"):
                if key in config:
                    run.setdefault(key, config[key])
        row = self._complete_run_row(run, provenance=True)
        for table in DETAIL_TABLES:
            self._file(table, run_id).unlink(missing_ok=True)
        self.predictions_path(run_id).unlink(missing_ok=True)
        atomic_write_table(rows_to_table([row], RUNS, "runs"), self._file("runs", run_id))
        return run_id

    def write_trials(self, sweep: str, trials: Iterable[Any]) -> Path:
        """Record a sweep's expanded trial list (objects with index, config, axes, label, run_id)."""
        from harness.sweep.run_id import configuration_key

        rows = [
            {
                "sweep": sweep,
                "trial_index": trial.index,
                "run_id": trial.run_id,
                "label": trial.label,
                "seed": trial.config.get("seed"),
                "configuration_key": configuration_key(trial.config),
                "config_json": to_json(trial.config),
                "axes_json": to_json(trial.axes),
            }
            for trial in trials
        ]
        path = self._file("trials", sweep)
        atomic_write_table(rows_to_table(rows, TRIALS, "trials"), path)
        return path

    def predictions_path(self, run_id: str) -> Path:
        """Where a run's prediction artefact lives (written with results.predictions.write_predictions)."""
        return self.root / "predictions" / f"{run_id}.parquet"

    # ------------------------------------------------------------ reading

    def read(self, table: str, run_ids: Iterable[str] | None = None) -> pa.Table:
        """All rows of a table. Detail rows count only for runs whose runs row says complete."""
        if table not in TABLES:
            raise KeyError(f"unknown result table {table!r}; the store has {', '.join(TABLES)}")
        schema = TABLES[table]
        wanted = set(run_ids) if run_ids is not None else None
        if table in DETAIL_TABLES:
            complete = self.completed_run_ids()
            wanted = complete if wanted is None else wanted & complete
        result = _read_directory(self.root / table, schema)
        if wanted is not None and table != "trials":
            result = result.filter(pa_compute.is_in(result["run_id"], pa.array(sorted(wanted), pa.string())))
        return result

    def runs(self) -> pa.Table:
        return self.read("runs")

    def completed_run_ids(self) -> set[str]:
        return self._run_ids_with_status(STATUS_COMPLETE)

    def failed_run_ids(self) -> set[str]:
        return self._run_ids_with_status(STATUS_FAILED)

    def sweeps(self) -> list[str]:
        """Sweep names seen in the runs table or in recorded trial lists."""
        names = set(self.read("runs").column("sweep").to_pylist()) | set(self.read("trials").column("sweep").to_pylist())
        return sorted(name for name in names if name)

    def is_empty(self) -> bool:
        return not any((self.root / "runs").glob("[!.]*.parquet"))

    def remove_orphans(self) -> list[Path]:
        """Delete temporary files and detail files with no runs row. Call only while no trial is writing."""
        known = {path.stem for path in (self.root / "runs").glob("[!.]*.parquet")}
        removed = []
        for table in (*TABLES, "predictions"):
            directory = self.root / table
            if not directory.is_dir():
                continue
            for path in directory.iterdir():
                hidden_temporary = path.name.startswith(".") and path.name.endswith(".tmp")
                orphan = table in (*DETAIL_TABLES, "predictions") and path.suffix == ".parquet" and path.stem not in known
                if hidden_temporary or orphan:
                    path.unlink(missing_ok=True)
                    removed.append(path)
        return removed

    # ------------------------------------------------------------ internals

    def _file(self, table: str, name: str) -> Path:
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"{name!r} cannot name a file in the {table} table (expected a run id or sweep name)")
        return self.root / table / f"{name}.parquet"

    def _run_ids_with_status(self, status: str) -> set[str]:
        runs = _read_directory(self.root / "runs", RUNS, columns=["run_id", "status"])
        return {rid for rid, st in zip(runs["run_id"].to_pylist(), runs["status"].to_pylist()) if st == status}

    def _complete_run_row(self, run: dict, provenance: bool) -> dict:
        import harness
        from harness.sweep.run_id import configuration_key

        row = dict(run)
        if not row.get("run_id"):
            raise ResultSchemaError("runs row: 'run_id' is missing (expected the trial's run id)")
        row.setdefault("status", STATUS_COMPLETE)
        if row["status"] not in STATUSES:
            raise ResultSchemaError(f"runs row {row['run_id']}: status {row['status']!r}; expected one of {STATUSES}")
        for column in _JSON_COLUMNS:
            if column in row and row[column] is not None and not isinstance(row[column], str):
                row[column] = to_json(row[column])
        if row.get("config_json") and not row.get("configuration_key"):
            row["configuration_key"] = configuration_key(json.loads(row["config_json"]))
        if provenance:
            from harness.results import provenance as prov

            if "git_revision" not in row:
                row["git_revision"] = prov.git_revision()
            if "package_versions_json" not in row:
                row["package_versions_json"] = to_json(prov.package_versions())
            if "hardware_json" not in row:
                row["hardware_json"] = to_json(prov.hardware())
        row.setdefault("finished_at", datetime.now(timezone.utc))
        row.setdefault("harness_version", harness.__version__)
        row["schema_version"] = SCHEMA_VERSION
        return row

    @staticmethod
    def _detail_row(table: str, row: dict, run: dict) -> dict:
        row = dict(row)
        if row.setdefault("run_id", run["run_id"]) != run["run_id"]:
            raise ResultSchemaError(
                f"{table} row names run {row['run_id']!r} inside the result of run {run['run_id']!r}"
            )
        if table == "routing" and "class" in row and "class_name" not in row:
            row["class_name"] = row.pop("class")  # methods.summarise_routing names it "class"
        if table == "routing" and row.get("expert") is not None:
            row["expert"] = str(row["expert"])
        if table == "metrics":
            row.setdefault("dataset", run.get("dataset"))
            row.setdefault("metric_version", run.get("metric_version"))
        return row


def rows_to_table(rows: list[dict], schema: pa.Schema, table: str) -> pa.Table:
    """Rows (dicts) to an Arrow table of exactly ``schema``; unknown or missing required columns are errors."""
    names = set(schema.names)
    for index, row in enumerate(rows):
        unknown = sorted(set(row) - names)
        if unknown:
            raise ResultSchemaError(
                f"{table} row {index}: unknown column {unknown[0]!r}; expected some of {', '.join(schema.names)}"
            )
        for field in schema:
            if not field.nullable and row.get(field.name) is None:
                raise ResultSchemaError(f"{table} row {index}: column {field.name!r} is required")
    columns = []
    for field in schema:
        values = [_coerce(row.get(field.name), field.type) for row in rows]
        try:
            columns.append(pa.array(values, type=field.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError) as exc:
            bad = next((v for v in values if v is not None), None)
            raise ResultSchemaError(
                f"{table}: column {field.name!r} expects {field.type}, got {bad!r} ({exc})"
            ) from None
    return pa.Table.from_arrays(columns, schema=with_version(schema))


def _coerce(value: Any, arrow_type: pa.DataType) -> Any:
    if value is None:
        return None
    if pa.types.is_timestamp(arrow_type):
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        elif isinstance(value, (int, float)):
            value = datetime.fromtimestamp(value, tz=timezone.utc)
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if hasattr(value, "item") and not isinstance(value, (bytes, str)):  # numpy scalars
        value = value.item()
    if pa.types.is_string(arrow_type) and isinstance(value, (int, float, Path)) and not isinstance(value, bool):
        return str(value)  # e.g. a method version given as an int
    if pa.types.is_floating(arrow_type) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if pa.types.is_integer(arrow_type) and isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return value


def atomic_write_table(table: pa.Table, path: Path) -> None:
    """Write ``table`` to ``path`` via a hidden temporary file in the same directory and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(temporary, "wb") as handle:
            pq.write_table(table, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _read_directory(directory: Path, schema: pa.Schema, columns: list[str] | None = None) -> pa.Table:
    if not directory.is_dir() or not any(directory.glob("[!.]*.parquet")):
        empty = schema.empty_table()
        return empty.select(columns) if columns else empty
    # Files written under an older schema lack newer columns; the dataset fills them with nulls.
    dataset = pa_dataset.dataset(str(directory), schema=schema, format="parquet", ignore_prefixes=[".", "_"])
    return dataset.to_table(columns=columns)
